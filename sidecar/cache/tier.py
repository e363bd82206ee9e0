"""The shared tier: a second chunk cache many pods share, kept as immutable objects in any
S3-compatible bucket (S3 Express One Zone, MinIO, Ceph RGW), spoken to with aiobotocore.

One object per chunk ("block"), under a key that names exactly what it holds::

    PREFIX/<hash(format, chunk size, upstream endpoint, bucket)>/<hash(key, ETag, size)>/<chunk index>

A new version of an object has new keys, so nothing is ever invalidated or deleted by the
sidecar (a lifecycle rule on the bucket expires blocks; docs/shared-tier.md). Each block carries:

* its CRC32C, as the store's own checksum (``x-amz-checksum-crc32c``) where the store keeps one;
* a *binding* in its user metadata: (bucket, SHA-256 of the key, ETag, size, index, offset,
  length, CRC32C of the bytes, piece size and the CRC32C of each piece; block 0 also the
  checksum headers the upstream gives a whole-object GET of this version, when the writer knew
  them), itself under a CRC32C, so a block copied under another key, or whose bytes or metadata
  were altered, is refused;
* optionally an HMAC-SHA256 over the binding and the bytes under a key every pod of the job
  shares, so that whoever can write the tier bucket without the key cannot poison it.

Reads stream: the binding is checked when the block's headers arrive, and each piece is handed
out as soon as its CRC32C matches, so a client's first bytes do not wait for the whole block
(with a shared key, a block is handed out only once its HMAC over all its bytes checks out: a
CRC cannot stand against someone who forges blocks on purpose). At most ``READS_IN_FLIGHT``
blocks are read at once for clients, and ``BACKGROUND_READS_IN_FLIGHT`` more for read-ahead and
prefetch (so background reads never hold a client's read back), each asked for in the order
they are wanted.

Beside each object's blocks, one small *record* names the version of the object a pod last
resolved (``PREFIX/<namespace>/latest/<hash(key)>``: ETag and size, bound and signed like a
block's binding). It is only ever a guess: a pod's first read of an object reads the blocks of
that version while its own HEAD is out, and uses none of them unless the HEAD confirms the same
version (Reader.guess).

Reads are best effort: a block that is missing, corrupt, mis-bound, slower than the deadline,
an error, or asked for while the circuit breaker is open, is a miss (counted by cause), and the
reader falls through to the upstream; a block found corrupt part way keeps the pieces already
verified, and the upstream is asked for the rest. Writes never slow a client: blocks committed locally are
queued (bounded; dropped and counted when full) and written by background workers that wait on
the bandwidth bucket at background priority. Two pods writing the same block write the same bytes
under the same key: harmless.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import S3Error
from ..objects import ObjectMeta
from ..telemetry import Metrics, get_logger
from ..upstream.resilient import CircuitBreaker

if TYPE_CHECKING:
    from ..upstream.s3 import S3Upstream
from .chunkfile import crc32c

log = get_logger("sidecar.tier")

# v2: piece CRCs and block 0's GET checksum headers in the binding (v1 blocks are not read).
BLOCK_FORMAT = "tier-v2"
# The record of the version of an object last seen by a pod: only ever a guess (Reader.guess).
HINT_FORMAT = "tier-hint-v1"
WRITE_WORKERS = 4
READS_IN_FLIGHT = 8  # demand block reads at once per pod; more only shares the same link and store
BACKGROUND_READS_IN_FLIGHT = 4  # read-ahead and prefetch block reads, apart from demand's
MAX_PIECES = 16  # a block's piece CRCs stay well inside S3's 2 KB of user metadata
MIN_PIECE = 256 * 1024
_BINDING = "sidecar-binding"  # user metadata: the binding line
_BINDING_CRC = "sidecar-binding-crc"  # its CRC32C (hex)
_BINDING_HMAC = "sidecar-binding-hmac"  # HMAC-SHA256 of binding + bytes (hex), with a shared key


def parse_location(text: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` → (bucket, prefix without slashes at its ends)."""
    if not text.startswith("s3://"):
        raise ValueError(text)
    bucket, _, prefix = text[len("s3://"):].partition("/")
    if not bucket or "/" in bucket:
        raise ValueError(text)
    return bucket, prefix.strip("/")


def _bound_text(metadata: dict[str, str]) -> str:
    """The binding line of an object of the tier, if it matches the CRC32C stored beside it;
    else BlockRejected("corrupt") (the metadata itself was damaged)."""
    text = metadata.get(_BINDING, "")
    try:
        ok = int(metadata.get(_BINDING_CRC, ""), 16) == crc32c(text.encode())
    except ValueError:
        ok = False
    if not ok:
        raise BlockRejected("corrupt")
    return text


def _status(e: BaseException) -> int:
    """The HTTP status of a failed call (S3Error or botocore's ClientError); 0 for a transport failure."""
    if isinstance(e, S3Error):
        return e.status
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return 0
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def piece_size(length: int) -> int:
    """The bytes covered by each piece CRC of a block of ``length`` bytes (64 KiB multiples)."""
    p = max(MIN_PIECE, -(-length // MAX_PIECES))
    return -(-p // 65536) * 65536


def piece_crcs(data: bytes | memoryview, piece: int) -> list[int]:
    view = memoryview(data)
    return [crc32c(view[a:a + piece]) for a in range(0, len(view), piece)] or [crc32c(b"")]


def encode_checksums(checksums: tuple[tuple[str, str], ...]) -> str:
    """Checksum headers as one binding field (ASCII, no ``;``)."""
    return base64.urlsafe_b64encode("\n".join(f"{n}:{v}" for n, v in checksums).encode()).decode()


def decode_checksums(text: str) -> tuple[tuple[str, str], ...]:
    """The inverse of ``encode_checksums``; ValueError for anything that is not checksum headers."""
    raw = base64.urlsafe_b64decode(text.encode("ascii")).decode("ascii")
    out = []
    for line in raw.split("\n") if raw else ():
        name, sep, value = line.partition(":")
        if not sep or not name.startswith("x-amz-checksum-") or not value or not value.isprintable():
            raise ValueError(line)
        out.append((name, value))
    return tuple(out)


class BlockRejected(Exception):
    """A block found wrong while its bytes were read: ``cause`` as counted."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def _h(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:32]


class BlockNaming:
    """Block keys and bindings: pure functions of what a block holds."""

    def __init__(self, prefix: str, chunk_size: int, upstream_id: str) -> None:
        self.prefix = prefix
        self.chunk_size = chunk_size
        self.upstream_id = upstream_id

    def key(self, meta: ObjectMeta, index: int) -> str:
        space = _h(BLOCK_FORMAT, self.chunk_size, self.upstream_id, meta.bucket)
        version = _h(meta.key, meta.etag, meta.size)
        return "/".join(p for p in (self.prefix, space, version, str(index)) if p)

    def identity(self, meta: ObjectMeta, index: int, length: int) -> str:
        """The binding's first fields: what the block is, known to a reader before its bytes."""
        key_hash = hashlib.sha256(meta.key.encode("utf-8", "surrogatepass")).hexdigest()
        etag = base64.urlsafe_b64encode(meta.etag.encode()).decode()
        return (f"{BLOCK_FORMAT};b={meta.bucket};k={key_hash};e={etag};s={meta.size};i={index};"
                f"o={index * self.chunk_size};n={length}")

    def binding(self, meta: ObjectMeta, index: int, data: bytes | memoryview) -> str:
        """The line a block's metadata must carry: ASCII (user metadata is), one field each.
        Block 0 carries the GET checksum headers ``meta`` knows (none known: no ``g`` field)."""
        piece = piece_size(len(data))
        line = (f"{self.identity(meta, index, len(data))};c={crc32c(data):08x};p={piece};"
                f"q={''.join(f'{c:08x}' for c in piece_crcs(data, piece))}")
        if index == 0 and meta.get_checksums is not None:
            line += ";g=" + encode_checksums(meta.get_checksums)
        return line

    def hint_key(self, bucket: str, key: str) -> str:
        """Where the record of the version of (bucket, key) last seen lives: in the blocks'
        namespace, beside their version directories (which are hashes, never ``latest``)."""
        space = _h(BLOCK_FORMAT, self.chunk_size, self.upstream_id, bucket)
        return "/".join(p for p in (self.prefix, space, "latest", _h(key)) if p)

    @staticmethod
    def _hint_identity(bucket: str, key: str) -> str:
        key_hash = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{HINT_FORMAT};b={bucket};k={key_hash};"

    def hint_binding(self, meta: ObjectMeta) -> str:
        """The line a version record carries: the object it names and that version's ETag and size."""
        etag = base64.urlsafe_b64encode(meta.etag.encode()).decode()
        return f"{self._hint_identity(meta.bucket, meta.key)}e={etag};s={meta.size}"

    def parse_hint(self, binding: str, bucket: str, key: str) -> ObjectMeta:
        """The version a record names, if it is the record of (bucket, key); only ETag and size
        are known (no headers: the pod's own HEAD tells those). Raises BlockRejected."""
        identity = self._hint_identity(bucket, key)
        if not binding.startswith(identity):
            raise BlockRejected("misbound")
        try:
            fields = dict(f.split("=", 1) for f in binding[len(identity):].split(";"))
            if set(fields) != {"e", "s"}:
                raise ValueError(fields)
            etag = base64.urlsafe_b64decode(fields["e"].encode("ascii")).decode("ascii")
            size = int(fields["s"])
            if not etag or not etag.isprintable() or size < 0:
                raise ValueError(binding)
        except (ValueError, KeyError) as e:
            raise BlockRejected("corrupt") from e
        return ObjectMeta(bucket, key, etag, size, "", ())

    def parse(self, binding: str, meta: ObjectMeta, index: int, length: int) -> "Binding":
        """The binding's checksums if it names exactly chunk ``index`` of this version.
        Raises BlockRejected: "misbound" (another block's binding), "corrupt" (malformed)."""
        identity = self.identity(meta, index, length)
        if not binding.startswith(identity + ";"):
            raise BlockRejected("misbound")
        try:
            fields = dict(f.split("=", 1) for f in binding[len(identity) + 1:].split(";"))
            if not set(fields) <= {"c", "p", "q", "g"} or (index != 0 and "g" in fields):
                raise ValueError(fields)
            crc, piece, q = int(fields["c"], 16), int(fields["p"]), fields["q"]
            count = -(-length // piece) if length else 1
            if piece <= 0 or len(q) != 8 * count:
                raise ValueError(q)
            pieces = [int(q[i:i + 8], 16) for i in range(0, len(q), 8)]
            checksums = decode_checksums(fields["g"]) if "g" in fields else None
        except (ValueError, KeyError) as e:
            raise BlockRejected("corrupt") from e
        return Binding(crc, piece, pieces, checksums)


@dataclasses.dataclass(frozen=True, slots=True)
class Binding:
    """What a block's binding says of its bytes (and, for block 0, of the object's GET answer)."""

    crc: int
    piece: int
    pieces: list[int]
    checksums: tuple[tuple[str, str], ...] | None


class TierBlock:
    """A tier block whose headers and binding checked out; ``pieces()`` yields its bytes, each
    piece only once verified. Raises BlockRejected part way (counted). ``close`` frees the read."""

    def __init__(self, tier: "SharedTier", binding: Binding, body, release, length: int, deadline: float,
                 mac: Any, slots: asyncio.Semaphore) -> None:
        self.tier = tier
        self._slots = slots
        self.binding = binding
        self.checksums = binding.checksums
        self.length = length
        self._body = body
        self._release = release
        self._deadline = deadline
        # (HMAC under way over binding + b"\0" + bytes, the value it must reach), or None: no shared key
        self._mac, self._expected_mac = mac if mac is not None else (None, "")

    async def pieces(self) -> AsyncIterator[bytes | memoryview]:
        tier, b = self.tier, self.binding
        held: list[bytes | memoryview] = []
        whole = 0
        pos = 0
        try:
            for want in b.pieces:
                n = min(b.piece, self.length - pos)
                parts: list[bytes | memoryview] = []
                have = 0
                while have < n:
                    async with asyncio.timeout_at(self._deadline):
                        got = await self._body.read(n - have)
                    if not got:
                        raise BlockRejected("corrupt")  # shorter than its length
                    parts.append(got)
                    have += len(got)
                # (views of immutable bytes as they came: joined only when the piece came in parts)
                piece = parts[0] if len(parts) == 1 else b"".join(parts)
                if crc32c(piece) != want:
                    raise BlockRejected("corrupt")
                whole = crc32c(piece, whole)
                pos += n
                if self._mac is not None:
                    self._mac.update(piece)
                    held.append(piece)
                    continue
                tier.metrics.tier_read_bytes.inc(n)
                yield piece
            if whole != b.crc:
                raise BlockRejected("corrupt")
            if self._mac is not None:
                if not hmac.compare_digest(self._mac.hexdigest(), self._expected_mac):
                    raise BlockRejected("unsigned")
                for piece in held:
                    tier.metrics.tier_read_bytes.inc(len(piece))
                    yield piece
        except BlockRejected as e:
            tier._count(e.cause)
            raise
        except TimeoutError:
            tier.breaker.failure()
            tier._count("timeout")
            raise BlockRejected("timeout") from None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken transfer: the upstream gives the rest
            tier.breaker.failure()
            tier._count("error")
            raise BlockRejected("error") from e
        finally:
            await self.close()
        tier._count("hit")

    async def close(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            self._slots.release()
            with contextlib.suppress(Exception):
                await release()


class SharedTier:
    """Verified ``get`` of a block (bytes or None) and background ``offer`` of a committed chunk."""

    def __init__(self, location: str, *, chunk_size: int, upstream_id: str, metrics: Metrics,
                 endpoint: str | None = None, region: str | None = None, profile: str | None = None,
                 credentials_file: Path | None = None,
                 read_within: float = 1.0, connect_timeout: float = 1.0, write_queue: int = 64,
                 hmac_key: bytes | None = None, max_connections: int = 64,
                 gate: Callable[[int], Awaitable[None]] | None = None, raw_settings: Any = None,
                 breaker: CircuitBreaker | None = None) -> None:
        self.bucket, prefix = parse_location(location)
        self.location = location
        self.naming = BlockNaming(prefix, chunk_size, upstream_id)
        self.metrics = metrics
        self.endpoint = endpoint
        self.region = region
        self.profile = profile
        self.credentials_file = credentials_file
        self.read_within = read_within
        self.connect_timeout = connect_timeout
        self.hmac_key = hmac_key
        self.max_connections = max_connections
        self.gate = gate
        # One failure opens it: a silent tier costs a client the read deadline once, then nothing
        # until a probe after the cool-down (an open breaker only costs upstream bytes).
        self.breaker = breaker or CircuitBreaker(threshold=1, cooldown=2.0, max_cooldown=60.0)
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=write_queue)
        # FIFO: blocks are read in the order asked; background reads have their own slots
        self._slots = asyncio.Semaphore(READS_IN_FLIGHT)
        self._background_slots = asyncio.Semaphore(BACKGROUND_READS_IN_FLIGHT)
        self._queued: set[str] = set()  # block keys waiting or being written (no duplicate work)
        self._client: Any = None
        self._raw: S3Upstream | None = None
        self.raw_settings = raw_settings
        self._client_cm: Any = None
        self._workers: list[asyncio.Task] = []
        metrics.tier_write_queue.set_function(self.queue.qsize)

    @classmethod
    def from_settings(cls, settings, metrics: Metrics, gate=None) -> "SharedTier | None":
        if not settings.shared_tier:
            return None
        key = None
        if settings.shared_tier_hmac_key_file is not None:
            from ..config import ConfigError  # noqa: PLC0415

            try:
                key = Path(settings.shared_tier_hmac_key_file).read_bytes().strip()
            except OSError:
                key = b""
            if not key:
                raise ConfigError("shared_tier_hmac_key_file", str(settings.shared_tier_hmac_key_file),
                                  "a readable file holding the shared key")
        upstream_id = settings.upstream or f"aws:{settings.effective_region}"
        return cls(settings.shared_tier, chunk_size=settings.chunk_size, upstream_id=upstream_id, metrics=metrics,
                   endpoint=settings.shared_tier_endpoint, region=settings.shared_tier_region,
                   profile=settings.shared_tier_profile,
                   credentials_file=settings.shared_tier_credentials_file, read_within=settings.shared_tier_read_within,
                   connect_timeout=settings.shared_tier_connect_timeout,
                   write_queue=settings.shared_tier_write_queue, hmac_key=key, gate=gate,
                   raw_settings=settings.replace(
                       upstream=settings.shared_tier_endpoint, upstream_addressing="auto",
                       upstream_connect_timeout=settings.shared_tier_connect_timeout,
                       upstream_read_timeout=max(settings.shared_tier_read_within, 5.0), upstream_max_connections=64))

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        from aiobotocore.config import AioConfig  # noqa: PLC0415
        from aiobotocore.session import AioSession  # noqa: PLC0415

        session = AioSession()
        if self.credentials_file is not None:  # the tier's own keys, apart from the upstream's
            session.set_config_variable("credentials_file", str(self.credentials_file))
        if self.profile:
            session.set_config_variable("profile", self.profile)
        region = self.region or session.get_config_variable("region") or os.environ.get("AWS_REGION") \
            or "us-east-1"
        config = AioConfig(
            region_name=region, s3={"addressing_style": "path" if self.endpoint else "auto"},
            retries={"mode": "standard", "max_attempts": 1},  # a miss falls through; no retry is worth a wait
            connect_timeout=self.connect_timeout, read_timeout=max(self.read_within, 5.0),
            max_pool_connections=self.max_connections,
            request_checksum_calculation="when_required", response_checksum_validation="when_required")
        self._client_cm = session.create_client("s3", region_name=region, endpoint_url=self.endpoint, config=config)
        self._client = await self._client_cm.__aenter__()
        if self.raw_settings is not None and not self.bucket.endswith("--x-s3"):
            from ..upstream.s3 import S3Upstream  # noqa: PLC0415

            # Reads through the upstream's own plain-HTTP client; S3 Express directory buckets
            # need the SDK's session authentication, so they keep the SDK for reads too.
            self._raw = S3Upstream(self.raw_settings.replace(region=region))
            await self._raw.start(session)
        self._workers = [asyncio.ensure_future(self._write_loop()) for _ in range(WRITE_WORKERS)]
        log.info("shared_tier", location=self.location, endpoint=self.endpoint or "aws", hmac=self.hmac_key is not None)

    async def close(self, grace: float = 0.0) -> None:
        """Stop writing: blocks still queued get ``grace`` seconds, then are dropped."""
        if grace > 0 and self.queue.qsize():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.queue.join(), grace)
        for w in self._workers:
            w.cancel()
        for w in self._workers:
            with contextlib.suppress(BaseException):
                await w
        self._workers = []
        if self._client_cm is not None:
            with contextlib.suppress(Exception):
                await self._client_cm.__aexit__(None, None, None)
            self._client_cm = self._client = None
        if self._raw is not None:
            with contextlib.suppress(Exception):
                await self._raw.close()
            self._raw = None

    # --- read ---------------------------------------------------------------------------

    async def open(self, meta: ObjectMeta, index: int, length: int, *, background: bool = False) -> TierBlock | None:
        """Chunk ``index`` of ``meta``'s version as a block whose headers and binding checked
        out (its bytes are verified as they are read), or None: any fault is a miss, counted by
        its cause, never an error. Waits for a free read slot first (``READS_IN_FLIGHT``, or
        ``BACKGROUND_READS_IN_FLIGHT`` for read-ahead and prefetch)."""
        if self._client is None:
            return None
        if not self.breaker.allow():
            self._count("breaker_open")
            return None
        key = self.naming.key(meta, index)
        slots = self._background_slots if background else self._slots
        await slots.acquire()
        try:
            block = await self._open_block(key, meta, index, length, slots)
        except BaseException:
            slots.release()
            raise
        if block is None:
            slots.release()
        return block

    async def _open_block(self, key: str, meta: ObjectMeta, index: int, length: int,
                          slots: asyncio.Semaphore) -> TierBlock | None:
        deadline = asyncio.get_running_loop().time() + self.read_within
        opened = await self._open_within(key, deadline, self._count)
        if opened is None:
            return None
        size, metadata, store_crc, body, release = opened
        try:
            binding, mac = self._check_headers(meta, index, length, size, metadata, store_crc)
        except BlockRejected as e:
            self._count(e.cause)
            with contextlib.suppress(Exception):
                await release()
            return None
        except BaseException:
            with contextlib.suppress(Exception):
                await release()
            raise
        return TierBlock(self, binding, body, release, length, deadline, mac, slots)

    async def hint(self, bucket: str, key: str) -> ObjectMeta | None:
        """The version of (bucket, key) a pod last saw (ETag and size), as the tier records it,
        or None. Only ever a guess for a speculative read (Reader.guess): a pod never uses a
        tier byte of a version before its own HEAD confirms it. Checked like a block's binding
        (its CRC, the object it names, its HMAC under a shared key); faults counted, never raised."""
        if self._client is None:
            return None
        if not self.breaker.allow():
            self._count_hint("breaker_open")
            return None
        deadline = asyncio.get_running_loop().time() + self.read_within
        opened = await self._open_within(self.naming.hint_key(bucket, key), deadline, self._count_hint)
        if opened is None:  # no record is as good as a bad one: no guess
            return None
        size, metadata, _, _, release = opened
        with contextlib.suppress(Exception):
            await release()  # (a record has no body)
        try:
            text = _bound_text(metadata)
            if size != 0:
                raise BlockRejected("corrupt")
            meta = self.naming.parse_hint(text, bucket, key)
            if self.hmac_key is not None:
                stated = metadata.get(_BINDING_HMAC, "")
                if not stated or not hmac.compare_digest(stated, self._mac(text).hexdigest()):
                    raise BlockRejected("unsigned")
        except BlockRejected as e:
            self._count_hint(e.cause)
            return None
        self._count_hint("hit")
        return meta

    def _mac(self, binding: str, body: bytes = b"") -> Any:
        """The HMAC of an object of the tier under the shared key: over its binding line, a zero
        byte and its body (a block's bytes; a record has none, and a block's binding never
        starts like a record's). Returned unfinished: a reader updates it with a block's bytes."""
        assert self.hmac_key is not None
        return hmac.new(self.hmac_key, binding.encode() + b"\0" + body, hashlib.sha256)

    async def _open_within(self, key: str, deadline: float, count: Callable[[str], None]):
        """``_open`` of a block or record by ``deadline``; None when it failed, counted with
        ``count`` (``timeout``, ``miss`` or ``error``) and told to the breaker. Whatever the store
        says, the upstream is the answer."""
        try:
            async with asyncio.timeout_at(deadline):
                opened = await self._open(key)
        except TimeoutError:
            self.breaker.failure()
            count("timeout")
            return None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            self._read_failed(e, count)
            log.debug("tier_read_failed", key=key, error=repr(e)[:200])
            return None
        self.breaker.success()
        return opened

    def _read_failed(self, e: Exception, count: Callable[[str], None]) -> None:
        """A read of a block or record that raised ``e``: what it says of the store goes to the
        breaker, and ``count`` gets ``miss`` (404) or ``error``."""
        status = _status(e)
        if status == 404:
            self.breaker.success()
            count("miss")
            return
        if status and status < 500:
            self.breaker.success()  # it answered: alive (denied, misconfigured: still a miss)
        else:
            self.breaker.failure()
        count("error")

    def _count_hint(self, result: str) -> None:
        self.metrics.tier_hints.labels(result).inc()

    async def get(self, meta: ObjectMeta, index: int, length: int) -> bytes | None:
        """Chunk ``index`` of ``meta``'s version, all verified (bytes and binding), or None."""
        block = await self.open(meta, index, length)
        if block is None:
            return None
        try:
            return b"".join([p async for p in block.pieces()])
        except BlockRejected:
            return None

    async def _open(self, key: str):
        """(length, user metadata, the store's CRC32C or None, body stream, release) of a block GET."""
        if self._raw is not None:
            # A plain signed GET (the upstream client's fast path): half the CPU of the SDK's pipeline.
            opened = await self._raw.open_object(self.bucket, key, start=None, end=None, checksum_mode=True)
            metadata = {k[len("x-amz-meta-"):]: v for k, v in opened.meta.headers if k.startswith("x-amz-meta-")}
            store_crc = dict(opened.meta.get_checksums or ()).get("x-amz-checksum-crc32c")
            return opened.meta.size, metadata, store_crc, opened.body, opened.close
        r = await self._client.get_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        body = r["Body"]

        async def release() -> None:
            body.close()

        return (int(r.get("ContentLength", -1)), {k.lower(): v for k, v in (r.get("Metadata") or {}).items()},
                r.get("ChecksumCRC32C"), body, release)

    def _check_headers(self, meta: ObjectMeta, index: int, length: int, size: int, metadata: dict[str, str],
                       store_crc: str | None) -> tuple[Binding, Any]:
        """The block's binding, if its headers say it is exactly chunk ``index`` of this version;
        with a shared key, the HMAC to finish over its bytes and the value it must reach."""
        text = _bound_text(metadata)
        binding = self.naming.parse(text, meta, index, length)
        if size != length:
            raise BlockRejected("corrupt")
        if store_crc is not None and store_crc != base64.b64encode(binding.crc.to_bytes(4, "big")).decode():
            raise BlockRejected("corrupt")
        mac = None
        if self.hmac_key is not None:
            stated = metadata.get(_BINDING_HMAC, "")
            if not stated:
                raise BlockRejected("unsigned")
            mac = (self._mac(text), stated)  # finished over the block's bytes as they arrive
        return binding, mac

    def _count(self, result: str) -> None:
        self.metrics.tier_reads.labels(result).inc()

    # --- write --------------------------------------------------------------------------

    def offer(self, meta: ObjectMeta, index: int, load: Callable[[], bytes | None]) -> None:
        """Queue a locally committed chunk for the tier; ``load`` reads its verified bytes when
        its turn comes (nothing is held in memory while queued). Dropped when the queue is full."""
        if self._client is None:
            return
        key = self.naming.key(meta, index)
        if key in self._queued:
            return
        try:
            self.queue.put_nowait((key, meta, index, load))
        except asyncio.QueueFull:
            self.metrics.tier_writes.labels("dropped").inc()
            return
        self._queued.add(key)

    def offer_hint(self, meta: ObjectMeta) -> None:
        """Queue the record that ``meta`` is the version of its object this pod resolved with its
        own HEAD (the next pods' guess, ``hint``), in the blocks' bounded queue; dropped when full."""
        if self._client is None:
            return
        key = self.naming.hint_key(meta.bucket, meta.key)
        if key in self._queued:
            return
        try:
            self.queue.put_nowait((key, meta, None, None))
        except asyncio.QueueFull:
            self._count_hint("write_dropped")
            return
        self._queued.add(key)

    async def _write_loop(self) -> None:
        while True:
            key, meta, index, load = await self.queue.get()
            try:
                if index is None:
                    await self._write_hint(key, meta)
                else:
                    await self._write(key, meta, index, load)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a failed write only costs a future hit
                if index is None:
                    self._count_hint("write_failed")
                else:
                    self.metrics.tier_writes.labels("failed").inc()
                log.debug("tier_write_failed", error=repr(e)[:200])
            finally:
                self._queued.discard(key)
                self.queue.task_done()

    async def _write(self, key: str, meta: ObjectMeta, index: int, load: Callable[[], bytes | None]) -> None:
        if not self.breaker.allow():
            self.metrics.tier_writes.labels("dropped").inc()
            return
        data = await asyncio.get_running_loop().run_in_executor(None, load)
        if data is None:  # evicted or replaced meanwhile
            self.metrics.tier_writes.labels("dropped").inc()
            return
        if self.gate is not None:
            await self.gate(len(data))
        crc = crc32c(data)
        await self._put(key, self.naming.binding(meta, index, data), data,
                        ChecksumCRC32C=base64.b64encode(crc.to_bytes(4, "big")).decode())
        self.metrics.tier_writes.labels("written").inc()
        self.metrics.tier_write_bytes.inc(len(data))

    async def _write_hint(self, key: str, meta: ObjectMeta) -> None:
        if not self.breaker.allow():
            self._count_hint("write_dropped")
            return
        await self._put(key, self.naming.hint_binding(meta), b"")
        self._count_hint("written")

    async def _put(self, key: str, binding: str, body: bytes, **kwargs: Any) -> None:
        """Write one object of the tier (a block or a record): its body, and as metadata its
        binding line, the line's CRC32C and, with a shared key, its HMAC. The breaker learns
        whether the store answered; a refusal (4xx) says nothing against it."""
        metadata = {_BINDING: binding, _BINDING_CRC: f"{crc32c(binding.encode()):08x}"}
        if self.hmac_key is not None:
            metadata[_BINDING_HMAC] = self._mac(binding, body).hexdigest()
        try:
            await self._client.put_object(Bucket=self.bucket, Key=key, Body=body, Metadata=metadata, **kwargs)
        except Exception as e:
            if not 400 <= _status(e) < 500:
                self.breaker.failure()
            raise
        self.breaker.success()

    def stats(self) -> dict[str, Any]:
        return {"location": self.location, "endpoint": self.endpoint or "aws", "breaker": self.breaker.state,
                "write_queue": self.queue.qsize(), "write_queue_bound": self.queue.maxsize}
