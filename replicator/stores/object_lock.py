"""PURE: Object Lock settings as S3 carries them in headers: read from a GET or HEAD
answer, and written with a PutObject or CreateMultipartUpload; and which of them a
write may carry at all. Table-tested in tests/unit/test_object_lock.py."""

from __future__ import annotations

from datetime import datetime, timezone

from ..model import NO_LOCK, ObjectLock

LOCK_MODES = frozenset({"GOVERNANCE", "COMPLIANCE"})
# A retention ending sooner than this is not sent with a copy. S3 refuses a retain-until
# date in the past with InvalidRequest, the very code it gives a bucket without object
# lock, and it tolerates 15 minutes of clock skew between client and server. A retention
# that ends within that window protects nothing worth a refused write.
RETENTION_MARGIN = 15 * 60


def object_lock(headers) -> ObjectLock:
    """The Object Lock settings in a GET/HEAD response's headers.

    MinIO sends them only to a user allowed ``s3:GetObjectRetention`` and
    ``s3:GetObjectLegalHold``; to anyone else an object looks unlocked. A retention
    without a readable date is ignored rather than guessed."""
    mode = (headers.get("x-amz-object-lock-mode") or "").strip().upper()
    until = _datetime(headers.get("x-amz-object-lock-retain-until-date"))
    hold = (headers.get("x-amz-object-lock-legal-hold") or "").strip().upper() == "ON"
    if mode not in LOCK_MODES or until is None:
        mode, until = None, None
    if mode is None and not hold:
        return NO_LOCK
    return ObjectLock(mode, until, hold)


def _datetime(value: str | None) -> datetime | None:
    """An ISO-8601 timestamp (MinIO: ``2026-11-27T21:01:23.000Z``), timezone-aware."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def sendable_lock(lock: ObjectLock, now: float) -> ObjectLock:
    """What of ``lock`` a write should carry at ``now`` (epoch seconds): the legal
    hold when it is on, and the retention unless it ends within RETENTION_MARGIN."""
    if lock.retain_until is not None and lock.retain_until.timestamp() - now < RETENTION_MARGIN:
        lock = ObjectLock(legal_hold=lock.legal_hold)
    return lock if lock else NO_LOCK


def iso8601(when: datetime) -> str:
    """``2026-11-27T21:01:23.000Z``: the form S3 documents for a retain-until date."""
    utc = when.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def lock_headers(lock: ObjectLock) -> dict[str, str]:
    """The request headers that give an object written by PutObject or
    CreateMultipartUpload the settings ``lock``. Pass it what ``sendable_lock`` kept."""
    headers = {}
    if lock.mode is not None and lock.retain_until is not None:
        headers["x-amz-object-lock-mode"] = lock.mode
        headers["x-amz-object-lock-retain-until-date"] = iso8601(lock.retain_until)
    if lock.legal_hold:
        headers["x-amz-object-lock-legal-hold"] = "ON"
    return headers
