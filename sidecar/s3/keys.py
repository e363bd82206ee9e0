"""Client access keys for signature verification: a directory with one file per access key.

Each regular file's name is an access key id and its content (surrounding whitespace removed)
the secret key: the shape of a Kubernetes Secret mounted as a volume. Names starting with a dot
are skipped (the ``..data`` links and timestamped directories Kubernetes keeps there). The
directory is re-read when its entries change, at most every ``check_interval`` seconds, so a
rotated Secret takes effect without a restart.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from ..config import ConfigError
from ..telemetry import get_logger

log = get_logger("sidecar.auth")

ACCEPTED = "a readable directory holding one file per access key (file name: access key id, content: secret)"


class KeyStore:
    def __init__(self, directory: Path, *, check_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory)
        self.check_interval = check_interval
        self.clock = clock
        self._keys: dict[str, str] = {}
        self._stamp: tuple | None = None
        self._checked = clock()
        stamp = self._fingerprint()
        if stamp is None:
            raise ConfigError("auth_keys_dir", str(directory), ACCEPTED)
        self._load(stamp)

    def __len__(self) -> int:
        return len(self._keys)

    def secret(self, access_key_id: str) -> str | None:
        """The secret of ``access_key_id``, None if the id is unknown."""
        now = self.clock()
        if now - self._checked >= self.check_interval:
            self._checked = now
            self.refresh()
        return self._keys.get(access_key_id)

    def refresh(self) -> bool:
        """Re-read the directory if its entries changed; True if it did. A directory that can no
        longer be read keeps the keys last read (a Secret being swapped is briefly incomplete)."""
        stamp = self._fingerprint()
        if stamp is None or stamp == self._stamp:
            return False
        self._load(stamp)
        return True

    def _fingerprint(self) -> tuple | None:
        try:
            entries = []
            with os.scandir(self.directory) as it:
                for e in it:
                    if e.name.startswith("."):
                        continue
                    try:
                        st = os.stat(e.path)  # follows the links a Secret volume is made of
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        entries.append((e.name, st.st_ino, st.st_size, st.st_mtime_ns))
            return tuple(sorted(entries))
        except OSError:
            return None

    def _load(self, stamp: tuple) -> None:
        keys: dict[str, str] = {}
        for name, *_ in stamp:
            try:
                value = (self.directory / name).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                log.warning("auth_key_unreadable", access_key_id=name)
                continue
            if value:
                keys[name] = value
        self._keys = keys
        self._stamp = stamp
        # Key ids only: secrets never reach the log.
        log.info("auth_keys_loaded", directory=str(self.directory), keys=len(keys))
        if not keys:
            log.warning("auth_no_keys", directory=str(self.directory),
                        detail="every signed request is refused until keys are added")
