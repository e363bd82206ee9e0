"""What tests read off a running sidecar and its tap: a metric's total, the keys fetched
upstream, and waiting for a condition."""

from __future__ import annotations

import re
import time


def metric(sc, name: str, **labels) -> float:
    """The sum of a metric family's samples whose labels include ``labels``."""
    total = 0.0
    for line in sc.metrics_text().splitlines():
        m = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def fetched_keys(tap, bucket: str, prefix: str) -> set[str]:
    """Keys under ``prefix`` whose bytes the tap saw the sidecar GET from the upstream."""
    return {s.path.split("/", 2)[2] for s in tap.object_gets(f"/{bucket}/{prefix}")}


def wait_until(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False
