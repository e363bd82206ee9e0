"""The lean hit path: plain GET/HEAD hits are answered on the raw connection, everything else
is handed to aiohttp on the same connection, and both answer as the S3 face does."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.s3.fastpath import parse_head
from support.observe import metric, wait_until

KiB = 1024


def fast_answers(sc) -> float:
    m = re.search(r"^sidecar_fast_path_requests_total (\S+)$", sc.metrics_text(), re.M)
    return float(m.group(1)) if m else 0.0


class Conn:
    """One keep-alive client connection, reading responses by Content-Length."""

    def __init__(self, url: str, rcvbuf: int = 0) -> None:
        """``rcvbuf``: a receive buffer this small (a slow reader: the server's sends fill it at once)."""
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((host, int(port)))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> None:
        piece = self.sock.recv(1 << 20)
        if not piece:
            raise ConnectionError("closed")
        self.buf += piece

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        n = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._more()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def close(self) -> None:
        self.sock.close()


def get(path: str, *extra: str, method: str = "GET") -> bytes:
    return ("\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *extra]) + "\r\n\r\n").encode()


def test_hits_are_answered_on_the_fast_path(make_sidecar, moto_s3, bucket):
    sc = make_sidecar(chunk_size="256KiB")
    small, big = os.urandom(5 * KiB), os.urandom(700 * KiB)
    moto_s3.put_object(Bucket=bucket, Key="small", Body=small, ContentType="text/plain", Metadata={"a": "b"})
    moto_s3.put_object(Bucket=bucket, Key="big", Body=big)
    warm = sc.client()
    for key, body in (("small", small), ("big", big)):
        assert warm.get_object(Bucket=bucket, Key=key)["Body"].read() == body  # misses: aiohttp's path
    before = fast_answers(sc)
    c = Conn(sc.url)
    c.send(get(f"/{bucket}/small"))
    status, headers, body = c.response()
    assert (status, body, headers["content-type"], headers["x-amz-meta-a"]) == (200, small, "text/plain", "b")
    c.send(get(f"/{bucket}/big", "Range: bytes=1000-300000"))  # two chunks, from the chunk files
    status, headers, body = c.response()
    assert (status, body, headers["content-range"]) == (206, big[1000:300001], f"bytes 1000-300000/{len(big)}")
    c.send(get(f"/{bucket}/big", f'If-Match: "{hashlib.md5(big).hexdigest()}"', "Range: bytes=0-9"))  # as s3fs
    assert c.response()[::2] == (206, big[:10])
    c.send(get(f"/{bucket}/big", method="HEAD"))
    status, headers, body = c.response(head_only=True)
    assert (status, headers["content-length"], headers["etag"]) == (200, str(len(big)), warm.head_object(
        Bucket=bucket, Key="big")["ETag"])
    c.send(get(f"/{bucket}/big"))
    assert c.response()[2] == big
    c.close()
    # boto3 itself (checksum mode, its own headers) takes the fast path too
    s3 = sc.client()
    got = s3.get_object(Bucket=bucket, Key="small", ChecksumMode="ENABLED")
    assert got["Body"].read() == small
    assert s3.get_object(Bucket=bucket, Key="big", Range="bytes=-10")["Body"].read() == big[-10:]
    assert fast_answers(sc) - before >= 7
    sc.stop()  # the request log is written in batches: all of it is out once the daemon stops
    lines = [e for e in sc.log_events() if e.get("event") == "request" and e.get("range") == "bytes=-10"]
    assert len(lines) == 1
    assert {k: lines[0][k] for k in ("operation", "key", "status", "outcome", "bytes", "bytes_cache")} == {
        "operation": "GetObject", "key": "big", "status": 206, "outcome": "hit", "bytes": 10, "bytes_cache": 10}


def test_mixed_keep_alive_sequence_answers_each_request(make_sidecar, moto_s3, bucket):
    sc = make_sidecar(chunk_size="64KiB")
    body = os.urandom(100 * KiB)
    moto_s3.put_object(Bucket=bucket, Key="k", Body=body)
    assert sc.client().get_object(Bucket=bucket, Key="k")["Body"].read() == body
    before = fast_answers(sc)
    c = Conn(sc.url)
    c.send(get(f"/{bucket}/k"))  # a hit, on the fast path
    assert c.response()[::2] == (200, body)
    assert fast_answers(sc) == before + 1
    new = b"replaced"
    c.send(get(f"/{bucket}/k", f"Content-Length: {len(new)}", method="PUT") + new)  # handed to aiohttp
    assert c.response()[0] == 200
    c.send(get(f"/{bucket}/k", method="HEAD"))
    status, headers, _ = c.response(head_only=True)
    assert (status, headers["content-length"]) == (200, str(len(new)))
    c.send(get(f"/{bucket}/k", "Range: bytes=2-4"))  # a miss: aiohttp's
    assert c.response()[::2] == (206, new[2:5])
    answered = fast_answers(sc)
    c.send(get(f"/{bucket}/k", "Range: bytes=1-6"))  # now a hit: the connection comes back
    assert c.response()[::2] == (206, new[1:7])
    assert fast_answers(sc) == answered + 1
    c.send(get(f"/{bucket}/k", "If-None-Match: *"))
    assert c.response()[0] == 304
    c.send(b"GET /" + bucket.encode() + b"/k HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n")
    status, headers, text = c.response()
    assert status == 400 and b"<Code>InvalidRequest</Code>" in text
    c.close()


def test_pipelined_requests_keep_their_order(make_sidecar, moto_s3, bucket):
    sc = make_sidecar(chunk_size="64KiB")
    a, b = os.urandom(3 * KiB), os.urandom(200 * KiB)
    moto_s3.put_object(Bucket=bucket, Key="a", Body=a)
    moto_s3.put_object(Bucket=bucket, Key="b", Body=b)
    s3 = sc.client()
    for k in ("a", "b"):
        s3.get_object(Bucket=bucket, Key=k)["Body"].read()
    c = Conn(sc.url)
    c.send(get(f"/{bucket}/b") + get(f"/{bucket}/a", "Range: bytes=0-9") + get(f"/{bucket}/nope")
           + get(f"/{bucket}/a"))
    assert c.response()[::2] == (200, b)
    assert c.response()[::2] == (206, a[:10])
    status, _, text = c.response()
    assert status == 404 and b"NoSuchKey" in text
    assert c.response()[::2] == (200, a)
    c.close()


def test_ranges_over_several_chunks_arrive_whole_and_in_order_to_a_slow_reader(make_sidecar, moto_s3, bucket):
    """Ranges across chunk files (and the last, small chunk held in memory) are answered on the
    lean path; a client that reads slowly fills its socket part way through a span, and the rest
    of that span and the spans after it follow in order."""
    sc = make_sidecar(chunk_size="256KiB")
    body = os.urandom(4 * 256 * KiB + 1000)  # four chunk files and a 1000-byte chunk (memory)
    moto_s3.put_object(Bucket=bucket, Key="k", Body=body)
    s3 = sc.client()
    for _ in range(2):  # a miss, then a hit that checks every piece
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == body
    ranges = [(1000, 300000), (200000, 800000), (5, len(body) - 1), (700000, len(body) - 10), (0, len(body) - 1)]
    c = Conn(sc.url, rcvbuf=4096)
    before = fast_answers(sc)
    c.send(b"".join(get(f"/{bucket}/k", f"Range: bytes={a}-{b}") for a, b in ranges) + get(f"/{bucket}/k"))
    time.sleep(0.3)  # every answer waits on the full socket meanwhile
    for a, b in ranges:
        status, headers, got = c.response()
        assert (status, headers["content-range"], got == body[a:b + 1]) == (206, f"bytes {a}-{b}/{len(body)}", True)
    assert c.response()[::2] == (200, body)
    c.close()
    assert fast_answers(sc) - before == len(ranges) + 1


def test_fast_path_off_answers_the_same(make_sidecar, moto_s3, bucket):
    body = os.urandom(10 * KiB)
    moto_s3.put_object(Bucket=bucket, Key="k", Body=body, Metadata={"x": "y"})
    answers = []
    for fast in ("true", "false"):
        sc = make_sidecar(fast_path=fast)
        sc.client().get_object(Bucket=bucket, Key="k")["Body"].read()
        # a HEAD's checksums are the upstream HEAD's own: learned once, by the face
        sc.client().head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
        c = Conn(sc.url)
        got = []
        for req in (get(f"/{bucket}/k"), get(f"/{bucket}/k", "Range: bytes=5-"),
                    get(f"/{bucket}/k", "x-amz-checksum-mode: ENABLED", method="HEAD")):
            c.send(req)
            status, headers, data = c.response(head_only=req.startswith(b"HEAD"))
            headers.pop("date"), headers.pop("x-amz-request-id")
            got.append((status, headers, data))
        c.close()
        answers.append((got, fast_answers(sc)))
    assert answers[0][0] == answers[1][0]
    assert answers[0][1] == 3 and answers[1][1] == 0


# --- the head parser ---------------------------------------------------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
_path = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/-_.%~", max_size=40).map(lambda p: "/" + p)


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]), path=_path,
       headers=st.dictionaries(_token, _value, max_size=8))
def test_parse_head_reads_well_formed_requests(method, path, headers):
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    req = parse_head(head.encode())
    if "connection" in headers or "content-length" in headers or "transfer-encoding" in headers \
            or "upgrade" in headers:
        return  # framing headers: whatever the parser makes of them, the fast path hands these off
    assert req is not None
    assert (req.method, req.raw_path, req.headers) == (method, path, {k: v.strip() for k, v in headers.items()})


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_parse_head_refuses_what_it_cannot_read_exactly(data):
    head = data + b"\r\n\r\n"
    req = parse_head(head)  # never raises
    if req is not None:
        assert head.isascii() and head.count(b"\n") == head.count(b"\r\n")
        assert req.method in ("GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE") \
            or req.method.isalpha()


def test_parse_head_hands_off_the_unusual():
    ok = b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n"
    assert parse_head(ok) is not None
    for bad in (b"GET /b/k HTTP/1.0\r\nHost: x\r\n\r\n",  # HTTP/1.0: aiohttp's keep-alive rules
                b"GET /b/k HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",  # a header twice
                b"GET /b/k HTTP/1.1\nHost: x\n\n\r\n\r\n",  # bare LF
                b"GET /b/k HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n",  # obsolete folding
                "GET /b/\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),  # raw non-ASCII target
                b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\nGET /b/k HTTP/1.1\r\n\r\n",  # two requests
                b"GARBAGE\r\n\r\n"):
        assert parse_head(bad) is None, bad


def test_signed_hits_take_the_fast_path_and_bad_signatures_are_refused_once(make_sidecar, moto_s3, bucket, tmp_path):
    import boto3
    from botocore.config import Config

    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "AKIDFAST").write_text("fast-secret")
    sc = make_sidecar(auth="sigv4", auth_keys_dir=keys)
    body = os.urandom(6 * KiB)
    moto_s3.put_object(Bucket=bucket, Key="k", Body=body)

    def client(secret):
        return boto3.client("s3", endpoint_url=sc.url, aws_access_key_id="AKIDFAST", aws_secret_access_key=secret,
                            region_name="us-east-1", config=Config(retries={"max_attempts": 1},
                                                                   s3={"addressing_style": "path"}))

    good = client("fast-secret")
    assert good.get_object(Bucket=bucket, Key="k")["Body"].read() == body  # a miss
    before = fast_answers(sc)
    assert good.get_object(Bucket=bucket, Key="k", Range="bytes=1-5")["Body"].read() == body[1:6]
    assert fast_answers(sc) == before + 1
    import botocore.exceptions

    with pytest.raises(botocore.exceptions.ClientError) as e:
        client("wrong").get_object(Bucket=bucket, Key="k")
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    text = sc.metrics_text()
    assert 'sidecar_auth_rejections_total{code="SignatureDoesNotMatch"} 1.0' in text
    assert fast_answers(sc) == before + 1


def _reload(sc) -> None:
    req = urllib.request.Request(sc.admin_url + "/reload", method="POST", data=b"{}",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read())["changed"] == ["rules"]


def test_a_head_sent_again_is_answered_from_its_plan_while_the_version_holds(make_sidecar, moto_s3, bucket,
                                                                              tmp_path):
    """A client that does not sign sends the very same head again and again: the lean path answers
    it from what it resolved the first time, but never past the object's TTL, a write through the
    sidecar, or a reload of the rules."""
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(yaml.safe_dump({"rules": [{"bucket": bucket, "prefix": "live/", "metadata_ttl": 0.5}]}))
    sc = make_sidecar(config=str(cfg), chunk_size="256KiB", metadata_ttl="indefinite")
    s3 = sc.client()
    for key in ("live/x", "w", "static"):
        moto_s3.put_object(Bucket=bucket, Key=key, Body=b"one")
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"one"
    c = Conn(sc.url)
    heads = {key: get(f"/{bucket}/{key}") for key in ("live/x", "w", "static")}

    def read(key: str) -> bytes:
        c.send(heads[key])
        status, _, body = c.response()
        assert status == 200
        return body

    before = fast_answers(sc)
    for _ in range(5):
        assert [read(k) for k in heads] == [b"one"] * 3
    assert fast_answers(sc) - before == 15
    # a write through the sidecar: the same head now gets the new bytes
    s3.put_object(Bucket=bucket, Key="w", Body=b"two")
    assert read("w") == b"two"
    # the same request signed afresh (auth is off: signatures change nothing) uses the same answer
    before = fast_answers(sc)
    for i in range(3):
        c.send(get(f"/{bucket}/w", f"X-Amz-Date: 20261205T00000{i}Z", f"Authorization: AWS4-HMAC-SHA256 sig={i}"))
        assert c.response()[::2] == (200, b"two")
    assert fast_answers(sc) - before == 3
    # but a header that makes it uncacheable goes to the face (and the upstream)
    c.send(get(f"/{bucket}/w", "x-amz-expected-bucket-owner: 111122223333"))
    c.response()
    assert fast_answers(sc) - before == 3
    # behind the sidecar's back: seen once the TTL (0.5 s) has passed, not before it
    moto_s3.put_object(Bucket=bucket, Key="live/x", Body=b"two")
    moto_s3.put_object(Bucket=bucket, Key="static", Body=b"two")
    assert read("live/x") == b"one"
    time.sleep(0.7)
    assert read("live/x") == b"two"
    assert read("static") == b"one", "the default TTL here is indefinite"
    # a reload that gives every object a short TTL applies to heads answered before it
    cfg.write_text(yaml.safe_dump({"rules": [{"bucket": bucket, "prefix": "", "metadata_ttl": 0.2}]}))
    _reload(sc)
    time.sleep(0.4)
    assert read("static") == b"two"
    c.close()


def test_a_burst_of_hits_answered_in_one_turn_is_recorded_hit_by_hit(make_sidecar, moto_s3, bucket):
    """Answers the lean path sends together are recorded after the loop's turn (the hit
    journal): each keeps its own request id, access-log line, count and read."""
    sc = make_sidecar(chunk_size="64KiB", ram_cache_size="1MiB")
    body = os.urandom(3 * KiB)
    moto_s3.put_object(Bucket=bucket, Key="burst", Body=body)
    assert sc.client().get_object(Bucket=bucket, Key="burst")["Body"].read() == body
    before = fast_answers(sc)
    c = Conn(sc.url)
    c.send(get(f"/{bucket}/burst") * 20 + get(f"/{bucket}/burst", "Range: bytes=5-9") * 3
           + get(f"/{bucket}/burst", method="HEAD") * 2)  # one send: answered in one turn
    rids = []
    for i in range(25):
        status, headers, got = c.response(head_only=i >= 23)
        assert (status, got) == ((200, body) if i < 20 else (206, body[5:10]) if i < 23 else (200, b""))
        rids.append(headers["x-amz-request-id"])
    c.close()
    assert len(set(rids)) == 25
    assert fast_answers(sc) == before + 25
    hot = {o["key"]: o["hotness"] for o in sc.admin("/hot?n=5")["objects"]}
    assert hot["burst"] > 23.5  # the first read and 23 GETs (HEADs read nothing)
    sc.stop()
    lines = {e["request_id"]: e for e in sc.log_events() if e.get("event") == "request"}
    assert set(rids) <= set(lines)
    assert [lines[r]["outcome"] for r in rids] == ["hit"] * 25
    assert [lines[r]["bytes"] for r in rids] == [len(body)] * 20 + [5] * 3 + [0] * 2
    assert [lines[r]["operation"] for r in rids] == ["GetObject"] * 23 + ["HeadObject"] * 2


def test_the_policy_hears_of_memory_hits_answered_on_the_lean_path(make_sidecar, moto_s3, bucket):
    """A RAM-tier hit's reference reaches the eviction policy after the loop's turn (the hit
    journal): under plain LRU-2, the object read again from memory outlives the others."""
    sc = make_sidecar(chunk_size="64KiB", cache_size="192KiB", ram_cache_size="1MiB", lru_k_admission="off",
                      lru_k_correlated_period=0)
    s3 = sc.client()
    blobs = {k: os.urandom(60 * KiB) for k in ("a", "b", "c", "d")}
    for k, v in blobs.items():
        moto_s3.put_object(Bucket=bucket, Key=k, Body=v)
    for k in ("a", "b", "c"):  # misses
        assert s3.get_object(Bucket=bucket, Key=k)["Body"].read() == blobs[k]
    c = Conn(sc.url)
    before = fast_answers(sc)
    for k in ("a", "b", "c", "a"):  # hits: from the chunk files into memory, then "a" from memory
        c.send(get(f"/{bucket}/{k}"))
        assert c.response()[::2] == (200, blobs[k])
    assert fast_answers(sc) == before + 4
    time.sleep(0.2)
    assert s3.get_object(Bucket=bucket, Key="d")["Body"].read() == blobs["d"]  # one of a, b, c must go
    before = fast_answers(sc)
    c.send(get(f"/{bucket}/a"))
    assert c.response()[::2] == (200, blobs["a"])
    assert fast_answers(sc) == before + 1  # still cached: answered on the lean path
    c.send(get(f"/{bucket}/b"))  # the oldest second-last read: evicted, so aiohttp's (a miss)
    assert c.response()[::2] == (200, blobs["b"])
    assert fast_answers(sc) == before + 1
    c.close()



def test_a_small_chunk_sent_from_its_file_once_is_read_from_memory_after(make_sidecar, moto_s3, bucket):
    """A chunk small enough for the RAM tier, whose file's pieces are known good (the scrub read
    it), is read whole into memory by its first hit, not sent from its file hit after hit:
    later hits are memory hits, counted as such."""
    sc = make_sidecar(scrub_rate="64MiB")
    body = os.urandom(4 * KiB)
    moto_s3.put_object(Bucket=bucket, Key="small", Body=body)
    assert sc.client().get_object(Bucket=bucket, Key="small")["Body"].read() == body  # the miss
    assert wait_until(lambda: metric(sc, "sidecar_cache_scrubbed_bytes_total") >= len(body))
    c = Conn(sc.url)
    ram_hits = metric(sc, "sidecar_cache_ram_hits_total")
    for _ in range(3):
        c.send(get(f"/{bucket}/small"))
        assert c.response()[::2] == (200, body)
    c.close()
    assert metric(sc, "sidecar_cache_ram_hits_total") == ram_hits + 2  # the 2nd and 3rd hit


def _range_answers(sc, heads: list[bytes]) -> tuple[list[tuple[int, dict, bytes]], list[bool]]:
    """Each head's answer (but its request id and date), and whether the lean path gave it."""
    c = Conn(sc.url)
    got, lean = [], []
    for head in heads:
        before = fast_answers(sc)
        c.send(head)
        status, headers, data = c.response()
        headers.pop("date"), headers.pop("x-amz-request-id")
        got.append((status, headers, re.sub(rb"<RequestId>\w+</RequestId>", b"", data)))
        lean.append(fast_answers(sc) > before)
    c.close()
    return got, lean


def test_new_ranges_of_a_head_seen_before_answer_as_the_face_does(make_sidecar, moto_s3, bucket):
    """A columnar reader sends the same head with a new range each time: the lean path answers
    such a head from the object's plan with the new numbers (no parse), and every answer, the
    odd ranges it leaves to the full parse or the face included, is the face's byte for byte."""
    body = os.urandom(4 * 256 * KiB + 1000)
    moto_s3.put_object(Bucket=bucket, Key="k", Body=body)
    n = len(body)
    specs = ["bytes=0-99",  # the first: parsed in full, and its shape remembered
             "bytes=1000-300000", "bytes=262144-262144", "bytes=5-2000000", f"bytes={n - 1}-{n - 1}",
             f"bytes={n}-{n + 5}", "bytes=10-5", "bytes=100-", "bytes=-100", "bytes=1-2,4-5",
             "bytes=0001-0009", f"bytes=1-{'9' * 19}", f"bytes={'9' * 19}-{'9' * 20}", "bytes=1-2 ",
             "bytes=7-700000"]
    heads = [get(f"/{bucket}/k", f"Range: {spec}", "User-Agent: columnar/1.0") for spec in specs]
    heads += [get(f"/{bucket}/k", "range: bytes=3-4", "User-Agent: columnar/1.0"),
              get(f"/{bucket}/k", "Range: bytes=3-4")]
    answers = []
    for fast in ("true", "false"):
        sc = make_sidecar(fast_path=fast, chunk_size="256KiB")
        s3 = sc.client()
        for _ in range(2):  # a miss, then a hit that checks every piece
            assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == body
        answers += _range_answers(sc, heads)
    lean, by_lean, face, by_face = answers
    statuses = [206, 206, 206, 206, 206, 416, 200, 206, 206, 200, 206, 206, 416, 206, 206, 206, 206]
    assert [a[0] for a in lean] == statuses
    assert lean[1][2] == body[1000:300001] and lean[3][1]["content-range"] == f"bytes 5-{n - 1}/{n}"
    assert lean == face
    assert by_lean == [status != 416 for status in statuses], "all but the 416s on the lean path"
    assert not any(by_face)


def test_a_new_range_of_a_known_shape_never_serves_a_changed_chunk_file(make_sidecar, moto_s3, bucket, tmp_path):
    """The ranged hit that skips the parse still opens the chunk file only if it is the file
    whose pieces were checked (inode, size, mtime, ctime): a byte flipped in place since is
    found by the check and the chunk fetched again, and an object overwritten through the
    sidecar answers the same head shape with its new bytes."""
    body = os.urandom(2 * 256 * KiB)
    moto_s3.put_object(Bucket=bucket, Key="k", Body=body)
    sc = make_sidecar(cache_dir=tmp_path / "c", chunk_size="256KiB", ram_cache_size=0)
    s3 = sc.client()
    for _ in range(2):
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == body
    c = Conn(sc.url)

    def read(a: int, b: int) -> bytes:
        c.send(get(f"/{bucket}/k", f"Range: bytes={a}-{b}"))
        status, _, data = c.response()
        assert status == 206
        return data

    assert read(0, 9) == body[:10]  # the shape, parsed in full
    assert read(100, 199) == body[100:200]
    (first,) = [p for p in (tmp_path / "c" / "v2").glob("??/*.0.*")]  # chunk 0's file
    time.sleep(0.05)  # a later mtime
    with open(first, "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0x01]))
    crc_before = sc.admin("/stats")["cache"]["crc_failures"]
    assert read(4990, 5010) == body[4990:5011]
    assert sc.admin("/stats")["cache"]["crc_failures"] == crc_before + 1
    new = os.urandom(len(body))
    s3.put_object(Bucket=bucket, Key="k", Body=new)
    assert read(300, 399) == new[300:400]
    c.close()


def test_signed_ranged_reads_share_a_shape_and_odd_signing_headers_are_parsed(make_sidecar, moto_s3, bucket):
    """With signature checks off, an SDK's heads differ from read to read only in the range and
    the signing headers: they share one shape, and every read is a lean hit. A head whose
    signing header is sent twice, or holds a control byte, matches no shape: it is parsed,
    and what the parser refuses is the face's to answer."""
    body = os.urandom(3 * 256 * KiB)
    moto_s3.put_object(Bucket=bucket, Key="k", Body=body)
    sc = make_sidecar(chunk_size="256KiB")
    s3 = sc.client()
    for _ in range(2):
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == body
    before = fast_answers(sc)
    spans = [(i * 9973, i * 9973 + 4095) for i in range(1, 40)]
    for a, b in spans:
        assert s3.get_object(Bucket=bucket, Key="k", Range=f"bytes={a}-{b}")["Body"].read() == body[a:b + 1]
    assert fast_answers(sc) - before == len(spans)
    signed = ["X-Amz-Date: 20261206T000000Z", "Authorization: AWS4-HMAC-SHA256 Credential=x/y, Signature=0"]
    odd = [["X-Amz-Date: 20261206T000001Z", "Authorization: AWS4-HMAC-SHA256 Credential=x/y, Signature=1",
            "Authorization: AWS4-HMAC-SHA256 Credential=x/y, Signature=2"],  # twice
           ["X-Amz-Date: 20261206T00\x010002Z", "Authorization: AWS4-HMAC-SHA256 Credential=x/y, Signature=3"]]
    # a pod's session credentials: a long token in every head (the shape leaves it out)
    token = [f"X-Amz-Security-Token: {'T' * 1500}{i}" for i in range(2)]
    heads = [get(f"/{bucket}/k", "Range: bytes=0-9", *signed), get(f"/{bucket}/k", "Range: bytes=10-19", *signed),
             get(f"/{bucket}/k", "Range: bytes=30-39", *signed, token[0]),
             get(f"/{bucket}/k", "Range: bytes=40-49", *signed, token[1])]
    heads += [get(f"/{bucket}/k", "Range: bytes=20-29", *o) for o in odd]  # (a 400 closes the connection: last)
    answers, lean = _range_answers(sc, heads)
    assert [(a[0], a[2]) for a in answers[:4]] == [(206, body[:10]), (206, body[10:20]), (206, body[30:40]),
                                                   (206, body[40:50])]
    assert lean == [True, True, True, True, False, False]
    assert answers[4][0] == 206 and answers[4][2] == body[20:30], "the face reads a repeated header as aiohttp does"
    assert answers[5][0] == 400, "a control byte in a header value is not HTTP"


def test_ranged_hits_of_a_known_shape_are_logged_and_counted_as_the_face_does(make_sidecar, moto_s3, bucket):
    """A columnar reader's ranges within one chunk file are answered with no plan of their own
    (the shape lane): each still gets the face's request-log line (a key with quotes, a percent
    sign and non-ASCII letters escaped the same way), its count, its hotness and its bytes."""
    key = 'odd "key" %d ü/x'
    body = os.urandom(3 * 256 * KiB)
    moto_s3.put_object(Bucket=bucket, Key=key, Body=body)
    spans = [(0, 99), (1000, 5000), (262144, 300000), (600000, 786431), (7, 7)]
    heads = [get(f"/{bucket}/{urllib.parse.quote(key)}", f"Range: bytes={a}-{b}", "User-Agent: columnar/1.0")
             for a, b in spans]
    fields = ("method", "operation", "bucket", "key", "range", "status", "outcome", "bytes", "bytes_cache",
              "bytes_upstream", "bytes_tier")
    logged, hot = {}, {}
    for fast in ("true", "false"):
        sc = make_sidecar(fast_path=fast, chunk_size="256KiB", ram_cache_size=0)
        s3 = sc.client()
        for _ in range(2):  # a miss, then a hit that checks every piece
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
        before = fast_answers(sc)
        answers, _ = _range_answers(sc, heads)
        assert [(status, data) for status, _, data in answers] == [(206, body[a:b + 1]) for a, b in spans]
        assert fast_answers(sc) - before == (len(spans) if fast == "true" else 0)
        hot[fast] = next(o["hotness"] for o in sc.admin("/hot?n=5")["objects"] if o["key"] == key)
        sc.stop()
        lines = [e for e in sc.log_events() if e.get("event") == "request" and e.get("range")]
        logged[fast] = [{f: e[f] for f in fields} for e in lines[-len(spans):]]
    assert logged["true"] == logged["false"]
    assert [e["range"] for e in logged["true"]] == [f"bytes={a}-{b}" for a, b in spans]
    assert hot["true"] == pytest.approx(hot["false"], rel=0.01)


def test_ranges_in_one_chunk_file_to_a_slow_reader_arrive_whole_in_order_and_logged(make_sidecar, moto_s3, bucket):
    """Ranges within one chunk file, of a known shape, pipelined by a client that reads slowly:
    the lane sends the head and what the socket takes, a task sends the rest, and the ranges
    after it wait their turn; each answer is whole, in order, and logged as a hit with its bytes."""
    sc = make_sidecar(ram_cache_size=0)  # 4 MiB chunks: a few ranges are more than a socket's buffer
    mib = 1024 * KiB
    body = os.urandom(12 * mib)
    moto_s3.put_object(Bucket=bucket, Key="k", Body=body)
    s3 = sc.client()
    for _ in range(2):  # a miss, then a hit that checks every piece
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == body
    c = Conn(sc.url)
    c.send(get(f"/{bucket}/k", "Range: bytes=0-9"))  # the shape, parsed in full
    assert c.response()[::2] == (206, body[:10])
    c.close()
    ranges = [(4 * mib + 7, 8 * mib - 1), (1, 4000000), (8 * mib, 12 * mib - 1000), (5000000, 5000000),
              (10, 4 * mib - 1)]
    c = Conn(sc.url, rcvbuf=4096)
    before = fast_answers(sc)
    c.send(b"".join(get(f"/{bucket}/k", f"Range: bytes={a}-{b}") for a, b in ranges))
    time.sleep(0.3)  # the first answer waits on the full socket meanwhile
    rids = []
    for a, b in ranges:
        status, headers, got = c.response()
        assert (status, headers["content-range"], got == body[a:b + 1]) == (206, f"bytes {a}-{b}/{len(body)}", True)
        rids.append(headers["x-amz-request-id"])
    c.close()
    assert fast_answers(sc) - before == len(ranges)
    sc.stop()
    lines = {e["request_id"]: e for e in sc.log_events() if e.get("event") == "request"}
    assert [(lines[r]["status"], lines[r]["outcome"], lines[r]["bytes"], lines[r]["range"]) for r in rids] == \
        [(206, "hit", b - a + 1, f"bytes={a}-{b}") for a, b in ranges]


def _open_chunk_files(sc, cache_dir) -> list[str]:
    """The chunk files the sidecar process holds open (as /proc shows them)."""
    fds = f"/proc/{sc.proc.pid}/fd"
    links = []
    for fd in os.listdir(fds):
        try:
            links.append(os.readlink(f"{fds}/{fd}"))
        except OSError:
            pass
    chunks, temp = f"{cache_dir}/v2/", f"{cache_dir}/v2/tmp/"
    return sorted(t for t in links if t.startswith(chunks) and not t.startswith(temp))


def test_chunk_files_kept_open_for_hits_are_closed_when_their_chunks_go(make_sidecar, moto_s3, bucket, tmp_path):
    """The lean path keeps the chunk files of recent hits open (an open and a close cost more
    than a small range's send). A chunk the index drops — its object overwritten, or evicted
    for room — has its file closed, so no deleted file holds disk space the budget no longer
    counts, and a file put in place of a kept one is the one read after."""
    cache = tmp_path / "c"
    sc = make_sidecar(cache_dir=cache, chunk_size="256KiB", ram_cache_size=0, cache_size="2MiB")
    s3 = sc.client()
    body = os.urandom(4 * 256 * KiB)
    moto_s3.put_object(Bucket=bucket, Key="k", Body=body)
    for _ in range(2):
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == body
    c = Conn(sc.url)

    def read(key: str, a: int, b: int) -> bytes:
        c.send(get(f"/{bucket}/{key}", f"Range: bytes={a}-{b}"))
        status, _, data = c.response()
        assert status == 206
        return data

    for i in range(4):
        assert read("k", i * 256 * KiB + 7, i * 256 * KiB + 99) == body[i * 256 * KiB + 7:i * 256 * KiB + 100]
    kept = _open_chunk_files(sc, cache)
    assert len(kept) == 4 and not any(t.endswith("(deleted)") for t in kept), kept
    new = os.urandom(len(body))
    s3.put_object(Bucket=bucket, Key="k", Body=new)  # through the sidecar: the old version's files go
    assert _open_chunk_files(sc, cache) == []
    for _ in range(2):
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == new
    assert read("k", 5, 9) == new[5:10]
    other = os.urandom(6 * 256 * KiB)  # with k, more than the 2 MiB budget: k's chunks are evicted
    moto_s3.put_object(Bucket=bucket, Key="other", Body=other)
    for _ in range(2):
        assert s3.get_object(Bucket=bucket, Key="other")["Body"].read() == other
    assert not any(t.endswith("(deleted)") for t in _open_chunk_files(sc, cache))
    assert read("k", 5, 9) == new[5:10]
    c.close()
