"""S3's ``aws-chunked`` content encoding: a streaming decoder for the framings clients send, and an
encoder to the unsigned-with-trailers framing, whose encoded length is known before the body is.

Wire format (all framings)::

    <hex size>[;chunk-signature=<sig>]\\r\\n <size bytes> \\r\\n      (repeated)
    0[;chunk-signature=<sig>]\\r\\n
    [<trailer name>:<value>\\r\\n ...]                           (zero or more trailers)
    \\r\\n

The decoder is sans-IO (``feed`` bytes, get payload pieces) with an async wrapper (``stream``).
It never holds more than one chunk-header or trailer line, whatever the chunk sizes. Framing
errors raise ``S3Error`` with the codes S3 answers: ``IncompleteBody`` for any malformed or short
framing, ``MalformedTrailerError`` for trailers that are malformed or not the declared ones.

Depends on nothing in the project but the error type.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence

from sidecar.errors import S3Error

STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_ECDSA = "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"
STREAMING_ECDSA_TRAILER = "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER"
SIGNED_MODES = frozenset({STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_ECDSA, STREAMING_ECDSA_TRAILER})
TRAILER_MODES = frozenset({STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER, STREAMING_ECDSA_TRAILER})
STREAMING_MODES = SIGNED_MODES | TRAILER_MODES

TRAILER_SIGNATURE = "x-amz-trailer-signature"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# Length of a well-formed base64 value of each checksum trailer S3 accepts.
CHECKSUM_VALUE_LENGTHS = {
    "x-amz-checksum-crc32": 8,
    "x-amz-checksum-crc32c": 8,
    "x-amz-checksum-crc64nvme": 12,
    "x-amz-checksum-sha1": 28,
    "x-amz-checksum-sha256": 44,
}

DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_LINE = 4096  # a chunk header is ~90 bytes (HMAC) or ~170 (ECDSA); trailers are shorter still
MAX_TRAILERS = 16

_HEX_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_SIGNATURE = re.compile(r"[0-9A-Fa-f]{1,512}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

# Signature hook: (chunk signature or None, hex SHA-256 of the chunk's payload). Raise to reject.
ChunkCheck = Callable[[str | None, str], None]
# Trailer hook: (trailers without the signature, x-amz-trailer-signature or None). Raise to reject.
TrailerCheck = Callable[[list[tuple[str, str]], str | None], None]


def incomplete_body(detail: str) -> S3Error:
    return S3Error("IncompleteBody", f"The request body terminated unexpectedly: {detail}.")


def malformed_trailer(detail: str) -> S3Error:
    return S3Error(
        "MalformedTrailerError",
        "The request contained trailing data that was not well-formed or did not conform to our "
        f"published schema: {detail}.", status=400)


def canonical_trailers(trailers: Iterable[tuple[str, str]]) -> bytes:
    """The trailer block as hashed into the AWS4-HMAC-SHA256-TRAILER string to sign."""
    return b"".join(f"{name}:{value}\n".encode() for name, value in trailers)


def is_aws_chunked(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether a request body with these (lower-case) headers is aws-chunked framed."""
    for name, value in headers:
        if name == "x-amz-content-sha256" and value.strip().startswith("STREAMING-"):
            return True
        if name == "content-encoding" and "aws-chunked" in _tokens(value):
            return True
    return False


def strip_aws_chunked(content_encoding: str | None) -> str | None:
    """Content-Encoding with the ``aws-chunked`` token removed; None when nothing is left."""
    if content_encoding is None:
        return None
    rest = [t for t in (p.strip() for p in content_encoding.split(",")) if t and t.lower() != "aws-chunked"]
    return ",".join(rest) or None


def _tokens(value: str) -> list[str]:
    return [t.strip().lower() for t in value.split(",") if t.strip()]


class AwsChunkedDecoder:
    """Incremental aws-chunked parser: ``feed`` raw bytes, get payload bytes; ``close`` at the end.

    ``decoded_length``: the ``x-amz-decoded-content-length``; the payload must add up to it exactly.
    ``signed``: True requires a ``chunk-signature`` on every chunk; otherwise they are optional.
    ``trailer_names``: the names ``x-amz-trailer`` declared; the trailer section must carry exactly
    these (plus ``x-amz-trailer-signature`` when ``signed``). None accepts any trailers.
    ``on_chunk`` is called at the end of each chunk, the final empty one included, with its
    signature and the SHA-256 of its payload (hashing only happens when a hook is given);
    ``on_trailers`` once with the trailers and the trailer signature, when the body has a trailer
    section (trailers declared or present). Both exist for streaming
    SigV4 verification, which needs the seed signature and keys this module knows nothing of.
    After ``close``, ``trailers`` holds the trailing headers (lower-case names, in order).
    """

    _HEADER, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)

    def __init__(self, decoded_length: int | None = None, *, signed: bool | None = None,
                 trailer_names: Sequence[str] | None = None, on_chunk: ChunkCheck | None = None,
                 on_trailers: TrailerCheck | None = None, max_line: int = MAX_LINE) -> None:
        if decoded_length is not None and decoded_length < 0:
            raise incomplete_body("negative decoded length")
        self.decoded_length = decoded_length
        self.signed = signed
        self.trailer_names = None if trailer_names is None else [n.lower() for n in trailer_names]
        self.on_chunk = on_chunk
        self.on_trailers = on_trailers
        self.max_line = max_line
        self.trailers: list[tuple[str, str]] = []
        self.trailer_signature: str | None = None
        self.chunk_count = 0
        self.decoded = 0  # payload bytes produced so far
        self.last_signature: str | None = None
        self._state = self._HEADER
        self._line = bytearray()
        self._left = 0
        self._signature: str | None = None
        self._hash = None

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, str]], **kw) -> "AwsChunkedDecoder":
        """A decoder configured from a request's lower-case headers (the content-sha256 mode,
        ``x-amz-decoded-content-length`` and ``x-amz-trailer``)."""
        mode = ""
        decoded: int | None = None
        trailer: list[str] = []
        for name, value in headers:
            if name == "x-amz-content-sha256":
                mode = value.strip()
            elif name == "x-amz-decoded-content-length":
                v = value.strip()
                if not v.isdigit():
                    raise S3Error("InvalidArgument", "x-amz-decoded-content-length is not a number",
                                  ArgumentName="x-amz-decoded-content-length", ArgumentValue=value)
                decoded = int(v)
            elif name == "x-amz-trailer":
                trailer += _tokens(value)
        signed = True if mode in SIGNED_MODES else (False if mode == STREAMING_UNSIGNED_TRAILER else None)
        if mode.startswith("STREAMING-") and mode not in STREAMING_MODES:
            raise S3Error("InvalidArgument", f"Unsupported x-amz-content-sha256 value {mode}",
                          ArgumentName="x-amz-content-sha256", ArgumentValue=mode)
        return cls(decoded, signed=signed, trailer_names=trailer, **kw)

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    def feed(self, data: bytes) -> list[bytes]:
        """Consume raw body bytes; returns the payload bytes they complete (possibly none).
        Each returned piece lies within one chunk."""
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n:
            state = self._state
            if state == self._DATA:
                take = min(self._left, n - pos)
                piece = data[pos:pos + take]
                pos += take
                self._left -= take
                self.decoded += take
                if self._hash is not None:
                    self._hash.update(piece)
                out.append(piece)
                if self._left == 0:
                    self._state = self._DATA_CRLF
            elif state == self._DATA_CRLF:
                need = 2 - len(self._line)
                self._line += data[pos:pos + need]
                pos += min(need, n - pos)
                if not b"\r\n".startswith(self._line):
                    raise incomplete_body("chunk data is not followed by CRLF")
                if len(self._line) == 2:
                    self._line.clear()
                    self._end_chunk()
                    self._state = self._HEADER
            elif state == self._DONE:
                raise incomplete_body("bytes after the final chunk")
            else:  # a line: chunk header or trailer
                nl = data.find(b"\n", pos, min(n, pos + self.max_line + 2 - len(self._line)))
                if nl < 0:
                    self._line += data[pos:pos + self.max_line + 2]
                    pos = n
                    if len(self._line) > self.max_line + 1:
                        raise self._line_error("line too long")
                    continue
                self._line += data[pos:nl + 1]
                pos = nl + 1
                line = bytes(self._line)
                self._line.clear()
                if not line.endswith(b"\r\n"):
                    raise self._line_error("line does not end with CRLF")
                if state == self._HEADER:
                    self._chunk_header(line[:-2])
                else:
                    self._trailer_line(line[:-2])
        return out

    def close(self) -> None:
        """The raw body ended: raise unless the framing ended properly."""
        if self._state != self._DONE:
            where = {self._HEADER: "in a chunk header", self._DATA: "inside a chunk",
                     self._DATA_CRLF: "before a chunk's CRLF", self._TRAILER: "in the trailer section"}
            raise incomplete_body("body ended " + where[self._state])

    async def stream(self, source: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """Payload bytes of an aws-chunked body, as they arrive. Raises S3Error on bad framing
        or a rejected signature; trailers are in ``self.trailers`` once the iterator ends.

        The latest piece is held back until the next one or the proper end of the body: whoever
        forwards the payload never gets all of it from a body whose last chunk, final chunk or
        trailers fail (an upstream would commit a payload it received whole)."""
        held: bytes | None = None
        async for data in source:
            for piece in self.feed(data):
                if held is not None:
                    yield held
                held = piece
        self.close()
        if held is not None:
            yield held

    # --- internals ---------------------------------------------------------------------------

    def _line_error(self, detail: str) -> S3Error:
        if self._state == self._TRAILER:
            return malformed_trailer(detail)
        return incomplete_body("chunk header " + detail)

    def _chunk_header(self, line: bytes) -> None:
        size_part, _, ext = line.partition(b";")
        if not _HEX_SIZE.fullmatch(size_part):
            raise incomplete_body("chunk size is not hexadecimal")
        size = int(size_part, 16)
        signature = None
        if ext:
            try:
                text = ext.decode("ascii")
            except UnicodeDecodeError:
                raise incomplete_body("chunk extension is not ASCII") from None
            for item in text.split(";"):
                name, eq, value = item.strip().partition("=")
                if name == "chunk-signature":
                    if not eq or not _SIGNATURE.fullmatch(value):
                        raise incomplete_body("malformed chunk-signature")
                    signature = value
        if self.signed and signature is None:
            raise incomplete_body("chunk without chunk-signature in a signed stream")
        if self.decoded_length is not None and self.decoded + size > self.decoded_length:
            raise incomplete_body("chunks exceed x-amz-decoded-content-length")
        self.chunk_count += 1
        self._signature = signature
        self._hash = hashlib.sha256() if self.on_chunk is not None else None
        if size == 0:
            self._end_chunk()
            self._state = self._TRAILER
        else:
            self._left = size
            self._state = self._DATA

    def _end_chunk(self) -> None:
        if self.on_chunk is not None:
            digest = self._hash.hexdigest() if self._hash is not None else EMPTY_SHA256
            self.on_chunk(self._signature, digest)
        self.last_signature = self._signature
        self._hash = None

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self._finish()
            return
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise malformed_trailer("trailer is not ASCII") from None
        name, colon, value = text.partition(":")
        name = name.strip().lower()
        if not colon or not _TOKEN.fullmatch(name):
            raise malformed_trailer("trailer is not name:value")
        value = value.strip()
        if name == TRAILER_SIGNATURE:
            if self.trailer_signature is not None or not _SIGNATURE.fullmatch(value):
                raise malformed_trailer("bad x-amz-trailer-signature")
            self.trailer_signature = value
            return
        if len(self.trailers) >= MAX_TRAILERS or any(n == name for n, _ in self.trailers):
            raise malformed_trailer("too many or repeated trailers")
        self.trailers.append((name, value))

    def _finish(self) -> None:
        if self.decoded_length is not None and self.decoded != self.decoded_length:
            raise incomplete_body(f"{self.decoded} payload bytes, {self.decoded_length} declared")
        if self.trailer_names is not None:
            got = sorted(n for n, _ in self.trailers)
            if got != sorted(self.trailer_names):
                raise malformed_trailer(f"trailers {got} do not match x-amz-trailer {sorted(self.trailer_names)}")
            if self.signed and self.trailer_names and self.trailer_signature is None:
                raise malformed_trailer("missing x-amz-trailer-signature")
        if self.on_trailers is not None and (self.trailers or self.trailer_signature or self.trailer_names):
            self.on_trailers(list(self.trailers), self.trailer_signature)
        self._state = self._DONE


def decode_bytes(body: bytes, **kw) -> tuple[bytes, list[tuple[str, str]]]:
    """Decode a whole aws-chunked body held in memory: (payload, trailers). For tests and tools."""
    dec = AwsChunkedDecoder(**kw)
    payload = b"".join(dec.feed(body))
    dec.close()
    return payload, dec.trailers


# --- encoder: unsigned aws-chunked with trailers -----------------------------------------------

def trailer_value_length(name: str) -> int:
    """Length of a well-formed value of checksum trailer ``name`` (x-amz-checksum-crc32, ...)."""
    try:
        return CHECKSUM_VALUE_LENGTHS[name.lower()]
    except KeyError:
        raise S3Error("InvalidRequest", f"The value specified in the x-amz-trailer header is not supported: {name}") from None


def _chunk_frame_length(n: int) -> int:
    return len(f"{n:x}") + 2 + n + 2


def encoded_length(decoded_length: int, trailers: Iterable[tuple[str, int]] = (), *,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Exact length of ``encode_unsigned``'s output for a payload of ``decoded_length`` bytes and
    trailers given as (name, value length) pairs, with the same ``chunk_size``."""
    if chunk_size <= 0 or decoded_length < 0:
        raise ValueError("chunk_size must be positive and decoded_length non-negative")
    full, rest = divmod(decoded_length, chunk_size)
    total = full * _chunk_frame_length(chunk_size) + (_chunk_frame_length(rest) if rest else 0)
    total += 3  # "0\r\n"
    total += sum(len(name) + 1 + value_len + 2 for name, value_len in trailers)
    return total + 2  # final "\r\n"


async def encode_unsigned(source: AsyncIterable[bytes], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                          trailers: Sequence[tuple[str, str]] | Callable[[], Sequence[tuple[str, str]]] = (),
                          decoded_length: int | None = None,
                          expected_trailers: Sequence[tuple[str, int]] | None = None) -> AsyncIterator[bytes]:
    """Frame ``source`` as ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` aws-chunked: chunks of exactly
    ``chunk_size`` bytes (the last shorter), then ``0\\r\\n``, the trailers, ``\\r\\n``.

    ``trailers`` may be a callable, called once the source is exhausted: trailer values (the
    checksum of a decoded upload) are only known then. ``decoded_length`` and
    ``expected_trailers`` (name, value length) pin what ``encoded_length`` was computed from:
    a source or trailer that differs raises S3Error instead of sending a mis-framed body.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    buf = bytearray()
    total = 0
    header = f"{chunk_size:x}\r\n".encode()
    async for data in source:
        total += len(data)
        if decoded_length is not None and total > decoded_length:
            raise incomplete_body("payload longer than x-amz-decoded-content-length")
        if not buf and len(data) >= chunk_size:
            # fast path: frame straight from the source without copying into the buffer first
            view = memoryview(data)
            whole = len(data) - len(data) % chunk_size
            for i in range(0, whole, chunk_size):
                yield b"".join((header, view[i:i + chunk_size], b"\r\n"))
            buf += view[whole:]
            continue
        buf += data
        if len(buf) >= chunk_size:
            whole = len(buf) - len(buf) % chunk_size
            view = memoryview(buf)
            frames = [b"".join((header, view[i:i + chunk_size], b"\r\n")) for i in range(0, whole, chunk_size)]
            view.release()
            del buf[:whole]
            for frame in frames:
                yield frame
    if decoded_length is not None and total != decoded_length:
        raise incomplete_body(f"{total} payload bytes, {decoded_length} declared")
    tail = [f"{len(buf):x}\r\n".encode() + bytes(buf) + b"\r\n"] if buf else []
    resolved = list(trailers() if callable(trailers) else trailers)
    if expected_trailers is not None:
        got = [(n, len(v)) for n, v in resolved]
        if got != list(expected_trailers):
            raise malformed_trailer(f"trailers {got} differ from the announced {list(expected_trailers)}")
    for name, value in resolved:
        if not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value:
            raise malformed_trailer(f"trailer {name!r} cannot be framed")
    tail.append(b"0\r\n" + b"".join(f"{n}:{v}\r\n".encode() for n, v in resolved) + b"\r\n")
    yield b"".join(tail)


# --- re-framing a streaming upload for a re-signing proxy --------------------------------------

@dataclasses.dataclass
class Reframed:
    """A streaming upload re-framed so that it can be re-signed: new headers, body and length."""

    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    content_length: int
    decoder: AwsChunkedDecoder


def reframe_unsigned(headers: Sequence[tuple[str, str]], body: AsyncIterable[bytes], *,
                     chunk_size: int = DEFAULT_CHUNK_SIZE,
                     on_chunk: ChunkCheck | None = None, on_trailers: TrailerCheck | None = None) -> Reframed:
    """Turn an aws-chunked upload (signed or not, with or without trailers) into one whose body
    needs no signature: ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` framing keeping the declared
    checksum trailers when there are any, else the bare payload as ``UNSIGNED-PAYLOAD``.

    ``headers`` are the request's lower-case headers; the returned ones replace them (same order,
    content-sha256/encoding/length headers rewritten). Chunk and trailer signatures are dropped,
    after being handed to the optional hooks. Requires ``x-amz-decoded-content-length``.
    """
    decoder = AwsChunkedDecoder.from_headers(headers, on_chunk=on_chunk, on_trailers=on_trailers)
    if decoder.decoded_length is None:
        raise S3Error("MissingContentLength", "x-amz-decoded-content-length is required for aws-chunked uploads")
    names = list(decoder.trailer_names or [])
    expected = [(n, trailer_value_length(n)) for n in names]
    out: list[tuple[str, str]] = []
    for name, value in headers:
        if name in ("content-length", "transfer-encoding", "x-amz-content-sha256"):
            continue
        if name == "content-encoding":
            value = strip_aws_chunked(value) if not names else _ensure_aws_chunked(value)
            if value is None:
                continue
        if name == "x-amz-decoded-content-length" and not names:
            continue
        out.append((name, value))
    payload = decoder.stream(body)
    if names:
        if not any(n == "content-encoding" for n, _ in out):
            out.append(("content-encoding", "aws-chunked"))
        out.append(("x-amz-content-sha256", STREAMING_UNSIGNED_TRAILER))
        length = encoded_length(decoder.decoded_length, expected, chunk_size=chunk_size)

        def ordered_trailers() -> list[tuple[str, str]]:
            got = dict(decoder.trailers)
            return [(n, got[n]) for n in names]

        new_body = encode_unsigned(payload, chunk_size=chunk_size, trailers=ordered_trailers,
                                   decoded_length=decoder.decoded_length, expected_trailers=expected)
    else:
        out.append(("x-amz-content-sha256", "UNSIGNED-PAYLOAD"))
        length = decoder.decoded_length
        new_body = payload
    out.append(("content-length", str(length)))
    return Reframed(out, new_body, length, decoder)


def _ensure_aws_chunked(value: str) -> str:
    # S3 wants aws-chunked first when it is combined with other encodings ("aws-chunked,gzip")
    rest = strip_aws_chunked(value)
    return "aws-chunked" + ("," + rest if rest else "")
