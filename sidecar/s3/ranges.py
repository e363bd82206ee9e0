"""HTTP Range (RFC 9110 §14) as S3 applies it: one byte range per request.

S3 answers a Range it cannot use (several ranges, another unit, bad syntax) with the whole
object, and an unsatisfiable one with 416 InvalidRange. ``parse_range`` reads the header;
``resolve`` applies it to an object size.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# Named tuples, not frozen dataclasses: every ranged read builds both, and a tuple is several
# times cheaper to build.


class RangeSpec(NamedTuple):
    """``bytes=first-last``, ``bytes=first-`` (last None) or ``bytes=-suffix`` (first None)."""

    first: int | None
    last: int | None
    suffix: int | None = None


class ByteRange(NamedTuple):
    """An inclusive, satisfiable span of an object."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class RangeNotSatisfiable(Exception):
    pass


_SPEC = re.compile(r"^\s*bytes\s*=\s*(?:(\d+)\s*-\s*(\d*)|-\s*(\d+))\s*$", re.IGNORECASE)


def parse_range(header: str | None) -> RangeSpec | None:
    """The single byte range in a Range header, or None when the header is absent or unusable."""
    if header is None or len(header) > 512:
        return None
    m = _SPEC.match(header)
    if not m:
        return None
    try:
        if m.group(3) is not None:
            return RangeSpec(None, None, int(m.group(3)))
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else None
    except ValueError:  # more digits than int() accepts
        return None
    if last is not None and last < first:
        return None  # invalid byte-range-spec: the header is ignored
    return RangeSpec(first, last)


def resolve(spec: RangeSpec | None, size: int) -> ByteRange | None:
    """The span ``spec`` selects in an object of ``size`` bytes; None means the whole object.

    Raises RangeNotSatisfiable (416) when no byte of the object is selected.
    """
    if spec is None:
        return None
    if spec.suffix is not None:
        if spec.suffix == 0:
            raise RangeNotSatisfiable()
        if size == 0:
            return None  # a non-zero suffix of an empty object: the whole (empty) object
        return ByteRange(max(0, size - spec.suffix), size - 1)
    assert spec.first is not None
    if spec.first >= size:
        raise RangeNotSatisfiable()
    last = size - 1 if spec.last is None else min(spec.last, size - 1)
    return ByteRange(spec.first, last)
