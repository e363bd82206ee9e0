"""S3's flexible checksums: the algorithms, their header names and their base64 big-endian values."""

from __future__ import annotations

import base64
import hashlib
import zlib

import crc32c as _crc32c

try:  # CRC64/NVME has no fast implementation in the standard library; awscrt has one when present
    from awscrt import checksums as _crt
except ImportError:  # pragma: no cover - depends on the environment
    _crt = None

ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")
HEADER_PREFIX = "x-amz-checksum-"


class _Crc:
    def __init__(self, fn, width: int) -> None:
        self._fn = fn
        self._width = width
        self._value = 0

    def update(self, data: bytes) -> None:
        self._value = self._fn(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._width, "big")


class _Hash:
    def __init__(self, name: str) -> None:
        self._h = hashlib.new(name)

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()


def new(algorithm: str):
    """A running checksum with ``update(bytes)`` and ``digest() -> bytes``, or None when this
    process cannot compute ``algorithm`` (CRC64NVME without awscrt installed)."""
    if algorithm == "crc32":
        return _Crc(lambda d, v: zlib.crc32(d, v), 4)
    if algorithm == "crc32c":
        return _Crc(lambda d, v: _crc32c.crc32c(d, v), 4)
    if algorithm == "crc64nvme" and _crt is not None:
        return _Crc(lambda d, v: _crt.crc64nvme(d, v), 8)
    if algorithm in ("sha1", "sha256"):
        return _Hash(algorithm)
    return None


def encode(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def algorithm_of(header: str) -> str | None:
    """``x-amz-checksum-crc32`` -> ``crc32``; None for other headers (``-mode``, ``-type``, ...)."""
    header = header.lower()
    if header.startswith(HEADER_PREFIX) and header[len(HEADER_PREFIX):] in ALGORITHMS:
        return header[len(HEADER_PREFIX):]
    return None


def is_well_formed(algorithm: str, value: str) -> bool:
    width = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32}[algorithm]
    try:
        return len(base64.b64decode(value, validate=True)) == width
    except ValueError:
        return False


def composite(algorithm: str, part_values: list[str]) -> str | None:
    """S3's COMPOSITE multipart checksum: the checksum of the parts' raw checksums, then -N."""
    c = new(algorithm)
    if c is None:
        return None
    for v in part_values:
        c.update(base64.b64decode(v))
    return f"{encode(c.digest())}-{len(part_values)}"
