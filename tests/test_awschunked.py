"""The aws-chunked codec: round trips, exact lengths, malformed framing, signatures, real clients."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.errors import S3Error
from sidecar.upstream import awschunked
from sidecar.upstream.awschunked import (
    AwsChunkedDecoder, decode_bytes, encode_unsigned, encoded_length, reframe_unsigned,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


async def _aiter(pieces):
    for p in pieces:
        yield p


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


def encode(payload: bytes, chunk_size: int, trailers=(), cuts=()) -> bytes:
    async def run():
        return b"".join([f async for f in encode_unsigned(_aiter(_split(payload, list(cuts))),
                                                          chunk_size=chunk_size, trailers=list(trailers))])
    return asyncio.run(run())


def decode_pieces(pieces, **kw):
    dec = AwsChunkedDecoder(**kw)

    async def run():
        return b"".join([p async for p in dec.stream(_aiter(pieces))])
    return asyncio.run(run()), dec


trailer_names = st.sampled_from(sorted(awschunked.CHECKSUM_VALUE_LENGTHS) + ["x-amz-meta-foo", "x-custom"])
trailer_values = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", max_size=60)


@FAST
@given(payload=st.binary(max_size=5000), chunk_size=st.integers(1, 700),
       enc_cuts=st.lists(st.integers(0, 6000), max_size=8), dec_cuts=st.lists(st.integers(0, 12000), max_size=12),
       trailers=st.dictionaries(trailer_names, trailer_values, max_size=3))
def test_roundtrip_and_exact_length(payload, chunk_size, enc_cuts, dec_cuts, trailers):
    items = list(trailers.items())
    body = encode(payload, chunk_size, items, enc_cuts)
    assert len(body) == encoded_length(len(payload), [(n, len(v)) for n, v in items], chunk_size=chunk_size)
    got, dec = decode_pieces(_split(body, dec_cuts), decoded_length=len(payload), trailer_names=list(trailers))
    assert got == payload
    assert dec.trailers == items
    # every chunk but the last has exactly chunk_size bytes
    assert dec.chunk_count == -(-len(payload) // chunk_size) + 1


def test_encoded_length_matches_botocore_framing():
    # botocore frames the same way: hex size, CRLF, data, CRLF; "0", trailers, CRLF
    from botocore.httpchecksum import AwsChunkedWrapper, CrtCrc32Checksum, Crc32Checksum  # noqa: F401
    payload = bytes(range(256)) * 4096 + b"tail"
    wrapped = AwsChunkedWrapper(io.BytesIO(payload), checksum_cls=Crc32Checksum,
                                checksum_name="x-amz-checksum-crc32", chunk_size=65536).read()
    assert len(wrapped) == encoded_length(len(payload), [("x-amz-checksum-crc32", 8)], chunk_size=65536)
    ours = encode(payload, 65536, [("x-amz-checksum-crc32", _b64crc32(payload))])
    assert ours == wrapped


def _b64crc32(data: bytes) -> str:
    import base64
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def test_decodes_botocore_aws_chunked_wrapper_output():
    from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum
    payload = b"x" * 3_000_001
    raw = AwsChunkedWrapper(io.BytesIO(payload), checksum_cls=Crc32Checksum, checksum_name="x-amz-checksum-crc32").read()
    headers = [("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"), ("content-encoding", "aws-chunked"),
               ("x-amz-decoded-content-length", str(len(payload))), ("x-amz-trailer", "x-amz-checksum-crc32")]
    dec = AwsChunkedDecoder.from_headers(headers)
    got = b"".join(dec.feed(raw[:5]) + dec.feed(raw[5:777777]) + dec.feed(raw[777777:]))
    dec.close()
    assert got == payload and dec.trailers == [("x-amz-checksum-crc32", _b64crc32(payload))]
    # and without a checksum: "0\r\n\r\n"
    raw = AwsChunkedWrapper(io.BytesIO(b"abc")).read()
    assert decode_bytes(raw, decoded_length=3) == (b"abc", [])


# --- malformed input ----------------------------------------------------------------------------

GOOD = b"5\r\nhello\r\n3;chunk-signature=" + b"a" * 64 + b"\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"


@pytest.mark.parametrize("body,kw,code", [
    (b"zz\r\nhello\r\n0\r\n\r\n", {}, "IncompleteBody"),                      # size not hex
    (b"0x5\r\nhello\r\n0\r\n\r\n", {}, "IncompleteBody"),                     # int() would accept these
    (b"+5\r\nhello\r\n0\r\n\r\n", {}, "IncompleteBody"),
    (b" 5\r\nhello\r\n0\r\n\r\n", {}, "IncompleteBody"),
    (b"5\nhello\r\n0\r\n\r\n", {}, "IncompleteBody"),                         # header without CR
    (b"5\r\nhelloXX0\r\n\r\n", {}, "IncompleteBody"),                         # data without CRLF
    (b"5\r\nhello\r\n0\r\n", {}, "IncompleteBody"),                           # no final CRLF
    (b"5\r\nhel", {}, "IncompleteBody"),                                      # cut inside data
    (b"5\r\nhello\r\n0\r\n\r\nextra", {}, "IncompleteBody"),                  # bytes after the end
    (b"5\r\nhello\r\n0\r\n\r\n", {"decoded_length": 6}, "IncompleteBody"),   # shorter than declared
    (b"5\r\nhello\r\n0\r\n\r\n", {"decoded_length": 4}, "IncompleteBody"),   # longer than declared
    (b"1" * 5000 + b"\r\n", {}, "IncompleteBody"),                            # oversized header line
    (b"5;chunk-signature=zz\r\nhello\r\n0\r\n\r\n", {}, "IncompleteBody"),   # bad signature syntax
    (b"5\r\nhello\r\n0\r\n\r\n", {"signed": True}, "IncompleteBody"),         # unsigned chunk, signed mode
    (b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n", {"trailer_names": []}, "MalformedTrailerError"),
    (b"5\r\nhello\r\n0\r\n\r\n", {"trailer_names": ["x-amz-checksum-crc32"]}, "MalformedTrailerError"),
    (b"5\r\nhello\r\n0\r\nno colon here\r\n\r\n", {}, "MalformedTrailerError"),
    (b"5\r\nhello\r\n0\r\nx-a:1\r\nx-a:2\r\n\r\n", {}, "MalformedTrailerError"),
    (b"5\r\nhello\r\n0\r\nx-a:" + b"v" * 5000 + b"\r\n\r\n", {}, "MalformedTrailerError"),
])
@pytest.mark.parametrize("bytewise", [False, True])
def test_malformed_framing_is_rejected(body, kw, code, bytewise):
    pieces = [body[i:i + 1] for i in range(len(body))] if bytewise else [body]
    with pytest.raises(S3Error) as e:
        decode_pieces(pieces, **kw)
    assert e.value.code == code and e.value.status == 400


def test_good_sample_decodes():
    assert decode_bytes(GOOD) == (b"helloabc", [("x-amz-checksum-crc32", "AAAAAA==")])


@FAST
@given(pos=st.integers(0, len(GOOD)), op=st.sampled_from(["flip", "drop", "insert", "cut"]),
       byte=st.integers(0, 255), cuts=st.lists(st.integers(0, 200), max_size=5), declared=st.booleans())
def test_mutated_bodies_raise_only_s3error(pos, op, byte, cuts, declared):
    body = bytearray(GOOD)
    if op == "flip" and pos < len(body):
        body[pos] ^= byte or 1
    elif op == "drop" and pos < len(body):
        del body[pos]
    elif op == "insert":
        body.insert(pos, byte)
    elif op == "cut":
        del body[pos:]
    kw = {"decoded_length": 8} if declared else {}
    try:
        payload, dec = decode_pieces(_split(bytes(body), cuts), **kw)
    except S3Error as e:
        assert e.status == 400
        return
    if declared:
        assert len(payload) == 8


@FAST
@given(junk=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=5))
def test_random_bytes_raise_only_s3error(junk, cuts):
    try:
        decode_pieces(_split(junk, cuts), decoded_length=len(junk))
    except S3Error:
        pass


def test_memory_stays_bounded_for_huge_chunks():
    dec = AwsChunkedDecoder()
    dec.feed(b"ffffffffff\r\n")  # a 1 TiB chunk: data passes through, nothing accumulates
    block = b"z" * 65536
    for _ in range(64):
        assert dec.feed(block) == [block]
    assert len(dec._line) == 0
    with pytest.raises(S3Error):
        dec.close()


def test_from_headers_rejects_unknown_streaming_mode():
    with pytest.raises(S3Error) as e:
        AwsChunkedDecoder.from_headers([("x-amz-content-sha256", "STREAMING-SOMETHING-NEW")])
    assert e.value.code == "InvalidArgument"
    with pytest.raises(S3Error):
        AwsChunkedDecoder.from_headers([("x-amz-decoded-content-length", "12x")])


def test_header_helpers():
    assert awschunked.is_aws_chunked([("content-encoding", "gzip, aws-chunked")])
    assert awschunked.is_aws_chunked([("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER")])
    assert not awschunked.is_aws_chunked([("x-amz-content-sha256", "UNSIGNED-PAYLOAD")])
    assert awschunked.strip_aws_chunked("aws-chunked,gzip") == "gzip"
    assert awschunked.strip_aws_chunked("aws-chunked") is None


# --- signed streaming: the hooks carry what SigV4 verification needs -------------------------------

KEY = b"signing-key-derived-elsewhere"
STAMP, SCOPE = "20250101T000000Z", "20250101/us-east-1/s3/aws4_request"


def _chunk_sig(prev: str, data: bytes) -> str:
    sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", STAMP, SCOPE, prev, awschunked.EMPTY_SHA256,
                     hashlib.sha256(data).hexdigest()])
    return hmac.new(KEY, sts.encode(), hashlib.sha256).hexdigest()


def _trailer_sig(prev: str, trailers) -> str:
    sts = "\n".join(["AWS4-HMAC-SHA256-TRAILER", STAMP, SCOPE, prev,
                     hashlib.sha256(awschunked.canonical_trailers(trailers)).hexdigest()])
    return hmac.new(KEY, sts.encode(), hashlib.sha256).hexdigest()


def signed_body(payload: bytes, chunk: int, trailers=()) -> tuple[bytes, str]:
    seed = "0" * 64
    prev, out = seed, []
    for i in range(0, len(payload), chunk):
        data = payload[i:i + chunk]
        prev = _chunk_sig(prev, data)
        out.append(f"{len(data):x};chunk-signature={prev}\r\n".encode() + data + b"\r\n")
    prev = _chunk_sig(prev, b"")
    out.append(f"0;chunk-signature={prev}\r\n".encode())
    if trailers:
        out += [f"{n}:{v}\r\n".encode() for n, v in trailers]
        out.append(f"x-amz-trailer-signature:{_trailer_sig(prev, trailers)}\r\n".encode())
    out.append(b"\r\n")
    return b"".join(out), seed


class Verifier:
    """What the face's SigV4 module would plug into the decoder's hooks."""

    def __init__(self, seed: str) -> None:
        self.prev = seed

    def chunk(self, signature, payload_sha256) -> None:
        sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", STAMP, SCOPE, self.prev, awschunked.EMPTY_SHA256, payload_sha256])
        if signature != hmac.new(KEY, sts.encode(), hashlib.sha256).hexdigest():
            raise S3Error("SignatureDoesNotMatch")
        self.prev = signature

    def trailers(self, trailers, signature) -> None:
        if signature != _trailer_sig(self.prev, trailers):
            raise S3Error("SignatureDoesNotMatch")


@pytest.mark.parametrize("with_trailer", [False, True])
def test_signed_streaming_body_verifies_through_hooks(with_trailer):
    payload = bytes(range(256)) * 300
    trailers = [("x-amz-checksum-crc32", _b64crc32(payload))] if with_trailer else []
    body, seed = signed_body(payload, 8192, trailers)
    mode = awschunked.STREAMING_SIGNED_TRAILER if with_trailer else awschunked.STREAMING_SIGNED
    headers = [("x-amz-content-sha256", mode), ("x-amz-decoded-content-length", str(len(payload)))]
    if with_trailer:
        headers.append(("x-amz-trailer", "x-amz-checksum-crc32"))
    v = Verifier(seed)
    dec = AwsChunkedDecoder.from_headers(headers, on_chunk=v.chunk, on_trailers=v.trailers)
    got = b"".join(dec.feed(body[:1000]) + dec.feed(body[1000:]))
    dec.close()
    assert got == payload and dec.trailers == trailers
    # one flipped payload byte breaks that chunk's signature
    bad = bytearray(body)
    bad[body.index(b"\r\n") + 50] ^= 1
    dec = AwsChunkedDecoder.from_headers(headers, on_chunk=Verifier(seed).chunk, on_trailers=Verifier(seed).trailers)
    with pytest.raises(S3Error) as e:
        dec.feed(bytes(bad))
        dec.close()
    assert e.value.code == "SignatureDoesNotMatch"


def test_signed_trailer_without_trailer_signature_is_rejected():
    body = b"3;chunk-signature=" + b"a" * 64 + b"\r\nabc\r\n0;chunk-signature=" + b"b" * 64 + \
        b"\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    headers = [("x-amz-content-sha256", awschunked.STREAMING_SIGNED_TRAILER), ("x-amz-trailer", "x-amz-checksum-crc32"),
               ("x-amz-decoded-content-length", "3")]
    dec = AwsChunkedDecoder.from_headers(headers)
    with pytest.raises(S3Error) as e:
        dec.feed(body)
    assert e.value.code == "MalformedTrailerError"


def test_ecdsa_framing_decodes():
    sig = "30440220" + "ab" * 32 + "0220" + "cd" * 32  # a DER-encoded signature in hex: variable length
    body = f"3;chunk-signature={sig}\r\nabc\r\n0;chunk-signature={sig}\r\n\r\n".encode()
    headers = [("x-amz-content-sha256", awschunked.STREAMING_ECDSA), ("x-amz-decoded-content-length", "3")]
    seen = []
    dec = AwsChunkedDecoder.from_headers(headers, on_chunk=lambda s, h: seen.append((s, h)))
    assert b"".join(dec.feed(body)) == b"abc"
    dec.close()
    assert seen == [(sig, hashlib.sha256(b"abc").hexdigest()), (sig, awschunked.EMPTY_SHA256)]


# --- re-framing a signed upload as unsigned for a re-signing proxy --------------------------------------

async def _collect(it):
    return b"".join([p async for p in it])


@pytest.mark.parametrize("with_trailer", [False, True])
@pytest.mark.parametrize("size", [0, 1, 65536, 200_001])
def test_reframe_signed_upload(with_trailer, size):
    payload = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    trailers = [("x-amz-checksum-crc32", _b64crc32(payload))] if with_trailer else []
    body, seed = signed_body(payload, 8192, trailers)
    headers = [("content-type", "text/plain"), ("content-encoding", "aws-chunked,gzip"),
               ("x-amz-content-sha256", awschunked.STREAMING_SIGNED_TRAILER if with_trailer else awschunked.STREAMING_SIGNED),
               ("x-amz-decoded-content-length", str(len(payload))), ("content-length", str(len(body)))]
    if with_trailer:
        headers.append(("x-amz-trailer", "x-amz-checksum-crc32"))
    v = Verifier(seed)
    r = reframe_unsigned(headers, _aiter(_split(body, [7, 5000, 70000])), on_chunk=v.chunk, on_trailers=v.trailers)
    out = asyncio.run(_collect(r.body))
    assert len(out) == r.content_length
    h = dict(r.headers)
    assert h["content-length"] == str(len(out)) and h["content-type"] == "text/plain"
    if with_trailer:
        assert h["x-amz-content-sha256"] == awschunked.STREAMING_UNSIGNED_TRAILER
        assert h["content-encoding"] == "aws-chunked,gzip" and h["x-amz-trailer"] == "x-amz-checksum-crc32"
        dec = AwsChunkedDecoder.from_headers(r.headers)
        assert b"".join(dec.feed(out)) == payload
        dec.close()
        assert dec.trailers == trailers and b"chunk-signature" not in out and b"trailer-signature" not in out
    else:
        assert out == payload
        assert h["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD" and h["content-encoding"] == "gzip"
        assert "x-amz-decoded-content-length" not in h


def test_reframe_rejects_a_body_that_does_not_match_its_declaration():
    body, _ = signed_body(b"abc", 8192)
    headers = [("x-amz-content-sha256", awschunked.STREAMING_SIGNED), ("x-amz-decoded-content-length", "4")]
    r = reframe_unsigned(headers, _aiter([body]))
    with pytest.raises(S3Error) as e:
        asyncio.run(_collect(r.body))
    assert e.value.code == "IncompleteBody"
    with pytest.raises(S3Error) as e:
        reframe_unsigned([("x-amz-content-sha256", awschunked.STREAMING_SIGNED)], _aiter([body]))
    assert e.value.code == "MissingContentLength"
    # a trailer value of another length than announced would mis-frame the body: refused
    body = b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAA\r\n\r\n"
    headers = [("x-amz-content-sha256", awschunked.STREAMING_UNSIGNED_TRAILER), ("x-amz-decoded-content-length", "3"),
               ("x-amz-trailer", "x-amz-checksum-crc32")]
    r = reframe_unsigned(headers, _aiter([body]))
    with pytest.raises(S3Error) as e:
        asyncio.run(_collect(r.body))
    assert e.value.code == "MalformedTrailerError"
