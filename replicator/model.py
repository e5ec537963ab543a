"""Plain data shared by every layer. No I/O, no SDK types."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

# User-metadata key under which the copier records the source's ETag on each
# destination object it writes. It lets the diff recognise an in-sync pair when the
# two ETags can't be compared (multipart uploads, SSE-KMS, providers whose ETag is
# not the MD5). boto3 spells it without the x-amz-meta- prefix.
SOURCE_ETAG_META = "replicator-source-etag"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listing entry."""

    key: str
    size: int
    etag: str  # without quotes
    # Content-Type, copied headers, user metadata and tags as the listing gave them
    # (drift.listed_attributes), where a listing can (MinIO's metadata=true); else None.
    attributes: frozenset[tuple[str, str]] | None = None


class Action(enum.Enum):
    COPY = "copy"  # only in the source
    UPDATE = "update"  # in both, different
    VERIFY = "verify"  # in both, same size, ETags not comparable: ask the destination
    DELETE = "delete"  # only in the destination
    UNCHANGED = "unchanged"  # in both, the same


@dataclass(frozen=True, slots=True)
class Change:
    action: Action
    key: str
    source: ObjectInfo | None = None
    dest: ObjectInfo | None = None

    @property
    def size(self) -> int:
        ref = self.source if self.source is not None else self.dest
        return ref.size if ref is not None else 0


@dataclass(frozen=True, slots=True)
class ObjectLock:
    """An object's Object Lock settings: a retention (mode and date) and a legal hold.

    MinIO reports them on every GET and HEAD to a user allowed to read them, so a
    copy learns them from the request it makes anyway."""

    mode: str | None = None  # "GOVERNANCE" or "COMPLIANCE"; None: no retention
    retain_until: datetime | None = None  # timezone-aware; set exactly when mode is
    legal_hold: bool = False

    def __bool__(self) -> bool:
        return self.mode is not None or self.legal_hold


NO_LOCK = ObjectLock()


@dataclass(frozen=True, slots=True)
class SourceObject:
    """What a copy needs to know about the source object, from one GET or HEAD."""

    key: str
    size: int
    etag: str
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # Cache-Control, Expires, …
    metadata: dict[str, str] = field(default_factory=dict)  # user metadata, no prefix
    tag_count: int = 0
    lock: ObjectLock = NO_LOCK


@dataclass(slots=True)
class RunStats:
    """Counters of one reconcile run."""

    source_objects: int = 0
    dest_objects: int = 0
    copied: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped: int = 0  # vanished from the source mid-run, or a delete the re-check refused
    failed: int = 0
    bytes_copied: int = 0
    planned_deletes: int = 0
    planned_bytes: int = 0
    duration: float = 0.0
    guard: str | None = None
    dry_run: bool = False
