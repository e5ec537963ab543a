"""How often each side is really tried: S3_SYNC_MAX_RETRIES attempts, no more (the SDKs
must not multiply them), against a scripted server that keeps failing."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli
from tests.servers import StubS3, s3_error

LOCATION = (200, {}, b'<?xml version="1.0" encoding="UTF-8"?>'
                     b'<LocationConstraint xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></LocationConstraint>')


def failing_listings(method: str, path: str, query: str):
    if "location" in query:
        return LOCATION
    if method == "HEAD":
        return 200, {}, b""  # the bucket exists
    return s3_error("InternalError", 500)


@pytest.fixture
def stub():
    server = StubS3(failing_listings)
    yield server
    server.close()


@pytest.mark.parametrize("pair", ["minio"], indirect=True)  # the stub stands in for the destination
def test_destination_listing_is_tried_max_retries_times(pair, stub):
    attempts = 3
    env = {**pair.env, "S3_SYNC_ENDPOINT": stub.endpoint, "S3_SYNC_MAX_RETRIES": str(attempts),
           "S3_SYNC_RETRY_DELAY": "0"}
    result = run_cli(env, "reconcile")
    assert result.code == 1
    assert stub.count("GET", "list-type=2") == attempts
    assert "destination: list" in result.stderr and "InternalError (HTTP 500)" in result.stderr


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_source_listing_is_tried_max_retries_times(pair, stub):
    attempts = 3
    env = {**pair.env, "MINIO_ENDPOINT": stub.endpoint, "S3_SYNC_MAX_RETRIES": str(attempts),
           "S3_SYNC_RETRY_DELAY": "0"}
    result = run_cli(env, "reconcile")
    assert result.code == 1
    assert stub.count("GET", "list-type=2") == attempts
    assert "source: list" in result.stderr and "InternalError (HTTP 500)" in result.stderr


def empty_listing(path: str):
    bucket = path.strip("/").split("/")[0]
    return (200, {}, b'<?xml version="1.0" encoding="UTF-8"?>'
                     b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                     b"<Name>" + bucket.encode() + b"</Name><Prefix></Prefix><KeyCount>0</KeyCount>"
                     b"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>")


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_a_destination_busy_at_start_up_is_retried(pair):
    # A server still starting (503) when the job fires: the health check backs off and
    # tries again instead of failing the run.
    heads = []

    def busy_then_fine(method, path, query):
        if method == "HEAD":
            heads.append(path)
            if len(heads) == 1:
                return s3_error("ServiceUnavailable", 503, {"Retry-After": "0"})
            return 200, {}, b""
        return empty_listing(path)

    stub = StubS3(busy_then_fine)
    try:
        env = {**pair.env, "S3_SYNC_ENDPOINT": stub.endpoint, "S3_SYNC_MAX_RETRIES": "3", "S3_SYNC_RETRY_DELAY": "0"}
        result = run_cli(env, "reconcile")
    finally:
        stub.close()
    assert result.code == 0, result.stderr
    assert len(heads) == 2
    assert "destination: check bucket" in result.stderr and "(HTTP 503)" in result.stderr  # the retry is logged
