"""errors.classify by table: an S3 error response -> what to do next."""

from __future__ import annotations

import pytest

from replicator.errors import (
    FatalError,
    GuardRefused,
    NotFound,
    PermanentError,
    SourceChanged,
    TransientError,
    classify,
    log_fields,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("code", "status", "bucket_op", "kind"),
    [
        # Transient: worth retrying.
        ("SlowDown", 503, False, TransientError),
        ("ServiceUnavailable", 503, False, TransientError),
        ("InternalError", 500, False, TransientError),
        ("RequestTimeout", 400, False, TransientError),
        ("Throttling", 400, False, TransientError),
        ("TooManyRequests", 429, False, TransientError),
        ("XMinioServerNotInitialized", 503, True, TransientError),
        (None, 502, False, TransientError),
        (None, 504, True, TransientError),
        (None, 429, False, TransientError),
        (None, 408, False, TransientError),
        # The source changed under a pinned read.
        ("PreconditionFailed", 412, False, SourceChanged),
        (None, 412, False, SourceChanged),
        # Fatal: nothing in this run will work.
        ("NoSuchBucket", 404, True, FatalError),
        ("NoSuchBucket", 404, False, FatalError),
        ("InvalidAccessKeyId", 403, True, FatalError),
        ("SignatureDoesNotMatch", 403, False, FatalError),
        ("ExpiredToken", 400, False, FatalError),
        ("AccessDenied", 403, True, FatalError),
        (None, 403, True, FatalError),
        ("NotFound", 404, True, FatalError),  # HEAD bucket: the bucket is missing
        # Permanent: this object only.
        ("AccessDenied", 403, False, PermanentError),
        (None, 403, False, PermanentError),
        ("InvalidArgument", 400, False, PermanentError),
        ("EntityTooLarge", 400, False, PermanentError),
        (None, 400, False, PermanentError),
        # A provider that doesn't implement an operation (tagging, batch delete) answers
        # 501: retrying can't help, and the adapters fall back on a PermanentError.
        ("NotImplemented", 501, False, PermanentError),
        (None, 501, False, PermanentError),
        # Not found: the object is gone.
        ("NoSuchKey", 404, False, NotFound),
        ("NotFound", 404, False, NotFound),
        (None, 404, False, NotFound),
        ("NoSuchUpload", 404, False, NotFound),
    ],
)
def test_classify(code, status, bucket_op, kind):
    error = classify("destination", "put", "photos/a.jpg", code, status, bucket_op=bucket_op)
    assert type(error) is kind
    assert error.code == code


def test_message_names_side_operation_key_and_cause():
    error = classify("destination", "put", "photos/a.jpg", "SlowDown", 503)
    assert str(error) == "destination: put photos/a.jpg: SlowDown (HTTP 503)"
    assert (error.side, error.op, error.key) == ("destination", "put", "photos/a.jpg")


def test_message_without_a_key():
    assert str(classify("source", "list", None, "InternalError", 500)) == "source: list: InternalError (HTTP 500)"


@pytest.mark.parametrize(
    ("side", "code", "status", "hint"),
    [
        ("source", "InvalidAccessKeyId", 403, "the access key is unknown here; check MINIO_ACCESS_KEY"),
        ("source", "SignatureDoesNotMatch", 403, "the secret key is wrong for this access key; check MINIO_SECRET_KEY"),
        ("destination", "InvalidAccessKeyId", 403, "check S3_SYNC_ACCESS_KEY"),
        ("destination", "SignatureDoesNotMatch", 403, "check S3_SYNC_SECRET_KEY"),
        # A HEAD's 403 carries no code: a wrong key and a missing permission look alike.
        ("destination", "AccessDenied", 403, "check S3_SYNC_ACCESS_KEY, S3_SYNC_SECRET_KEY and their permissions"),
        ("source", None, 403, "check MINIO_ACCESS_KEY, MINIO_SECRET_KEY and their permissions"),
    ],
)
def test_rejected_credentials_name_the_settings_to_check(side, code, status, hint):
    error = classify(side, "check bucket", "b", code, status, bucket_op=True)
    assert isinstance(error, FatalError)
    assert hint in str(error)


def test_retry_after_is_carried_on_transient_errors():
    error = classify("destination", "put", "k", "SlowDown", 503, retry_after=7.0)
    assert isinstance(error, TransientError) and error.retry_after == 7.0


@pytest.mark.parametrize(("header", "seconds"), [(None, None), ("", None), ("3", 3.0), ("1.5", 1.5),
                                                 ("-4", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", None)])
def test_parse_retry_after(header, seconds):
    assert parse_retry_after(header) == seconds


def test_guard_refused_message_has_the_numbers():
    error = GuardRefused("too many", would_delete=60, destination_objects=100, source_objects=40)
    assert str(error) == ("delete guard refused: too many (would delete 60 of 100 destination objects; "
                          "source has 40)")


@pytest.mark.parametrize(("error", "fields"), [
    (TransientError("destination", "put", "a.jpg", "SlowDown (HTTP 503)", code="SlowDown"),
     {"error_code": "SlowDown", "side": "destination", "key": "a.jpg"}),
    (FatalError("source", "check bucket", None, "bucket does not exist"),
     {"error_code": "FatalError", "side": "source"}),  # no key: a bucket's operation
    (ValueError("a bug"), {"error_code": "ValueError"}),
])
def test_log_fields_name_the_code_side_and_key(error, fields):
    assert log_fields(error) == fields
