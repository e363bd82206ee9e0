"""Bad input at the S3 face over real HTTP: fuzzed requests, the bugs they found, and the
endpoint's limits (header size, connections, request rate)."""

from __future__ import annotations

import concurrent.futures
import gzip
import os
import random
import re
import socket
import sys
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.s3.limits import RateLimit, RequestBucket
from support.procs import Sidecar

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fuzz_face as fz  # noqa: E402  (the request grammar and checks bench/fuzz_face.py runs at scale)


@pytest.fixture(scope="module")
def fuzz_env(moto, tmp_path_factory, logs_dir):
    """A sidecar straight in front of moto, seeded objects, and a snapshot of the tree around
    its cache dir (and the working directory) to find files created outside the cache."""
    work = tmp_path_factory.mktemp("fuzz")
    cache = work / "cache"
    sc = Sidecar(moto.url, cache, logs_dir, chunk_size="64KiB")
    buckets = ["fz-" + os.urandom(4).hex(), "fz-" + os.urandom(4).hex()]
    fz.seed(moto.client(), buckets, fz.SEED_KEYS)
    before = fz.tree_snapshot(work, cache), set(os.listdir(os.getcwd()))
    yield sc, buckets, work, cache, before
    sc.stop()


def _problems(sc, moto, data: bytes) -> list[str]:
    reply = fz.send("127.0.0.1", sc.port, data, idle=0.3)
    found = fz.check_reply(fz.request_method(data), reply)
    if found and "upstream's" not in found[0]:
        # what moto answers to the same bytes itself is not the sidecar's doing
        direct = fz.send("127.0.0.1", moto.port, data, idle=0.3)
        if direct.status == reply.status and not fz._CODE.search(direct.body):
            return []
    return [f"{p}: {reply.body[:200]!r}" for p in found if "upstream's" not in p]


def _log_problems(sc, start: int) -> list[str]:
    return fz.log_problems(sc.log_path.read_text(errors="replace")[start:])


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(rnd=st.randoms(use_true_random=False))
def test_fuzzed_requests_get_s3_answers(fuzz_env, moto, rnd):
    sc, buckets, *_ = fuzz_env
    data = fz.build_request(rnd, buckets, fz.SEED_KEYS)
    assert _problems(sc, moto, data) == [], data[:400]


def test_fuzz_sweep_no_5xx_traceback_file_or_growth(fuzz_env, moto):
    """A seeded sweep, several clients at once; then the sidecar's log, the tree around the
    cache dir and its RSS."""
    sc, buckets, work, cache, (tree0, cwd0) = fuzz_env
    start = len(sc.log_path.read_text(errors="replace"))
    rss0 = fz.rss_kib(sc.proc.pid)

    def one(i: int) -> list[str]:
        data = fz.build_request(random.Random(7919 * i), buckets, fz.SEED_KEYS)
        return [f"{p}: {data[:200]!r}" for p in _problems(sc, moto, data)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        found = [p for ps in pool.map(one, range(2500)) for p in ps]
    assert found == []
    assert _log_problems(sc, start) == []
    assert fz.tree_snapshot(work, cache) - tree0 == set()
    assert set(os.listdir(os.getcwd())) - cwd0 == set()
    assert sc.proc.poll() is None
    assert fz.rss_kib(sc.proc.pid) < rss0 + 64 * 1024  # bounded: no per-request growth


# --- regressions: each was a finding of the fuzzer ------------------------------------------------


def _raw(sc, data: bytes) -> fz.RawReply:
    return fz.send("127.0.0.1", sc.port, data, idle=0.5)


def _code(reply: fz.RawReply) -> str | None:
    m = re.search(rb"<Code>([^<]+)</Code>", reply.body)
    return m.group(1).decode() if m else None


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS to a plain HTTP port
    b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
])
def test_unparsable_http_gets_s3_xml_and_no_error_log(fuzz_env, data):
    sc = fuzz_env[0]
    start = len(sc.log_path.read_text(errors="replace"))
    reply = _raw(sc, data)
    assert reply.status == 400 and _code(reply) == "InvalidRequest", reply.body
    assert reply.headers.get("content-type") == "application/xml"
    assert _log_problems(sc, start) == []


def test_unknown_method_is_405_not_forwarded(fuzz_env):
    sc, buckets, *_ = fuzz_env
    reply = _raw(sc, f"PATCH /{buckets[0]} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert reply.status == 405 and _code(reply) == "MethodNotAllowed"


@pytest.mark.parametrize("body", [
    b"zz\r\nabc\r\n0\r\n\r\n",  # chunk size not hex
    b"5\r\nab\r\n0\r\n\r\n",  # chunk shorter than its size
])
def test_bad_chunked_body_is_400_without_traceback(fuzz_env, body):
    sc, buckets, *_ = fuzz_env
    start = len(sc.log_path.read_text(errors="replace"))
    reply = _raw(sc, f"PUT /{buckets[0]}/chunky HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
    assert reply.status is None or reply.status == 400, reply.body
    if reply.status == 400:
        assert _code(reply) in ("InvalidRequest", "IncompleteBody")
    assert _log_problems(sc, start) == []


def test_content_encoding_gzip_body_stored_as_sent(fuzz_env, moto_s3):
    """aiohttp inflated gzip request bodies: a PutObject with Content-Encoding: gzip stored the
    inflated bytes under a header saying they were gzip. S3 stores what it is sent."""
    sc, buckets, *_ = fuzz_env
    packed = gzip.compress(os.urandom(2000) * 3)
    sc.client().put_object(Bucket=buckets[0], Key="gz", Body=packed, ContentEncoding="gzip")
    got = moto_s3.get_object(Bucket=buckets[0], Key="gz")
    assert got["Body"].read() == packed
    assert sc.client().get_object(Bucket=buckets[0], Key="gz")["Body"].read() == packed


def test_broken_gzip_body_is_the_clients_error(fuzz_env):
    sc, buckets, *_ = fuzz_env
    start = len(sc.log_path.read_text(errors="replace"))
    body = b"not gzip at all"
    reply = _raw(sc, f"PUT /{buckets[0]}/gz2 HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    assert reply.status == 200  # passed through as bytes, as S3 takes them
    assert _log_problems(sc, start) == []


def test_client_gone_mid_body_is_not_an_upstream_failure(fuzz_env):
    """A client that vanished mid-upload surfaced as the upstream's failure (a 503, an error
    record with a traceback); it is the client's doing, and the next request is unaffected."""
    sc, buckets, *_ = fuzz_env
    start = len(sc.log_path.read_text(errors="replace"))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", sc.port)) as s:
            s.sendall(f"PUT /{buckets[0]}/cut HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode()
                      + b"x" * 5000)
            time.sleep(0.2)
    time.sleep(0.5)
    assert _log_problems(sc, start) == []
    assert sc.client().head_object(Bucket=buckets[0], Key="k")["ContentLength"] == 3000


# --- limits ------------------------------------------------------------------------------------


def test_header_size_limit_is_configurable(make_sidecar, moto, bucket):
    moto.client().put_object(Bucket=bucket, Key="k", Body=b"x")
    small = make_sidecar(moto.url, max_header_size="2KiB")
    line = f"GET /{bucket}/k HTTP/1.1\r\nHost: x\r\nx-amz-meta-pad: {'p' * 3000}\r\nConnection: close\r\n\r\n"
    reply = _raw(small, line.encode())
    assert reply.status == 400 and _code(reply) == "RequestHeaderSectionTooLarge"
    default = make_sidecar(moto.url)
    assert _raw(default, line.encode()).status == 200
    assert _raw(default, line.replace("p" * 3000, "p" * 20000).encode()).status == 400


def test_header_count_limit(make_sidecar, moto, bucket):
    sc = make_sidecar(moto.url, max_header_count=16)
    many = "".join(f"x-amz-meta-h{i}: v\r\n" for i in range(20))
    reply = _raw(sc, f"GET /{bucket}/k HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n".encode())
    assert reply.status == 400 and _code(reply) == "RequestHeaderSectionTooLarge"


def test_connection_limit_answers_slowdown(make_sidecar, moto, bucket):
    moto.client().put_object(Bucket=bucket, Key="k", Body=b"x")
    sc = make_sidecar(moto.url, max_client_connections=2)
    req = f"GET /{bucket}/k HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    held = [socket.create_connection(("127.0.0.1", sc.port)) for _ in range(2)]
    try:
        for s in held:  # both served, and kept open (keep-alive)
            s.sendall(req)
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        reply = _raw(sc, req)
        assert reply.status == 503 and _code(reply) == "SlowDown"
        assert b"reduce your request rate" in reply.body
    finally:
        held.pop().close()
    time.sleep(0.3)
    assert _raw(sc, req).status == 200  # a freed slot is taken again
    for s in held:
        s.close()


def test_request_rate_limit_answers_slowdown_like_s3(make_sidecar, moto, bucket):
    moto.client().put_object(Bucket=bucket, Key="k", Body=b"x")
    sc = make_sidecar(moto.url, client_request_rate=1, client_request_burst=3)
    s3 = sc.client()
    codes = []
    t0 = time.monotonic()
    for _ in range(12):
        try:
            s3.get_object(Bucket=bucket, Key="k")["Body"].read()
            codes.append("ok")
        except ClientError as e:
            codes.append(e.response["Error"]["Code"])
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert set(codes) == {"ok", "SlowDown"}
    # the burst, plus what refilled meanwhile
    assert 3 <= codes.count("ok") <= 3 + int(time.monotonic() - t0) + 1
    time.sleep(1.1)
    s3.get_object(Bucket=bucket, Key="k")["Body"].read()  # refilled


# --- the rate limit's logic ------------------------------------------------------------------


@given(rate=st.floats(0.5, 1000), burst=st.integers(1, 200),
       gaps=st.lists(st.floats(0, 2), min_size=1, max_size=300))
def test_token_bucket_never_exceeds_rate_plus_burst(rate, burst, gaps):
    now = 0.0
    b = RequestBucket(rate, burst, now)
    allowed = 0
    for g in gaps:
        now += g
        allowed += b.take(now)
    assert allowed <= burst + rate * now + 1e-6
    if all(g >= 1.0 / rate for g in gaps):  # never faster than the rate: nothing refused
        assert allowed == len(gaps)


def test_rate_limit_per_client_and_bounded():
    t = [0.0]
    rl = RateLimit(1.0, 2, clock=lambda: t[0])
    assert [rl.allow("a") for _ in range(3)] == [True, True, False]
    assert rl.allow("b")  # another address has its own bucket
    for i in range(RateLimit.PRUNE_AT - 2):
        rl.allow(f"c{i}")
    assert len(rl.buckets) == RateLimit.PRUNE_AT  # none refilled yet: all kept
    t[0] += 10  # all refilled: forgotten when the next new address comes
    rl.allow("new")
    assert list(rl.buckets) == ["new"]
    assert RateLimit(0, 1).allow("x")  # 0: unlimited


_SIG = b";chunk-signature=" + b"0" * 64


@pytest.mark.parametrize("inner", [
    b"5" + _SIG + b"\r\nabc",  # the body ends inside a chunk
    b"zz\r\n",  # a chunk size that is not hexadecimal
    b"10" + _SIG + b"\r\nshort\r\n0" + _SIG + b"\r\n\r\n",  # chunks beyond the decoded length
])
def test_bad_streamed_aws_chunked_body_is_400_not_upstream_503(fuzz_env, inner):
    """Found streamed (no Content-Length) while being re-framed towards the upstream, a bad
    aws-chunked body came back wrapped as the upstream's connection failure: 503."""
    sc, buckets, *_ = fuzz_env
    start = len(sc.log_path.read_text(errors="replace"))
    outer = b"%x\r\n" % len(inner) + inner + b"\r\n0\r\n\r\n"
    data = (f"PUT /{buckets[0]}/awsc HTTP/1.1\r\nHost: x\r\nContent-Encoding: aws-chunked\r\n"
            "x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD\r\nx-amz-decoded-content-length: 10\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() + outer
    for _ in range(12):  # more than enough failures to open the upstream's circuit breaker
        reply = _raw(sc, data)
        assert reply.status == 400 and _code(reply) == "IncompleteBody", reply.body
    assert _log_problems(sc, start) == []
    # the client's bad bodies did not count against the upstream
    assert sc.client().get_object(Bucket=buckets[0], Key="k")["Body"].read()
    reply = _raw(sc, f"GET /{buckets[0]}/never-there HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert reply.status == 404


# --- the parsers alone: any text is an answer or an S3Error, never another exception -----------

from sidecar.errors import S3Error  # noqa: E402
from sidecar.s3 import conditions  # noqa: E402
from sidecar.s3.ranges import parse_range, resolve  # noqa: E402
from sidecar.s3.target import parse_target  # noqa: E402

_raw_text = st.lists(st.sampled_from(list("/%?&=.abcf0123456789~+ \x00é\udcff") + ["%ff", "%c3", ".."]),
                     max_size=40).map("".join)


@given(path=_raw_text, host=st.one_of(st.none(), _raw_text.map(lambda t: t + ".localhost"), _raw_text))
def test_parse_target_raises_only_s3_errors(path, host):
    try:
        t = parse_target(path, host, ("localhost",))
    except S3Error as e:
        assert 400 <= e.status < 500
    else:
        assert t.bucket is None or (t.bucket and "/" not in t.bucket)


@given(header=st.one_of(st.none(), st.text(max_size=40), st.from_regex(r"bytes=\d{0,30}-\d{0,30}")),
       size=st.integers(0, 2**63))
def test_parse_range_raises_nothing_unexpected(header, size):
    from sidecar.s3.ranges import RangeNotSatisfiable  # noqa: PLC0415
    try:
        r = resolve(parse_range(header), size)
    except RangeNotSatisfiable:
        return
    assert r is None or 0 <= r.start <= r.end < size


@given(headers=st.dictionaries(st.sampled_from(conditions.HEADERS), st.text(max_size=40)),
       etag=st.text(max_size=10), mtime=st.one_of(st.none(), st.floats(-1e12, 1e12)))
def test_conditions_raise_nothing(headers, etag, mtime):
    assert conditions.evaluate(headers, etag, mtime) in (None, conditions.NOT_MODIFIED,
                                                         conditions.PRECONDITION_FAILED)


def test_read_with_an_aws_chunked_body_goes_upstream_without_one(fuzz_env):
    """A HEAD carrying aws-chunked framing headers and a body went upstream with the headers
    and without the body; moto failed on it (500). S3 reads take no body."""
    sc, buckets, *_ = fuzz_env
    for method, want in (("HEAD", 200), ("GET", 200)):
        reply = _raw(sc, (f"{method} /{buckets[0]}?acl HTTP/1.1\r\nHost: x\r\nContent-Encoding: aws-chunked\r\n"
                          "x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER\r\n"
                          "x-amz-decoded-content-length: 4999\r\nTransfer-Encoding: chunked\r\n"
                          "Connection: close\r\n\r\n5\r\nabcde\r\n0\r\n\r\n").encode())
        assert reply.status == want, (method, reply.body)


@pytest.mark.parametrize("value", ["\u00e9", "MD5", ""])
def test_unknown_checksum_algorithm_is_400(fuzz_env, value):
    """An unknown x-amz-sdk-checksum-algorithm reached moto, whose answer the upstream client
    could not parse: 503. S3 answers 400 InvalidRequest."""
    sc, buckets, *_ = fuzz_env
    reply = _raw(sc, (f"PUT /{buckets[0]}/ck HTTP/1.1\r\nHost: x\r\nx-amz-sdk-checksum-algorithm: {value}\r\n"
                      "Content-Length: 0\r\nConnection: close\r\n\r\n").encode())
    assert reply.status == 400 and _code(reply) == "InvalidRequest", reply.body


def test_known_checksum_algorithm_passes(fuzz_env):
    sc, buckets, *_ = fuzz_env
    sc.client().put_object(Bucket=buckets[0], Key="ck-ok", Body=b"abc", ChecksumAlgorithm="CRC32")
    assert sc.client().get_object(Bucket=buckets[0], Key="ck-ok")["Body"].read() == b"abc"


def test_clients_abandoning_uploads_do_not_open_the_upstream_breaker(make_sidecar, moto, bucket):
    """Streamed uploads (over 1 MiB) that their clients abandon failed inside the upstream
    client and were counted as upstream failures: five in a row opened the circuit breaker,
    and every client got 503 "The upstream is failing" for a while."""
    sc = make_sidecar(moto.url)
    for _ in range(8):
        with socket.create_connection(("127.0.0.1", sc.port)) as s:
            s.sendall(f"PUT /{bucket}/big HTTP/1.1\r\nHost: x\r\nContent-Length: {8 << 20}\r\n\r\n".encode()
                      + b"x" * (2 << 20))
            time.sleep(0.1)
    time.sleep(0.3)
    reply = _raw(sc, f"GET /{bucket}?list-type=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert reply.status == 200, reply.body
