"""The lean path's own Python cost per repeated 4 KiB hit, without sockets or a client.

    PYTHONPATH=. .venv/bin/python bench/lean_path_micro.py [--requests 30000] [--repeat 4]

Starts a sidecar in this process (a local-directory upstream holding one 4 KiB object, default
settings, JSON access log to /dev/null), reads the object over HTTP until it is a RAM-tier hit,
then feeds the lean path's protocol the same request head again and again through a transport
whose ``write`` only counts bytes, 64 per turn of the event loop (as from 64 busy connections;
what the daemon records after the answers, once per turn, is timed too). Prints the best of
``--repeat`` runs in µs per request: the interpreter's share of a hit (plan lookup, bytes,
records, read hook), with none of the kernel's
(socket reads and writes, waking the client). On the wire a hit costs more than this: compare
with bench/get_bench.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sidecar import config  # noqa: E402
from sidecar.server import Sidecar  # noqa: E402
from sidecar.telemetry import setup_logging  # noqa: E402

HEAD = b"GET /b/k HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
BATCH = 64  # requests answered per turn of the event loop (64 busy connections)


class CountingTransport:
    """Just enough of a transport for the lean path: writes are counted, not sent."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str):
        return ("127.0.0.1", 1) if name == "peername" else None

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


async def run(requests: int, repeat: int) -> list[float]:
    work = Path(tempfile.mkdtemp(prefix="sidecar-micro-"))
    (work / "up" / "b").mkdir(parents=True)
    (work / "up" / "b" / "k").write_bytes(os.urandom(4096))
    settings = config.load({"upstream": f"file://{work / 'up'}", "cache_dir": str(work / "cache"),
                            "listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"})
    loop = asyncio.get_running_loop()
    async with Sidecar(settings) as sc:
        host, port = sc.s3_address
        for _ in range(3):  # a miss, then hits: the chunk ends up in the RAM tier
            await loop.run_in_executor(None, lambda: urllib.request.urlopen(f"http://{host}:{port}/b/k").read())
            await asyncio.sleep(0.2)
        assert sc.fast_path is not None, "the lean path is off"
        proto = sc.fast_path()
        transport = CountingTransport()
        proto.connection_made(transport)
        for _ in range(1000):
            proto.data_received(HEAD)
        if proto.task is not None:
            raise SystemExit("the hit was not answered at once (not in the RAM tier?)")
        results = []
        turns = max(1, requests // BATCH)
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(turns):
                for _ in range(BATCH):
                    proto.data_received(HEAD)
                await asyncio.sleep(0)  # a turn of the loop: what is done after the answers runs too
            results.append((time.perf_counter() - t0) / (turns * BATCH) * 1e6)
        if transport.written < requests * 4096:
            raise SystemExit("answers were not sent")
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=30000)
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args()
    with open(os.devnull, "w") as devnull:
        setup_logging("info", "json", stream=devnull)  # the access log is on, as by default
        results = uvloop.run(run(args.requests, args.repeat))
    print(f"lean path, repeated 4 KiB RAM-tier hit: best {min(results):.2f} us per request "
          f"(runs: {', '.join(f'{r:.2f}' for r in results)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
