"""Range parsing and chunk arithmetic: properties against a direct reading of RFC 9110."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from sidecar.cache.layout import ChunkLayout
from sidecar.s3.ranges import ByteRange, RangeNotSatisfiable, RangeSpec, parse_range, resolve


def reference(header: str | None, size: int):
    """Independent model: the bytes a Range header selects (None = whole, 'unsat' = 416)."""
    if header is None:
        return None
    h = header.strip()
    if not h.lower().startswith("bytes"):
        return None
    rest = h[5:].lstrip()
    if not rest.startswith("="):
        return None
    spec = rest[1:].strip()
    if "," in spec or spec.count("-") != 1:
        return None
    a, b = (x.strip() for x in spec.split("-"))
    if a == "":
        if not b.isdigit():
            return None
        n = int(b)
        if n == 0:
            return "unsat"
        if size == 0:
            return None
        return range(max(0, size - n), size)
    if not a.isdigit() or (b and not b.isdigit()):
        return None
    first = int(a)
    last = int(b) if b else None
    if last is not None and last < first:
        return None
    if first >= size:
        return "unsat"
    return range(first, size if last is None else min(last, size - 1) + 1)


def apply(header, size):
    try:
        r = resolve(parse_range(header), size)
    except RangeNotSatisfiable:
        return "unsat"
    return None if r is None else range(r.start, r.end + 1)


num = st.integers(min_value=0, max_value=10**7).map(str)
headers = st.one_of(
    st.none(),
    st.builds(lambda a, b: f"bytes={a}-{b}", num, num),
    st.builds(lambda a: f"bytes={a}-", num),
    st.builds(lambda b: f"bytes=-{b}", num),
    st.builds(lambda a, b, c, d: f"bytes={a}-{b},{c}-{d}", num, num, num, num),
    st.builds(lambda s: f"bytes={s}", st.text(alphabet="0123456789-, abx", max_size=12)),
    st.text(max_size=20),
)


@given(headers, st.integers(min_value=0, max_value=2 * 10**7))
def test_range_matches_the_reference(header, size):
    assert apply(header, size) == reference(header, size)


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=1, max_value=10**9))
def test_resolved_ranges_stay_inside_the_object(size, n):
    r = resolve(RangeSpec(None, None, n), size)
    assert r is not None and 0 <= r.start <= r.end == size - 1 and r.length == min(n, size)


@pytest.mark.parametrize("header,size,want", [
    ("bytes=0-0", 10, range(0, 1)), ("bytes=-3", 10, range(7, 10)), ("bytes=7-", 10, range(7, 10)),
    ("bytes=10-", 10, "unsat"), ("bytes=-0", 10, "unsat"), ("bytes=5-2", 10, None), ("bytes=0-1,3-4", 10, None),
    ("bytes=0-", 0, "unsat"), ("bytes=-1", 0, None), ("BYTES = 1 - 2", 10, range(1, 3)), ("items=0-1", 10, None),
    ("bytes=" + "9" * 5000 + "-", 10, None),
])
def test_range_examples(header, size, want):
    assert apply(header, size) == want


def test_content_range():
    assert ByteRange(5, 9).content_range(100) == "bytes 5-9/100"


@given(st.integers(min_value=1, max_value=10**10), st.integers(min_value=1, max_value=2**26), st.data())
def test_chunks_tile_any_range_exactly(size, chunk, data):
    start = data.draw(st.integers(min_value=0, max_value=size - 1))
    end = data.draw(st.integers(min_value=start, max_value=size - 1))
    layout = ChunkLayout(chunk)
    first, last = layout.span(start, end)
    assert 0 <= first <= last < layout.count(size)
    c0, _ = layout.bounds(first, size)
    _, c1 = layout.bounds(last, size)
    assert c0 <= start and end <= c1
    covered = 0
    for i in range(first, min(last, first + 50) + 1):
        a, b = layout.bounds(i, size)
        assert b - a + 1 == layout.length(i, size)
        assert b - a + 1 == (chunk if i < layout.count(size) - 1 else size - (layout.count(size) - 1) * chunk)
        covered += b - a + 1
    assert covered > 0


@given(st.integers(min_value=1, max_value=2**26), st.integers(min_value=0, max_value=10**10),
       st.one_of(st.none(), st.integers(min_value=0, max_value=10**10)), st.integers(min_value=1, max_value=128))
def test_cold_window_is_whole_chunks_covering_the_start(chunk, start, end, max_chunks):
    if end is not None and end < start:
        start, end = end, start
    layout = ChunkLayout(chunk)
    w0, w1 = layout.window(start, end, max_chunks)
    assert w0 % chunk == 0 and (w1 + 1) % chunk == 0
    assert w0 <= start <= w1
    assert (w1 - w0 + 1) // chunk <= max_chunks
    if end is not None and (end - w0) // chunk < max_chunks:
        assert end <= w1 and layout.span(end, end)[0] == w1 // chunk
