"""``sidecar admin``: the admin API of a running sidecar from the command line.

    sidecar admin stats
    sidecar admin purge BUCKET [PREFIX]
    sidecar admin pin BUCKET [PREFIX]      /  unpin BUCKET [PREFIX]  /  pins
    sidecar admin warm BUCKET [PREFIX] [--key KEY ...] [--no-wait]
    sidecar admin jobs [ID]                /  hot [-n N]  /  ready  /  reload  /  config
    sidecar admin verify [BUCKET [KEY]] [--no-repair] [--json]

``--admin HOST:PORT`` names the admin endpoint; by default the ``admin_listen`` setting (from
``SIDECAR_ADMIN_LISTEN`` or ``--config``), as the daemon beside it reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from . import config


class AdminError(Exception):
    pass


class AdminClient:
    def __init__(self, address: tuple[str, int], timeout: float = 30.0) -> None:
        host, port = address
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        self.base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             ok: tuple[int, ...] = (200, 202)) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                status, payload = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, payload = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise AdminError(f"cannot reach the admin endpoint at {self.base}: {reason}") from None
        try:
            out = json.loads(payload) if payload else {}
        except ValueError:
            out = {"error": payload.decode(errors="replace")}
        if status not in ok:
            raise AdminError(f"{method} {path}: HTTP {status}: {out.get('error', out)}")
        return out


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _target(args: argparse.Namespace) -> dict[str, str]:
    return {"bucket": args.bucket, "prefix": args.prefix or ""}


def _warm(client: AdminClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"bucket": args.bucket}
    if args.key:
        if args.prefix:
            raise AdminError("give a prefix or --key, not both")
        body["keys"] = args.key
    else:
        body["prefix"] = args.prefix or ""
    job = client.call("POST", "/warm", body)
    if args.no_wait:
        _print(job)
        return 0
    from tqdm import tqdm  # noqa: PLC0415

    bar = tqdm(total=max(job["bytes_total"], 0), unit="B", unit_scale=True, unit_divisor=1024,
               desc=f"warm {job['id']}", file=sys.stderr, dynamic_ncols=True)
    try:
        while True:
            if job["bytes_total"] != bar.total:
                bar.total = job["bytes_total"]
                bar.refresh()
            bar.update(job["bytes_done"] - bar.n)
            bar.set_postfix_str(f"{job['objects_done']}/{job['objects_total']} objects"
                                + (f", {job['objects_failed']} failed" if job["objects_failed"] else "")
                                + ("" if job["state"] != "listing" else ", listing"), refresh=False)
            if job["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(args.interval)
            job = client.call("GET", f"/warm/{job['id']}")
    except KeyboardInterrupt:
        bar.close()
        job = client.call("DELETE", f"/warm/{job['id']}")
        print(f"warm job {job['id']} cancelled", file=sys.stderr)
        return 130
    bar.close()
    print(f"warm {job['state']}: {job['objects_done']} objects cached ({job['bytes_fetched']} bytes fetched, "
          f"{job['bytes_already_cached']} already cached), {job['objects_failed']} failed, "
          f"{job['objects_skipped']} skipped by rules, in {job['elapsed_s']:.1f}s")
    for e in job["errors"]:
        print(f"  {e['key']}: {e['error']}", file=sys.stderr)
    if job["error"]:
        print(f"  {job['error']}", file=sys.stderr)
    return 0 if job["state"] == "done" and not job["objects_failed"] else 1


def _hot(client: AdminClient, args: argparse.Namespace) -> int:
    objects = client.call("GET", f"/hot?n={args.n}")["objects"]
    if args.json:
        _print(objects)
        return 0
    print(f"{'hotness':>10}  {'size':>12}  {'cached':>12}  object")
    for o in objects:
        size = "" if o["size"] is None else str(o["size"])
        cached = "" if o["cached_bytes"] is None else str(o["cached_bytes"])
        print(f"{o['hotness']:>10.3f}  {size:>12}  {cached:>12}  s3://{o['bucket']}/{o['key']}")
    return 0


def _run(args: argparse.Namespace) -> int:
    address = args.admin or config.load({}).admin_listen
    if isinstance(address, str):
        try:
            address = config.parse_hostport(address)
        except ValueError:
            raise config.ConfigError("admin_listen", args.admin, "host:port") from None
    client = AdminClient(address)
    a = args.action
    try:
        if a == "stats":
            _print(client.call("GET", "/stats"))
        elif a == "config":
            _print(client.call("GET", "/config"))
        elif a == "ready":
            out = client.call("GET", "/readyz", ok=(200, 503))
            _print(out)
            return 0 if out.get("ready") else 1
        elif a == "reload":
            out = client.call("POST", "/reload", {}, ok=(200, 422))
            _print(out)
            return 0 if out.get("ok") else 1
        elif a == "purge":
            _print(client.call("POST", "/purge", _target(args)))
        elif a in ("pin", "unpin"):
            _print(client.call("POST", f"/{a}", _target(args)))
        elif a == "pins":
            _print(client.call("GET", "/pins"))
        elif a == "warm":
            return _warm(client, args)
        elif a == "jobs":
            _print(client.call("GET", f"/warm/{urllib.parse.quote(args.id)}" if args.id else "/warm"))
        elif a == "hot":
            return _hot(client, args)
        elif a == "verify":
            from .verify_cli import print_report  # noqa: PLC0415

            body = {"repair": not args.no_repair, **({"bucket": args.bucket} if args.bucket else {}),
                    **({"key": args.key} if args.key else {})}
            client.timeout = 3600
            out = client.call("POST", "/verify", body)
            print_report(out, args.json)
            return 0 if out["ok"] else 1
    except AdminError as e:
        print(f"sidecar admin: {e}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("admin", help="talk to a running sidecar's admin endpoint (stats, purge, pin, warm, hot)")
    p.add_argument("--admin", metavar="HOST:PORT", default=None,
                   help="admin endpoint address (default: the admin_listen setting)")
    asub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    asub.add_parser("stats", help="cache, read, upstream, shared tier and request figures (JSON)")
    asub.add_parser("config", help="the running configuration, secrets redacted")
    asub.add_parser("ready", help="readiness and each of its checks (exit 1 when not ready)")
    asub.add_parser("reload", help="reload the configuration file now (as SIGHUP does)")
    for name, text in (("purge", "drop cached objects (metadata and chunks) under a bucket and prefix"),
                       ("pin", "keep cached chunks under a bucket and prefix from eviction"),
                       ("unpin", "undo a pin")):
        q = asub.add_parser(name, help=text)
        q.add_argument("bucket")
        q.add_argument("prefix", nargs="?", default="")
    asub.add_parser("pins", help="runtime pins and pins from cache rules")
    w = asub.add_parser("warm", help="fetch objects into the cache now, with a progress bar")
    w.add_argument("bucket")
    w.add_argument("prefix", nargs="?", default=None, help="warm every object under this prefix")
    w.add_argument("--key", action="append", help="warm this object (repeatable) instead of a prefix")
    w.add_argument("--no-wait", action="store_true", help="print the job and return at once")
    w.add_argument("--interval", type=float, default=0.5, help="seconds between progress polls")
    j = asub.add_parser("jobs", help="warm jobs, or one job by id")
    j.add_argument("id", nargs="?")
    h = asub.add_parser("hot", help="objects clients read most (decayed hotness)")
    h.add_argument("-n", type=int, default=20)
    h.add_argument("--json", action="store_true")
    v = asub.add_parser("verify", help="check cached chunks against their CRC32Cs; corrupt ones are refetched")
    v.add_argument("bucket", nargs="?", default=None)
    v.add_argument("key", nargs="?", default=None)
    v.add_argument("--no-repair", action="store_true", help="drop corrupt chunks but do not refetch them")
    v.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)
