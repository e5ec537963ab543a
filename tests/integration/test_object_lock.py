"""Object Lock retention and legal holds, mirrored between real servers.

The source is a MinIO bucket with object lock. The destination is a second MinIO or
moto's server (``pair``), with object lock on its bucket or without. What moto 5.2.5
does differently is said where it matters; the assertions are the same otherwise.
"""

from __future__ import annotations

import io
import os
from datetime import datetime, timedelta, timezone

import pytest
from loguru import logger
from minio.commonconfig import COMPLIANCE, GOVERNANCE
from minio.retention import Retention

from tests.conftest import SOURCE_PASSWORD, SOURCE_USER, boto_client, run_cli
from tests.sidecar import wait_for

MiB = 1024 * 1024
NO_LOCK_WARNING = "replicating without retention and legal holds from now on"
SMALL_PARTS = {"S3_SYNC_MULTIPART_THRESHOLD": "5MiB", "S3_SYNC_MULTIPART_CHUNK_SIZE": "5MiB"}


def days(n: float) -> datetime:
    """A retain-until date ``n`` days ahead, in whole seconds (MinIO keeps no finer)."""
    return datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=n)


def put(pair, key: str, data: bytes, *, mode: str | None = None, until: datetime | None = None,
        hold: bool = False) -> None:
    retention = Retention(mode, until) if mode else None
    pair.source.put_object(pair.source_bucket, key, io.BytesIO(data), len(data), retention=retention,
                           legal_hold=hold, part_size=5 * MiB)


def dest_lock(pair, key: str) -> tuple[str | None, datetime | None, bool]:
    """(mode, retain-until, legal hold on?) of the destination object, from its HEAD."""
    head = pair.dest.head_object(Bucket=pair.dest_bucket, Key=key)
    until = head.get("ObjectLockRetainUntilDate")
    return (head.get("ObjectLockMode"), until.astimezone(timezone.utc) if until else None,
            head.get("ObjectLockLegalHoldStatus") == "ON")


def source_lock(pair, key: str) -> tuple[str | None, datetime | None, bool]:
    headers = pair.source.stat_object(pair.source_bucket, key).metadata
    until = headers.get("x-amz-object-lock-retain-until-date")
    return (headers.get("x-amz-object-lock-mode"),
            datetime.fromisoformat(until.replace("Z", "+00:00")) if until else None,
            headers.get("x-amz-object-lock-legal-hold") == "ON")


def source_admin(pair):
    """boto3 on the MinIO source, for what minio-py can't send (the governance bypass)."""
    return boto_client(pair.servers["source"].endpoint, SOURCE_USER, SOURCE_PASSWORD)


def test_a_copy_keeps_retention_and_legal_hold(pair):
    locked = pair.with_object_lock()
    until = days(2)
    big = os.urandom(6 * MiB)  # above the 5 MiB threshold: a multipart copy
    put(locked, "governed-held.txt", b"governance and a hold", mode=GOVERNANCE, until=until, hold=True)
    put(locked, "compliant.txt", b"compliance", mode=COMPLIANCE, until=until)
    put(locked, "held.txt", b"a hold only", hold=True)
    put(locked, "plain.txt", b"nothing")
    put(locked, "big/governed.bin", big, mode=GOVERNANCE, until=until, hold=True)
    # Retention that ends within minutes (inside the clock-skew margin) isn't sent: S3
    # refuses a date that has passed by the time the write arrives.
    put(locked, "ending.txt", b"ends soon", mode=GOVERNANCE, until=datetime.now(timezone.utc) + timedelta(minutes=2),
        hold=True)
    # MinIO tells the copy all of it on the GET it makes anyway (checked: no extra request).
    assert source_lock(locked, "big/governed.bin") == (GOVERNANCE, until, True)

    result = run_cli({**locked.env, **SMALL_PARTS}, "reconcile")

    assert result.code == 0, result.output
    assert "6 copied" in result.output
    assert NO_LOCK_WARNING not in result.output
    assert dest_lock(locked, "governed-held.txt") == (GOVERNANCE, until, True)
    assert dest_lock(locked, "compliant.txt") == (COMPLIANCE, until, False)
    assert dest_lock(locked, "held.txt") == (None, None, True)
    assert dest_lock(locked, "plain.txt") == (None, None, False)
    assert dest_lock(locked, "ending.txt") == (None, None, True)
    assert locked.dest_body("big/governed.bin") == big
    if locked.kind == "minio":
        # moto 5.2.5 keeps no lock settings for multipart uploads: its backend's
        # create_multipart_upload takes none, and the completed object has none.
        assert dest_lock(locked, "big/governed.bin") == (GOVERNANCE, until, True)


def test_a_destination_without_object_lock_still_gets_every_object(pair):
    locked = pair.with_object_lock(dest=False)
    big = os.urandom(6 * MiB)
    put(locked, "governed.txt", b"governance", mode=GOVERNANCE, until=days(1), hold=True)
    put(locked, "compliant.txt", b"compliance", mode=COMPLIANCE, until=days(1))
    put(locked, "plain.txt", b"nothing")
    put(locked, "big/governed.bin", big, mode=GOVERNANCE, until=days(1))

    result = run_cli({**locked.env, **SMALL_PARTS}, "reconcile")

    assert result.code == 0, result.output
    assert locked.dest_snapshot() == locked.source_snapshot()
    # One warning, naming the cause, for the whole run.
    assert result.output.count(NO_LOCK_WARNING) == 1, result.output
    assert "has no object lock (ObjectLockConfigurationNotFoundError)" in result.output
    for key in ("governed.txt", "compliant.txt", "plain.txt", "big/governed.bin"):
        assert dest_lock(locked, key) == (None, None, False)


def test_without_a_check_the_first_refused_write_decides(pair, make_app):
    """A destination store that never ran check() doesn't know; the first write with
    lock settings that the bucket refuses teaches it, and the copy still succeeds."""
    locked = pair.with_object_lock(dest=False)
    put(locked, "a.txt", b"first", mode=GOVERNANCE, until=days(1))
    put(locked, "b.txt", b"second", hold=True)
    # Small objects only: moto takes CreateMultipartUpload's lock headers on a bucket
    # without object lock, and quietly drops them.
    app = make_app(MINIO_BUCKET=locked.source_bucket, S3_SYNC_BUCKET=locked.dest_bucket)
    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(str(message)), level="WARNING", format="{message}")
    try:
        assert app.copier.copy("a.txt") is not None
        assert app.copier.copy("b.txt") is not None
    finally:
        logger.remove(sink)
    assert locked.dest_snapshot() == {"a.txt": b"first", "b.txt": b"second"}
    assert len(warnings) == 1, warnings
    # The server's own words name the cause (AWS, MinIO and moto say it alike).
    assert "a.txt: destination bucket" in warnings[0]
    assert "refused the object's retention and legal hold (InvalidRequest (HTTP 400): Bucket is missing" in warnings[0]


def test_retention_and_legal_hold_changes_reach_the_destination_by_event(pair, sidecars):
    locked = pair.with_object_lock()
    first, later, shorter = days(1), days(3), days(2)
    put(locked, "doc.txt", b"a document", mode=GOVERNANCE, until=first)
    sidecar = sidecars(locked.env)
    wait_for(sidecar.ready, what="readiness")
    wait_for(lambda: dest_lock(locked, "doc.txt") == (GOVERNANCE, first, False), what="the initial copy")

    locked.source.set_object_retention(locked.source_bucket, "doc.txt", Retention(GOVERNANCE, later))
    wait_for(lambda: dest_lock(locked, "doc.txt") == (GOVERNANCE, later, False), what="the longer retention")

    locked.source.enable_object_legal_hold(locked.source_bucket, "doc.txt")
    wait_for(lambda: dest_lock(locked, "doc.txt") == (GOVERNANCE, later, True), what="the legal hold")

    locked.source.disable_object_legal_hold(locked.source_bucket, "doc.txt")
    wait_for(lambda: dest_lock(locked, "doc.txt") == (GOVERNANCE, later, False), what="the hold lifted")

    # Shortening GOVERNANCE takes the bypass at the source; the sidecar uses it too
    # (after a plain attempt is refused; moto refuses nothing).
    source_admin(locked).put_object_retention(Bucket=locked.source_bucket, Key="doc.txt",
                                              Retention={"Mode": GOVERNANCE, "RetainUntilDate": shorter},
                                              BypassGovernanceRetention=True)
    wait_for(lambda: dest_lock(locked, "doc.txt") == (GOVERNANCE, shorter, False), what="the shorter retention")

    # MinIO wants the bypass for GOVERNANCE -> COMPLIANCE as well.
    source_admin(locked).put_object_retention(Bucket=locked.source_bucket, Key="doc.txt",
                                              Retention={"Mode": COMPLIANCE, "RetainUntilDate": later},
                                              BypassGovernanceRetention=True)
    wait_for(lambda: dest_lock(locked, "doc.txt") == (COMPLIANCE, later, False), what="COMPLIANCE")

    assert locked.dest_body("doc.txt") == b"a document"
    metrics = sidecar.metrics()
    assert metrics['replicator_events_received_total{kind="metadata"}'] >= 5
    assert not any(name.startswith("replicator_failures_total{") and value for name, value in metrics.items())
    # Metadata-only events never copy the bytes again.
    assert metrics.get('replicator_objects_copied_total{trigger="event"}', 0) == 0


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_a_lock_event_for_an_object_the_destination_lost_copies_it(pair, sidecars):
    # MinIO only: moto 5.2.5 answers PutObjectRetention on a key it doesn't have with
    # HTTP 500 (AttributeError: 'NoneType' object has no attribute 'lock_mode'), not
    # S3's 404 NoSuchKey, so the sidecar would retry and fail instead of copying.
    locked = pair.with_object_lock()
    put(locked, "lost.txt", b"lost and found", hold=True)
    sidecar = sidecars(locked.env)
    wait_for(sidecar.ready, what="readiness")
    wait_for(lambda: dest_lock(locked, "lost.txt") == (None, None, True), what="the initial copy")
    # Deleted at the destination behind the sidecar's back: in a versioned bucket, a
    # delete marker, to which S3 and MinIO answer MethodNotAllowed.
    locked.dest.delete_object(Bucket=locked.dest_bucket, Key="lost.txt")

    locked.source.set_object_retention(locked.source_bucket, "lost.txt", Retention(GOVERNANCE, days(1)))

    wait_for(lambda: locked.dest_keys() == ["lost.txt"], what="the object copied back")
    assert locked.dest_body("lost.txt") == b"lost and found"
    assert dest_lock(locked, "lost.txt") == source_lock(locked, "lost.txt")
    assert dest_lock(locked, "lost.txt")[0] == GOVERNANCE


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_a_compliance_retention_the_destination_holds_longer_is_never_shortened(pair, sidecars):
    # MinIO only: moto 5.2.5 doesn't enforce retention modes on PutObjectRetention at all.
    locked = pair.with_object_lock()
    put(locked, "kept.txt", b"kept", mode=GOVERNANCE, until=days(1))
    sidecar = sidecars(locked.env)
    wait_for(sidecar.ready, what="readiness")
    wait_for(lambda: dest_lock(locked, "kept.txt")[0] == GOVERNANCE, what="the initial copy")
    # Someone made the destination's copy COMPLIANCE for longer; no one can undo that.
    held_until = days(3)  # once: two calls can straddle a second
    locked.dest.put_object_retention(Bucket=locked.dest_bucket, Key="kept.txt",
                                     Retention={"Mode": COMPLIANCE, "RetainUntilDate": held_until},
                                     BypassGovernanceRetention=True)

    locked.source.set_object_retention(locked.source_bucket, "kept.txt", Retention(GOVERNANCE, days(2)))

    wait_for(lambda: "refuses GOVERNANCE until" in sidecar.log(), what="the refusal in the log")
    assert dest_lock(locked, "kept.txt") == (COMPLIANCE, held_until, False)
    line = next(line for line in sidecar.log().splitlines() if "refuses GOVERNANCE until" in line)
    assert "kept.txt: destination: put retention kept.txt: InvalidRequest (HTTP 400)" in line
    assert "a COMPLIANCE retention can never be shortened or removed" in line
    assert "refused for good (a reconcile can't see metadata changes" in line
    assert sidecar.metrics()['replicator_failures_total{reason="InvalidRequest"}'] == 1


def test_lock_events_for_a_destination_without_object_lock_fail_nothing(pair, sidecars):
    locked = pair.with_object_lock(dest=False)
    put(locked, "doc.txt", b"a document", mode=GOVERNANCE, until=days(1))
    sidecar = sidecars(locked.env)
    wait_for(sidecar.ready, what="readiness")
    wait_for(lambda: locked.dest_keys() == ["doc.txt"], what="the initial copy")

    locked.source.set_object_retention(locked.source_bucket, "doc.txt", Retention(GOVERNANCE, days(2)))
    locked.source.enable_object_legal_hold(locked.source_bucket, "doc.txt")
    put(locked, "new.txt", b"new", mode=COMPLIANCE, until=days(1), hold=True)

    wait_for(lambda: locked.dest_keys() == ["doc.txt", "new.txt"], what="the new object")
    wait_for(lambda: sidecar.metrics().get('replicator_events_received_total{kind="metadata"}', 0) >= 2
             and sidecar.idle(), what="the lock events handled")
    assert locked.dest_snapshot() == locked.source_snapshot()
    assert dest_lock(locked, "new.txt") == (None, None, False)
    assert not any(name.startswith("replicator_failures_total{") and value
                   for name, value in sidecar.metrics().items())
    assert sidecar.log().count(NO_LOCK_WARNING) == 1
