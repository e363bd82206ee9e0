"""Container HEALTHCHECK: exit 0 if the sidecar's admin endpoint answers /healthz with 200, else 1.

Reads the admin address from SIDECAR_ADMIN_LISTEN (default 127.0.0.1:9401) like the daemon
does; a wildcard listen address is probed on loopback. Standard library only: the image has
no curl.
"""

import os
import sys
import urllib.request

DEFAULT = "127.0.0.1:9401"


def admin_url(listen: str) -> str:
    host, _, port = listen.strip().rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def main() -> int:
    url = admin_url(os.environ.get("SIDECAR_ADMIN_LISTEN") or DEFAULT)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy
    try:
        with opener.open(url, timeout=float(os.environ.get("HEALTHCHECK_TIMEOUT", "2"))) as r:
            return 0 if r.status == 200 else 1
    except Exception as e:  # any failure is "unhealthy"
        print(f"healthcheck {url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
