"""Object Lock settings, by tables: read from MinIO's response headers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from urllib3 import HTTPHeaderDict

from replicator.model import NO_LOCK, ObjectLock
from replicator.stores.source import describe, object_lock

UNTIL = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def headers(**values: str) -> HTTPHeaderDict:
    """Response headers as MinIO sends them (urllib3 looks names up case-insensitively)."""
    names = {"mode": "X-Amz-Object-Lock-Mode", "until": "X-Amz-Object-Lock-Retain-Until-Date",
             "hold": "X-Amz-Object-Lock-Legal-Hold"}
    return HTTPHeaderDict({names[k]: v for k, v in values.items()})


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, NO_LOCK),
        # Exactly what MinIO sends to a user allowed to read them (checked against the server).
        ({"mode": "GOVERNANCE", "until": "2030-01-02T03:04:05.000Z", "hold": "ON"},
         ObjectLock("GOVERNANCE", UNTIL, True)),
        ({"mode": "COMPLIANCE", "until": "2030-01-02T03:04:05.000Z"}, ObjectLock("COMPLIANCE", UNTIL, False)),
        ({"hold": "ON"}, ObjectLock(None, None, True)),
        # A lifted hold stays visible as OFF: nothing to carry.
        ({"hold": "OFF"}, NO_LOCK),
        ({"mode": "GOVERNANCE", "until": "2030-01-02T03:04:05.000Z", "hold": "OFF"},
         ObjectLock("GOVERNANCE", UNTIL, False)),
        ({"mode": "governance", "until": "2030-01-02T03:04:05Z", "hold": "on"}, ObjectLock("GOVERNANCE", UNTIL, True)),
        ({"mode": "COMPLIANCE", "until": "2030-01-02T05:04:05.000+02:00"}, ObjectLock("COMPLIANCE", UNTIL, False)),
        ({"mode": "COMPLIANCE", "until": "2030-01-02T03:04:05.250Z"},
         ObjectLock("COMPLIANCE", UNTIL + timedelta(milliseconds=250), False)),
        # A retention without a readable date, or a mode nobody knows, is ignored, not guessed.
        ({"mode": "GOVERNANCE"}, NO_LOCK),
        ({"mode": "GOVERNANCE", "until": "next tuesday", "hold": "ON"}, ObjectLock(None, None, True)),
        ({"mode": "FOREVER", "until": "2030-01-02T03:04:05.000Z"}, NO_LOCK),
        ({"until": "2030-01-02T03:04:05.000Z"}, NO_LOCK),
        # A date without a zone is UTC, as S3 means it.
        ({"mode": "GOVERNANCE", "until": "2030-01-02T03:04:05"}, ObjectLock("GOVERNANCE", UNTIL, False)),
    ],
)
def test_lock_settings_from_response_headers(values, expected):
    assert object_lock(headers(**values)) == expected


def test_describe_keeps_the_lock_settings_of_the_response():
    response = headers(mode="GOVERNANCE", until="2030-01-02T03:04:05.000Z", hold="ON")
    response.update({"Content-Length": "3", "ETag": '"abc"'})
    src = describe("k", response)
    assert src.lock == ObjectLock("GOVERNANCE", UNTIL, True)
    assert not any("lock" in name.lower() for name in src.headers)  # not copied as a plain header
    assert describe("k", HTTPHeaderDict({"Content-Length": "3"})).lock is NO_LOCK
