"""The access log: every read in a bounded in-memory ring, and in size-capped rotating files (training data)."""

from __future__ import annotations

import collections
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from ..cache.store import mkdir_private

_FILE = re.compile(r"^access-(\d{8})\.jsonl$")


class Access(NamedTuple):
    """One object read. A named tuple, not a frozen dataclass: one is made per read, on the
    request path, and a tuple is several times cheaper to build."""

    t: float        # Unix time of the read (simulations pass simulated time)
    bucket: str
    key: str
    start: int      # first byte read
    end: int        # last byte read, inclusive
    size: int       # object size in bytes
    outcome: str    # "hit", "miss", "partial" or "prefetched"

    def to_line(self) -> str:
        # A JSON array, not an object: no field names repeated on every line. ASCII escapes
        # keep any key (even one with lone surrogates from a percent-decoded path) exact.
        return json.dumps([round(self.t, 6), self.bucket, self.key, self.start, self.end, self.size,
                           self.outcome], separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str) -> Access:
        t, bucket, key, start, end, size, outcome = json.loads(line)
        return cls(float(t), str(bucket), str(key), int(start), int(end), int(size), str(outcome))


class AccessLog:
    """Bounded in-memory ring of recent reads + size-capped rotating files (training data).

    ``record`` runs on the request path: two deque appends, no I/O. Records wait in a buffer
    (bounded like the ring: if ``flush`` falls behind, the oldest unwritten records are
    dropped and counted in ``dropped``) until ``flush`` appends them to ``access-NNNNNNNN.jsonl``
    in ``directory``. A file that reaches ``file_max_bytes`` is closed and a new one started;
    only the newest ``files_kept`` files are kept, so the log never holds more than about
    ``files_kept * file_max_bytes`` bytes. ``directory=None`` keeps the ring only.
    """

    def __init__(self, directory: Path | None, *, ring_size: int = 65536,
                 file_max_bytes: int = 16 * 1024**2, files_kept: int = 8) -> None:
        if ring_size < 1 or file_max_bytes < 1 or files_kept < 1:
            raise ValueError("the access log needs ring_size, file_max_bytes and files_kept >= 1")
        self.directory = Path(directory) if directory is not None else None
        self.file_max_bytes = file_max_bytes
        self.files_kept = files_kept
        self.dropped = 0
        self._ring: collections.deque[Access] = collections.deque(maxlen=ring_size)
        self._pending: collections.deque[Access] = collections.deque()
        self._pending_max = ring_size
        # flush() may run in a worker thread while record() runs on the event loop; the second
        # lock keeps two flushes (the loop's and close()'s) from interleaving their writes.
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._file = None
        self._file_bytes = 0
        self._seq = 1
        if self.directory is not None:
            mkdir_private(self.directory)  # reads name keys: as private as the chunks
            existing = log_files(self.directory)
            if existing:
                self._seq = int(_FILE.match(existing[-1].name).group(1))
                self._file_bytes = existing[-1].stat().st_size

    def record(self, access: Access) -> None:
        self._ring.append(access)
        if self.directory is None:
            return
        with self._lock:
            if len(self._pending) >= self._pending_max:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(access)

    def record_many(self, accesses: list[Access]) -> None:
        """``record`` for several, under one lock."""
        self._ring.extend(accesses)
        if self.directory is None:
            return
        with self._lock:
            pending = self._pending
            pending.extend(accesses)
            while len(pending) > self._pending_max:
                pending.popleft()
                self.dropped += 1

    def recent(self, since: float | None = None) -> list[Access]:
        """Reads still in the ring, oldest first; with ``since``, only those at or after it."""
        ring = list(self._ring)
        if since is None:
            return ring
        # The ring is in arrival order, which is time order up to concurrent requests:
        # walk back from the newest and stop at the first read older than ``since``.
        i = len(ring)
        while i > 0 and ring[i - 1].t >= since:
            i -= 1
        return ring[i:]

    def __len__(self) -> int:
        return len(self._ring)

    def flush(self) -> None:
        """Append the buffered records to the files (called off the request path)."""
        if self.directory is None:
            return
        with self._write_lock:
            with self._lock:
                batch, self._pending = self._pending, collections.deque()
            if not batch:
                return
            for access in batch:
                data = (access.to_line() + "\n").encode("utf-8")
                if self._file is None:
                    self._rotate()
                if self._file_bytes > 0 and self._file_bytes + len(data) > self.file_max_bytes:
                    self._rotate()
                self._file.write(data)
                self._file_bytes += len(data)
            # Closed between flushes: the daemon holds no file open for writing on the cache's
            # file system while idle (a remount read-only, a snapshot or an unmount can proceed).
            self._file.close()
            self._file = None

    def close(self) -> None:
        self.flush()
        with self._write_lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _rotate(self) -> None:
        if self._file is None:
            # First write since start: continue the newest file (a restart) if it has room.
            if self._file_bytes >= self.file_max_bytes:
                self._seq += 1
        else:
            self._file.close()
            self._file = None
            self._seq += 1
        path = self.directory / f"access-{self._seq:08d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # exactly, whatever the umask
        self._file = os.fdopen(fd, "ab")
        self._file_bytes = path.stat().st_size
        for old in log_files(self.directory)[: -self.files_kept]:
            try:
                old.unlink()
            except FileNotFoundError:
                pass


def log_files(directory: Path) -> list[Path]:
    """The log's files in ``directory``, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [Path(directory) / n for n in sorted(n for n in names if _FILE.match(n))]


def read_log(directory: Path) -> Iterator[Access]:
    """Every record of every file in ``directory``, oldest file first. A torn last line (a
    crash mid-write) or a line that does not parse is skipped."""
    for path in log_files(Path(directory)):
        try:
            fh = open(path, encoding="ascii", errors="replace")
        except FileNotFoundError:
            continue  # rotated away meanwhile
        with fh:
            for line in fh:
                if not line.endswith("\n"):
                    continue
                try:
                    yield Access.from_line(line)
                except (ValueError, TypeError):
                    continue
