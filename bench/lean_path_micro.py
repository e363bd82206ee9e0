"""The lean path's own cost per hit, without a client: a repeated 4 KiB hit from memory, and
unique ranged hits from chunk files.

    PYTHONPATH=. .venv/bin/python bench/lean_path_micro.py [--requests 30000] [--repeat 4]
        [--range 65536]

Starts a sidecar in this process (a local-directory upstream holding one 4 KiB object, default
settings, JSON access log to /dev/null), reads the object over HTTP until it is a RAM-tier hit,
then feeds the lean path's protocol the same request head again and again through a transport
whose ``write`` only counts bytes, 64 per turn of the event loop (as from 64 busy connections;
what the daemon records after the answers, once per turn, is timed too). Prints the best of
``--repeat`` runs in µs per request: the interpreter's share of a hit (plan lookup, bytes,
records, read hook), with none of the kernel's
(socket reads and writes, waking the client). On the wire a hit costs more than this: compare
with bench/get_bench.py.

With ``--range N``: a 64 MiB object, every chunk read once (its pieces checked), then random
unaligned ranges of N bytes within one chunk, each head new (as a columnar reader sends them),
16 per turn of the loop, answered onto a real socket (a socket pair drained by another
thread) with sendfile. Prints the answering thread's CPU time per request: the Python and
the sender's side of the kernel's work, not the client's. With ``--no-send`` as well, the
head's write and the sendfile are counted, not done: the interpreter's share alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import threading
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sidecar import config  # noqa: E402
from sidecar.s3 import fastpath  # noqa: E402
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
    with tempfile.TemporaryDirectory(prefix="sidecar-micro-") as d:
        return await _run(Path(d), requests, repeat)


async def _run(work: Path, requests: int, repeat: int) -> list[float]:
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


class SocketTransport(CountingTransport):
    """A transport over one end of a socket pair (blocking: a send waits for the drain);
    ``send`` False: writes are counted, not sent."""

    def __init__(self, sock: socket.socket, send: bool = True) -> None:
        super().__init__()
        self.sock = sock
        self.send = send

    def write(self, data) -> None:
        if self.send:
            self.sock.sendall(data)
        self.written += len(data)

    def get_extra_info(self, name: str):
        return {"peername": ("127.0.0.1", 1), "socket": self.sock}.get(name)


def _drain(sock: socket.socket) -> None:
    while sock.recv(1 << 20):
        pass


async def run_ranges(length: int, requests: int, repeat: int, send: bool = True) -> list[float]:
    # (the work directory holds a 64 MiB upstream object and its cached chunks: removed after)
    with tempfile.TemporaryDirectory(prefix="sidecar-micro-") as d:
        return await _run_ranges(Path(d), length, requests, repeat, send)


async def _run_ranges(work: Path, length: int, requests: int, repeat: int, send: bool) -> list[float]:
    size = 64 * 1024 * 1024
    (work / "up" / "b").mkdir(parents=True)
    (work / "up" / "b" / "big").write_bytes(os.urandom(size))
    settings = config.load({"upstream": f"file://{work / 'up'}", "cache_dir": str(work / "cache"),
                            "listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "cache_size": "1GiB"})
    loop = asyncio.get_running_loop()
    rnd = random.Random(1)
    async with Sidecar(settings) as sc:
        host, port = sc.s3_address
        for _ in range(2):  # a miss, then a hit that checks every piece
            await loop.run_in_executor(None, lambda: urllib.request.urlopen(f"http://{host}:{port}/b/big").read())
        cs = sc.reader.chunk_size
        heads = []
        while len(heads) < requests * (repeat + 1):
            start = rnd.randrange(size - length)
            if start // cs == (start + length - 1) // cs:  # within one chunk: answered at once
                heads.append(f"GET /b/big HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             f"Range: bytes={start}-{start + length - 1}\r\n\r\n".encode())
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        threading.Thread(target=_drain, args=(theirs,), daemon=True).start()
        proto = sc.fast_path()
        proto.connection_made(SocketTransport(ours, send))
        if not send:  # the lean path's sendfile, counted as done (the warm-up above sent for real)
            fastpath.sendfile_until_full = lambda sock_fd, fd, offset, count: count
        results = []
        for r in range(repeat + 1):  # the first round warms up
            batch = heads[r * requests:(r + 1) * requests]
            t0 = time.thread_time()
            for i in range(0, len(batch), 16):
                for head in batch[i:i + 16]:
                    proto.data_received(head)
                    if proto.task is not None:
                        raise SystemExit("a ranged hit was not answered at once")
                await asyncio.sleep(0)
            if r:
                results.append((time.thread_time() - t0) / len(batch) * 1e6)
        ours.close()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=30000)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--range", type=int, default=0, metavar="N",
                    help="unique ranged hits of N bytes from chunk files instead")
    ap.add_argument("--no-send", action="store_true",
                    help="with --range: count the head's write and the sendfile instead of doing them")
    args = ap.parse_args()
    with open(os.devnull, "w") as devnull:
        setup_logging("info", "json", stream=devnull)  # the access log is on, as by default
        if args.range:
            results = uvloop.run(run_ranges(args.range, min(args.requests, 5000), args.repeat, not args.no_send))
            what = (f"unique {args.range}-byte ranged hits from chunk files, answering thread's CPU"
                    + (", sends counted, not done" if args.no_send else ""))
        else:
            results = uvloop.run(run(args.requests, args.repeat))
            what = "repeated 4 KiB RAM-tier hit"
    print(f"lean path, {what}: best {min(results):.2f} us per request "
          f"(runs: {', '.join(f'{r:.2f}' for r in results)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
