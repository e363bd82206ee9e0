"""A server TLS context whose certificate and key are reloaded when their files change.

Kubernetes updates a mounted Secret by swapping a symlink, and cert-manager renews
certificates well before they expire: the webhook must pick up a new pair without a
restart. A new pair is first loaded into a scratch context, so a half-written or
mismatched pair is rejected (the old one keeps serving) instead of breaking the live
context; the next poll tries again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

log = logging.getLogger("sidecar.inject")


def _new_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class ReloadingCertificate:
    """``context`` is handed to the server once; ``reload_if_changed`` refreshes it in place."""

    def __init__(self, cert_path: str | Path, key_path: str | Path) -> None:
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self.context = _new_context()
        self.reloads = 0
        self._stamp: tuple[tuple[int, int, int], ...] | None = None
        if not self.reload_if_changed():
            raise ssl.SSLError(f"cannot load TLS certificate {self.cert_path} and key {self.key_path}")

    def _stat(self) -> tuple[tuple[int, int, int], ...] | None:
        try:
            return tuple((s.st_mtime_ns, s.st_size, s.st_ino)
                         for s in (os.stat(self.cert_path), os.stat(self.key_path)))
        except OSError:
            return None

    def reload_if_changed(self) -> bool:
        """Load the pair if the files changed since the last good load; True if now current."""
        stamp = self._stat()
        if stamp is None:
            return False
        if stamp == self._stamp:
            return True
        try:
            _new_context().load_cert_chain(self.cert_path, self.key_path)  # reject a bad pair first
            self.context.load_cert_chain(self.cert_path, self.key_path)
        except (OSError, ssl.SSLError) as e:
            log.warning("TLS certificate %s not (re)loaded: %s", self.cert_path, e)
            return False
        # Files that changed while we read them are read again on the next poll.
        self._stamp = stamp if self._stat() == stamp else None
        self.reloads += 1
        log.info("TLS certificate %s loaded", self.cert_path)
        return True

    async def watch(self, interval: float) -> None:
        """Poll the files every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
