"""Conditional request evaluation in S3's (RFC 9110's) order."""

from __future__ import annotations

import pytest

from sidecar.s3.conditions import NOT_MODIFIED, PRECONDITION_FAILED, etag_matches, evaluate, failed_condition, opaque_tag

ETAG = '"abc"'
LM = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
BEFORE, AT, AFTER = "Tue, 14 Nov 2023 22:13:19 GMT", "Tue, 14 Nov 2023 22:13:20 GMT", "Tue, 14 Nov 2023 22:13:21 GMT"


@pytest.mark.parametrize("headers,want", [
    ({}, None),
    ({"if-match": ETAG}, None), ({"if-match": "abc"}, None), ({"if-match": '"zzz"'}, PRECONDITION_FAILED),
    ({"if-match": "*"}, None), ({"if-match": '"x", "abc"'}, None), ({"if-match": 'W/"abc"'}, PRECONDITION_FAILED),
    ({"if-none-match": ETAG}, NOT_MODIFIED), ({"if-none-match": 'W/"abc"'}, NOT_MODIFIED),
    ({"if-none-match": '"zzz"'}, None), ({"if-none-match": "*"}, NOT_MODIFIED),
    ({"if-modified-since": BEFORE}, None), ({"if-modified-since": AT}, NOT_MODIFIED),
    ({"if-modified-since": AFTER}, NOT_MODIFIED), ({"if-modified-since": "garbage"}, None),
    ({"if-unmodified-since": BEFORE}, PRECONDITION_FAILED), ({"if-unmodified-since": AT}, None),
    ({"if-unmodified-since": "garbage"}, None),
    # S3's documented pairs
    ({"if-match": ETAG, "if-unmodified-since": BEFORE}, None),
    ({"if-none-match": ETAG, "if-modified-since": BEFORE}, NOT_MODIFIED),
    # If-Match failure outranks If-None-Match
    ({"if-match": '"zzz"', "if-none-match": ETAG}, PRECONDITION_FAILED),
    ({"if-none-match": '"zzz"', "if-modified-since": AFTER}, None),
])
def test_evaluate(headers, want):
    assert evaluate(headers, ETAG, LM) == want


def test_no_last_modified_ignores_date_conditions():
    assert evaluate({"if-modified-since": AFTER, "if-unmodified-since": BEFORE}, ETAG, None) is None


def test_etag_lists():
    assert etag_matches(' "a" , "b" ', '"b"', weak=False)
    assert not etag_matches('', '"b"', weak=False)


@pytest.mark.parametrize("headers,want", [
    ({"if-match": ETAG}, None),
    ({"if-match": '"zzz"'}, (PRECONDITION_FAILED, "if-match")),
    ({"if-unmodified-since": BEFORE}, (PRECONDITION_FAILED, "if-unmodified-since")),
    ({"if-none-match": ETAG}, (NOT_MODIFIED, "if-none-match")),
    ({"if-modified-since": AT}, (NOT_MODIFIED, "if-modified-since")),
    ({"if-match": '"zzz"', "if-none-match": ETAG}, (PRECONDITION_FAILED, "if-match")),
    ({"if-match": ETAG, "if-none-match": ETAG}, (NOT_MODIFIED, "if-none-match")),
])
def test_failed_condition_names_the_deciding_header(headers, want):
    """The local upstream reports it in S3's Condition field (and as x-amz-copy-source-... on copies)."""
    assert failed_condition(headers, ETAG, LM) == want
    assert evaluate(headers, ETAG, LM) == (want[0] if want else None)


def test_opaque_tag():
    assert opaque_tag(' W/"abc" ') == opaque_tag('"abc"') == opaque_tag("abc") == "abc"

