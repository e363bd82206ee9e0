"""Conditional GET/HEAD (If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since).

S3 evaluates them in RFC 9110's order: If-Match, else If-Unmodified-Since (412 when false);
then If-None-Match, else If-Modified-Since (304 when the object is unchanged). So If-Match
true with If-Unmodified-Since false is 200, and If-None-Match false with If-Modified-Since
true is 304, as S3 documents.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..objects import http_date_to_ts

PRECONDITION_FAILED = 412
NOT_MODIFIED = 304
HEADERS = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")


def opaque_tag(tag: str) -> str:
    """An entity tag without its quotes and weakness prefix: ``W/"abc"`` -> ``abc``."""
    tag = tag.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    return tag.strip('"')


def _tags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def etag_matches(header: str, etag: str, *, weak: bool) -> bool:
    """Whether an If-Match (strong) or If-None-Match (weak) list selects ``etag``."""
    want = opaque_tag(etag)
    for tag in _tags(header):
        if tag == "*":
            return True
        if not weak and tag.startswith("W/"):
            continue
        if opaque_tag(tag) == want:
            return True
    return False


def evaluate(headers: Mapping[str, str], etag: str, last_modified: float | None) -> int | None:
    """412, 304, or None (serve the object). ``headers`` has lower-case names."""
    failed = failed_condition(headers, etag, last_modified)
    return failed[0] if failed is not None else None


def failed_condition(headers: Mapping[str, str], etag: str,
                     last_modified: float | None) -> tuple[int, str] | None:
    """The first condition that fails, as (412 or 304, its header name), or None."""
    if_match = headers.get("if-match")
    if if_match is not None:
        if not etag_matches(if_match, etag, weak=False):
            return PRECONDITION_FAILED, "if-match"
    else:
        ius = headers.get("if-unmodified-since")
        if ius is not None and last_modified is not None:
            t = http_date_to_ts(ius)
            if t is not None and int(last_modified) > int(t):
                return PRECONDITION_FAILED, "if-unmodified-since"
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if etag_matches(if_none_match, etag, weak=True):
            return NOT_MODIFIED, "if-none-match"
    else:
        ims = headers.get("if-modified-since")
        if ims is not None and last_modified is not None:
            t = http_date_to_ts(ims)
            if t is not None and int(last_modified) <= int(t):
                return NOT_MODIFIED, "if-modified-since"
    return None
