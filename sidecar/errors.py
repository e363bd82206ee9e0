"""S3 errors: one exception type, one table from error code to HTTP status, one XML rendering."""

from __future__ import annotations

from xml.sax.saxutils import escape

# code -> (status, default message). Codes and statuses as S3 documents them.
S3_ERRORS: dict[str, tuple[int, str]] = {
    "AccessDenied": (403, "Access Denied"),
    "AuthorizationHeaderMalformed": (400, "The authorization header is malformed."),
    "AuthorizationQueryParametersError": (400, "Error parsing the query-string authentication parameters."),
    "BadDigest": (400, "The Content-MD5 or checksum value that you specified did not match what the server received."),
    "EntityTooLarge": (400, "Your proposed upload exceeds the maximum allowed size."),
    "ExpiredToken": (400, "The provided token has expired."),
    "IncompleteBody": (400, "You did not provide the number of bytes specified by the Content-Length HTTP header."),
    "InternalError": (500, "We encountered an internal error. Please try again."),
    "InvalidAccessKeyId": (403, "The AWS access key ID you provided does not exist in our records."),
    "InvalidArgument": (400, "Invalid Argument"),
    "InvalidBucketName": (400, "The specified bucket is not valid."),
    "InvalidPart": (400, "One or more of the specified parts could not be found."),
    "InvalidRange": (416, "The requested range is not satisfiable"),
    "InvalidRequest": (400, "Invalid Request"),
    "InvalidURI": (400, "Couldn't parse the specified URI."),
    "KeyTooLongError": (400, "Your key is too long."),
    "MalformedXML": (400, "The XML you provided was not well-formed or did not validate against our published schema."),
    "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
    "MissingContentLength": (411, "You must provide the Content-Length HTTP header."),
    "NoSuchBucket": (404, "The specified bucket does not exist."),
    "NoSuchKey": (404, "The specified key does not exist."),
    "NoSuchUpload": (404, "The specified multipart upload does not exist."),
    "NotImplemented": (501, "A header you provided implies functionality that is not implemented."),
    "NotModified": (304, "Not Modified"),
    "PreconditionFailed": (412, "At least one of the pre-conditions you specified did not hold"),
    "RequestHeaderSectionTooLarge": (400, "Your request header section exceeds the maximum allowed size."),
    "RequestTimeout": (400, "Your socket connection to the server was not read from or written to within the timeout period."),
    "RequestTimeTooSkewed": (403, "The difference between the request time and the server's time is too large."),
    "ServiceUnavailable": (503, "Service is unable to handle request."),
    "SignatureDoesNotMatch": (403, "The request signature we calculated does not match the signature you provided."),
    "SlowDown": (503, "Please reduce your request rate."),
    "BucketAlreadyOwnedByYou": (409, "Your previous request to create the named bucket succeeded and you already own it."),
    "BucketNotEmpty": (409, "The bucket you tried to delete is not empty."),
    "InvalidDigest": (400, "The Content-MD5 or checksum value you specified is not valid."),
    "InvalidPartOrder": (400, "The list of parts was not in ascending order."),
    "EntityTooSmall": (400, "Your proposed upload is smaller than the minimum allowed object size."),
    "InvalidPartNumber": (416, "The requested partnumber is not satisfiable"),
    "XAmzContentSHA256Mismatch": (400, "The provided 'x-amz-content-sha256' header does not match what was computed."),
    "MalformedTrailerError": (400, "The request contained trailing data that was not well-formed."),
    "InvalidTag": (400, "The tag provided was not a valid tag."),
    "MaxMessageLengthExceeded": (400, "Your request was too big."),
    "NoSuchUploadId": (404, "The specified multipart upload does not exist."),
    "OperationAborted": (409, "A conflicting conditional operation is currently in progress against this resource."),
    "PermanentRedirect": (301, "The bucket you are attempting to access must be addressed using the specified endpoint."),
}


class S3Error(Exception):
    """An error answered to the client as S3 error XML (or a bare status for HEAD)."""

    def __init__(self, code: str, message: str | None = None, *, status: int | None = None,
                 headers: dict[str, str] | None = None, **fields: str) -> None:
        default_status, default_message = S3_ERRORS.get(code, (500, code))
        self.code = code
        self.message = message or default_message
        self.status = status or default_status
        self.headers = dict(headers or {})
        self.fields = {k: str(v) for k, v in fields.items() if v is not None}
        super().__init__(f"{self.code}: {self.message}")

    def to_xml(self, resource: str = "", request_id: str = "") -> bytes:
        parts = [f"<Code>{escape(self.code)}</Code>", f"<Message>{escape(self.message)}</Message>"]
        for k, v in self.fields.items():
            parts.append(f"<{k}>{escape(v)}</{k}>")
        if resource:
            parts.append(f"<Resource>{escape(resource)}</Resource>")
        if request_id:
            parts.append(f"<RequestId>{escape(request_id)}</RequestId>")
        return ('<?xml version="1.0" encoding="UTF-8"?>\n<Error>' + "".join(parts) + "</Error>").encode()


class UpstreamUnavailable(S3Error):
    """The upstream could not be reached or did not answer in time."""

    def __init__(self, message: str = "The upstream storage service is unavailable.") -> None:
        super().__init__("ServiceUnavailable", message)


class NotModified(Exception):
    """A conditional upstream request found the object unchanged."""


class ObjectChanged(Exception):
    """The upstream object no longer has the ETag being read (it was replaced meanwhile)."""


def client_fault(e: BaseException) -> BaseException | None:
    """The client's own doing among the causes of ``e`` (an upstream failure, however wrapped):
    a 4xx S3Error, such as a malformed body found while it was sent on, or an exception marked
    ``client_fault`` (a client gone mid-body). None when the fault is not the client's."""
    cause: BaseException | None = e
    for _ in range(12):
        if cause is None:
            return None
        if getattr(cause, "client_fault", False) or (isinstance(cause, S3Error) and cause.status < 500):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None
