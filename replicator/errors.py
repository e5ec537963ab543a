"""The one exception tree of replicator.

Errors are classified by *what to do next*, not by which SDK raised them. The
store adapters map vendor exceptions into this tree at the edge (``raise … from
exc``); nothing above ``stores/`` catches a minio or botocore exception::

    ReplicatorError
     ├── ConfigError            bad settings; exit 2; names the variable(s)
     ├── GuardRefused           a delete guard said no; exit 3; carries the numbers
     └── StoreError             one operation on one side failed: side, op, key, cause
          ├── TransientError    worth retrying: timeouts, resets, 5xx, SlowDown (retry_after)
          │    └── SourceChanged the source object changed under a copy: start it again
          ├── PermanentError    retrying won't help for this object: AccessDenied, …
          │    └── NotFound      the object (not the bucket) is gone
          └── FatalError        retrying won't help for anything: bad credentials,
               │                 no such bucket, unreachable at start-up; stop the run
               └── ListingOrderError a listing came back out of order; diffing it is unsafe

Messages say what happened and where, object first:
``destination: put photos/a.jpg: SlowDown (HTTP 503)``. No message ever carries a
credential: adapters build messages from codes and keys, never from request dumps.
"""

from __future__ import annotations


class ReplicatorError(Exception):
    """Base of everything replicator raises on purpose."""


class ConfigError(ReplicatorError):
    """The configuration is unusable. The message names every offending variable."""


class GuardRefused(ReplicatorError):
    """A delete guard refused the run's deletions. Nothing was deleted."""

    def __init__(self, reason: str, *, would_delete: int, destination_objects: int, source_objects: int):
        self.reason = reason
        self.would_delete = would_delete
        self.destination_objects = destination_objects
        self.source_objects = source_objects
        super().__init__(
            f"delete guard refused: {reason} (would delete {would_delete} of "
            f"{destination_objects} destination objects; source has {source_objects})"
        )


class StoreError(ReplicatorError):
    """One operation against one side failed."""

    def __init__(self, side: str, op: str, key: str | None, detail: str, *, code: str | None = None,
                 server_message: str | None = None):
        self.side = side
        self.op = op
        self.key = key
        self.detail = detail
        self.code = code
        # The server's own words ("Bucket is missing ObjectLockConfiguration"), kept
        # apart from the message: they explain a refusal, but they're the server's text.
        self.server_message = server_message
        where = f"{op} {key}" if key is not None else op
        super().__init__(f"{side}: {where}: {detail}")


def annotated(error: StoreError, note: str) -> StoreError:
    """``error`` with ``note`` added to its detail: the same kind, code and server message."""
    extra = {"retry_after": error.retry_after} if isinstance(error, TransientError) else {}
    copy = type(error)(error.side, error.op, error.key, f"{error.detail}{note}", code=error.code,
                       server_message=error.server_message, **extra)
    return copy


class TransientError(StoreError):
    """Retrying the same operation later may succeed."""

    def __init__(self, side: str, op: str, key: str | None, detail: str, *, code: str | None = None,
                 server_message: str | None = None, retry_after: float | None = None):
        super().__init__(side, op, key, detail, code=code, server_message=server_message)
        self.retry_after = retry_after


class SourceChanged(TransientError):
    """The source object changed while it was being copied; the copy was abandoned whole."""


class PermanentError(StoreError):
    """Retrying won't help for this object; other objects may still succeed."""


class NotFound(PermanentError):
    """The object does not exist (any more)."""


class FatalError(StoreError):
    """Retrying won't help for anything in this run."""


class ListingOrderError(FatalError):
    """A listing returned keys out of UTF-8 byte order; a merge-join over it would be wrong."""


# --- classification by S3 error code -----------------------------------------
# Shared by both adapters, so MinIO and any S3 provider are judged the same way.

_TRANSIENT_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed",
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
    "XMinioServerNotInitialized", "XMinioReadQuorum", "XMinioWriteQuorum", "OperationAborted",
})
_FATAL_CODES = frozenset({
    "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "ExpiredToken", "AccountProblem", "AllAccessDisabled", "InvalidBucketName",
    "AuthorizationHeaderMalformed", "PermanentRedirect", "InvalidRegion",
})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "NoSuchUpload"})
_CHANGED_CODES = frozenset({"PreconditionFailed"})
# Which settings to check when a side rejects the credentials (names, never values).
_CREDENTIALS = {
    "source": ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"),
    "destination": ("S3_SYNC_ACCESS_KEY", "S3_SYNC_SECRET_KEY"),
}
_UNSUPPORTED_CODES = frozenset({"NotImplemented", "XNotImplemented"})


def classify(side: str, op: str, key: str | None, code: str | None, status: int | None,
             *, retry_after: float | None = None, bucket_op: bool = False,
             server_message: str | None = None) -> StoreError:
    """Map an S3 error response to the error tree, by what to do next."""
    error = _by_code(side, op, key, code, status, retry_after=retry_after, bucket_op=bucket_op)
    error.server_message = server_message
    return error


def _by_code(side: str, op: str, key: str | None, code: str | None, status: int | None,
             *, retry_after: float | None, bucket_op: bool) -> StoreError:
    detail = code or "error"
    if status:
        detail += f" (HTTP {status})"
    if code in _CHANGED_CODES or status == 412:
        return SourceChanged(side, op, key, f"object changed during the copy: {detail}", code=code)
    if code in _UNSUPPORTED_CODES or status == 501:
        # 501 is a 5xx but no server error: the provider doesn't do this (tagging, batch
        # delete). The adapters fall back on a PermanentError; retrying only delays that.
        return PermanentError(side, op, key, detail, code=code)
    if code in _TRANSIENT_CODES or (status is not None and (status >= 500 or status in (408, 429))):
        return TransientError(side, op, key, detail, code=code, retry_after=retry_after)
    access, secret = _CREDENTIALS.get(side, ("the access key", "the secret key"))
    if code == "InvalidAccessKeyId":
        return FatalError(side, op, key, f"{detail}: the access key is unknown here; check {access}", code=code)
    if code == "SignatureDoesNotMatch":
        return FatalError(side, op, key, f"{detail}: the secret key is wrong for this access key; check {secret}",
                          code=code)
    if code in _FATAL_CODES:
        return FatalError(side, op, key, detail, code=code)
    if code == "AccessDenied" or status == 403:
        # Denied on the bucket means nothing will work; on one object, only that object.
        # A HEAD's 403 has no body, so a wrong key looks the same as a missing permission.
        cls = FatalError if bucket_op else PermanentError
        return cls(side, op, key, f"{detail}: check {access}, {secret} and their permissions", code=code)
    if code in _NOT_FOUND_CODES or status == 404:
        return (FatalError if bucket_op else NotFound)(side, op, key, detail, code=code)
    return PermanentError(side, op, key, detail, code=code)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (the delta form; dates are rare on S3)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def code_of(error: BaseException) -> str:
    """A low-cardinality name for a failure: the S3 code when there is one, else the
    error class. A metric label and a log field."""
    return getattr(error, "code", None) or type(error).__name__


def log_fields(error: BaseException) -> dict[str, object]:
    """A failure's structured log fields: ``error_code`` and, for a store's error, its
    ``side`` and ``key``. For ``logger.error(..., **log_fields(error))``."""
    fields: dict[str, object] = {"error_code": code_of(error)}
    for name in ("side", "key"):
        value = getattr(error, name, None)
        if value is not None:
            fields[name] = value
    return fields
