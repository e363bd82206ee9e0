"""Where the bytes of a new object or part come from: a client's request body (``receive``,
every digest the client sent checked on the way to a temp file) or an existing object
(``open_copy_source``, with the copy-source conditions applied)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import urllib.parse
from collections.abc import AsyncIterator
from typing import NamedTuple

from ...errors import NotModified, S3Error
from .. import awschunked, checksums
from ..base import ForwardRequest
from .files import ObjectFiles, Sink
from .wire import check_conditions, request_body, s3_error


class Received(NamedTuple):
    """A request body in a temp file (the caller commits or removes it)."""

    path: str
    size: int
    md5_hex: str
    checksums: list[list[str]]  # the checksum headers to store with it


async def receive(files: ObjectFiles, req: ForwardRequest, h: dict[str, str], max_size: int) -> Received:
    """Stream the request body to a temp file, verifying every digest the client sent."""
    decoder, declared = _framing(req, h, max_size)
    algorithm, header_sums = _checksum_algorithm(h, decoder)
    md5_expected = _content_md5(h)
    sha_expected = h.get("x-amz-content-sha256", "").lower()
    # an aws-chunked body's x-amz-content-sha256 names the framing, not a digest of the bytes
    sha_check = decoder is None and re.fullmatch(r"[0-9a-f]{64}", sha_expected) is not None
    md5 = hashlib.md5()
    summer = checksums.new(algorithm) if algorithm else None
    sha = hashlib.sha256() if sha_check else None
    sink = Sink(files.new_tmp(), [x for x in (md5, summer, sha) if x is not None])
    try:
        source = decoder.stream(request_body(req)) if decoder is not None else request_body(req)
        await _drain(source, sink, max_size)
        await sink.finish(files.durable)
        if declared is not None and sink.size != declared:
            raise S3Error("IncompleteBody")
        if md5_expected is not None and md5.digest() != md5_expected:
            raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.",
                          ExpectedDigest=h["content-md5"], CalculatedDigest=base64.b64encode(md5.digest()).decode())
        if sha is not None and sha.hexdigest() != sha_expected:
            raise s3_error("XAmzContentSHA256Mismatch",
                           "The provided 'x-amz-content-sha256' header does not match what was computed.",
                           ClientComputedContentSHA256=sha_expected, S3ComputedContentSHA256=sha.hexdigest())
        stored = _stored_checksum(algorithm, header_sums, decoder, summer)
        return Received(sink.path, sink.size, md5.hexdigest(), stored)
    except BaseException:
        sink.abort()
        raise


def _framing(req: ForwardRequest, h: dict[str, str],
             max_size: int) -> tuple[awschunked.AwsChunkedDecoder | None, int | None]:
    """The aws-chunked decoder (None for a plain body) and the length the client declared."""
    decoder = None
    if awschunked.is_aws_chunked(h.items()):
        decoder = awschunked.AwsChunkedDecoder.from_headers(h.items())
        declared = decoder.decoded_length
        if declared is None:
            raise S3Error("MissingContentLength", "x-amz-decoded-content-length is required for aws-chunked uploads")
    else:
        declared = req.content_length
    if declared is not None and declared > max_size:
        raise S3Error("EntityTooLarge", MaxSizeAllowed=str(max_size), ProposedSize=str(declared))
    return decoder, declared


def _checksum_algorithm(h: dict[str, str],
                        decoder: awschunked.AwsChunkedDecoder | None) -> tuple[str | None, dict[str, str]]:
    """The one checksum algorithm of the upload (from a header, a trailer or the SDK's
    announcement), and the checksum values given in headers by algorithm."""
    header_sums = {a: h[n] for n in h if (a := checksums.algorithm_of(n))}
    trailer_algs = [a for t in (decoder.trailer_names or []) if (a := checksums.algorithm_of(t))] if decoder else []
    if len(header_sums) + len(trailer_algs) > 1:
        raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.")
    algorithm = next(iter(header_sums), None) or (trailer_algs[0] if trailer_algs else None)
    if algorithm is None and h.get("x-amz-sdk-checksum-algorithm"):
        algorithm = h["x-amz-sdk-checksum-algorithm"].strip().lower()
        if algorithm not in checksums.ALGORITHMS:
            raise S3Error("InvalidRequest", "Checksum algorithm provided is unsupported.")
    for a, v in header_sums.items():
        if not checksums.is_well_formed(a, v):
            raise S3Error("InvalidRequest", f"Value for x-amz-checksum-{a} header is invalid.")
    return algorithm, header_sums


def _content_md5(h: dict[str, str]) -> bytes | None:
    """The digest a Content-MD5 header announces; InvalidDigest when it is not one."""
    if "content-md5" not in h:
        return None
    try:
        expected = base64.b64decode(h["content-md5"], validate=True)
    except (binascii.Error, ValueError):
        expected = b""
    if len(expected) != 16:
        raise S3Error("InvalidDigest")
    return expected


async def _drain(source: AsyncIterator[bytes], sink: Sink, max_size: int) -> None:
    """Write the body into ``sink``; a body cut short is IncompleteBody, one too large EntityTooLarge."""
    try:
        async for piece in source:
            if sink.size + len(piece) > max_size:
                raise S3Error("EntityTooLarge", MaxSizeAllowed=str(max_size))
            await sink.write(piece)
    except (S3Error, NotModified):
        raise
    except (ConnectionError, asyncio.IncompleteReadError, EOFError) as e:
        raise S3Error("IncompleteBody", f"The request body terminated unexpectedly: {e}.") from None
    except OSError:
        raise
    except Exception as e:  # the face's body iterator failing (client gone, payload error)
        if type(e).__module__.startswith("aiohttp"):
            raise S3Error("IncompleteBody", f"The request body terminated unexpectedly: {e}.") from None
        raise


def _stored_checksum(algorithm: str | None, header_sums: dict[str, str],
                     decoder: awschunked.AwsChunkedDecoder | None, summer) -> list[list[str]]:
    """The checksum headers kept with the object: the client's value (header or trailer) once
    it matches what was computed, or the computed one."""
    if not algorithm:
        return []
    given = header_sums.get(algorithm)
    if given is None and decoder is not None:
        given = dict(decoder.trailers).get(f"x-amz-checksum-{algorithm}")
        if given is not None and not checksums.is_well_formed(algorithm, given):
            raise s3_error("MalformedTrailerError", f"Value for x-amz-checksum-{algorithm} trailing header is invalid.")
    computed = checksums.encode(summer.digest()) if summer is not None else None
    if given is not None and computed is not None and given != computed:
        raise S3Error("BadDigest", f"The {algorithm.upper()} you specified did not match the calculated checksum.")
    value = given or computed
    return [[f"x-amz-checksum-{algorithm}", value], ["x-amz-checksum-type", "FULL_OBJECT"]] if value else []


def copy_source(value: str) -> tuple[str, str]:
    """(bucket, key) of an x-amz-copy-source header."""
    raw, _, query = value.partition("?")
    version = urllib.parse.parse_qs(query).get("versionId", [None])[0] if query else None
    if version is not None and version != "null":
        raise S3Error("InvalidArgument", "Invalid version id specified", ArgumentName="x-amz-copy-source",
                      ArgumentValue=value)
    path = urllib.parse.unquote(raw)
    if path.startswith("/"):
        path = path[1:]
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
                      ArgumentName="x-amz-copy-source", ArgumentValue=value)
    return bucket, key


async def open_copy_source(files: ObjectFiles, h: dict[str, str]) -> tuple[str, str, int, os.stat_result, dict]:
    """(bucket, key, open fd, stat, record) of the copy source; the caller closes the fd."""
    sb, sk = copy_source(h["x-amz-copy-source"])
    found = files.find(sb, sk)
    if found is None:
        raise S3Error("NoSuchKey", Key=sk)
    fd = os.open(found[0], os.O_RDONLY)
    try:
        st = os.fstat(fd)
        rec = await files.record(sb, sk, found[0], st)
        check_conditions({k[len("x-amz-copy-source-"):]: v for k, v in h.items()
                          if k.startswith("x-amz-copy-source-if-")}, rec["etag"], st.st_mtime, copy=True)
    except BaseException:
        os.close(fd)
        raise
    return sb, sk, fd, st, rec
