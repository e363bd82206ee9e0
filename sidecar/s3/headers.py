"""Header values as they can be written into an HTTP answer: the one check that every answer
(from the cache or passed through) and every client value bound for a header goes through.

aiohttp refuses to write a header holding a control character (it would allow header
injection) and raises in the middle of the response; checked here first, such a value is a
clean S3 error instead: the client's own value is its error (400), the upstream's a bad
gateway (502), unless the upstream's answer is itself an error, which is relayed without it.
Plain functions, so every path that prepares headers (including a fast hit path) can call them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict

from ..errors import S3Error
from .target import RESPONSE_OVERRIDES, Target

# RFC 9110 5.5: no CTL but HTAB in a field value; aiohttp enforces exactly this set.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def writable(name: str, value: str) -> bool:
    return _TOKEN.match(name) is not None and _FORBIDDEN.search(value) is None


def check_client_values(target: Target, headers: Mapping[str, str]) -> None:
    """Raise 400 InvalidArgument when a value the client sent cannot be written into a header:
    a response-* override (answered as a response header) or a request header (passed on to the
    upstream as one). The value is not echoed: the error body is XML, where control characters
    cannot go either."""
    for param in RESPONSE_OVERRIDES:
        value = target.param(param)
        if value is not None and _FORBIDDEN.search(value) is not None:
            raise S3Error("InvalidArgument", f"The value of {param} cannot be used in a response header.",
                          ArgumentName=param)
    for name, value in headers.items():
        if _FORBIDDEN.search(value) is not None:
            raise S3Error("InvalidArgument", f"The value of header {name} contains a control character.",
                          ArgumentName=name if _TOKEN.match(name) else None)


def upstream_values(headers: Iterable[tuple[str, str]], status: int | None = None) -> CIMultiDict:
    """``headers`` (values the upstream gave among them) ready to be written. One that cannot be:
    left out when ``status``, the upstream's own status, is an error (the error is relayed as
    the upstream gave it, less what cannot be written); else S3Error 502, since the answer
    cannot be relayed faithfully."""
    out = headers if isinstance(headers, CIMultiDict) else CIMultiDict(headers)
    if all(writable(k, v) for k, v in out.items()):
        return out
    if status is not None and status >= 400:
        return CIMultiDict((k, v) for k, v in out.items() if writable(k, v))
    raise S3Error("BadGateway", "The upstream's answer has a header value that cannot be relayed.", status=502)
