"""The two small interfaces the core depends on, and what a store must guarantee.

Everything above ``stores/`` talks to these Protocols only; the MinIO and S3
adapters implement them, and ``memory.py`` is the fake for pure unit tests.

Guarantees every implementation gives:
- ``list_from`` yields ObjectInfo in ascending key order (the diff still checks),
  with ETags unquoted, and raises only ``errors.StoreError`` subclasses.
- Every method maps its SDK's exceptions into ``errors.*`` at the boundary.
- SDK-level retries are off: the retry policy in ``retry.py`` is the only owner of
  retries, so attempts never multiply.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

from ..model import ObjectInfo, ObjectLock, SourceObject


class SourceStore(Protocol):
    side: str
    bucket: str

    def check(self) -> None:
        """Reachable, credentials accepted, bucket exists; else FatalError/TransientError."""

    def list_from(self, start_after: str | None, *, prefix: str = "", metadata: bool = False) -> Iterator[ObjectInfo]:
        """All objects under ``prefix`` after ``start_after`` (all when None), in key
        order; with ``metadata``, each with its attributes and tags (ObjectInfo.attributes)."""

    def open(self, key: str) -> AbstractContextManager[tuple[SourceObject, Reader]]:
        """GET the whole object: its description and a byte reader."""

    def read_range(self, key: str, offset: int, length: int, etag: str) -> bytes:
        """Read a byte range, failing with SourceChanged unless the ETag still matches."""

    def stat(self, key: str) -> SourceObject | None:
        """The object's description, or None if it doesn't exist."""

    def part_sizes(self, key: str, etag: str) -> list[int] | None:
        """The sizes of a multipart object's parts, in order; None where unknown."""

    def get_tags(self, key: str) -> dict[str, str]:
        ...


class Reader(Protocol):
    def read(self, amt: int | None = None) -> bytes:
        """The rest of the body as stored (never decoded), or up to ``amt`` bytes of it;
        b"" at its end."""


class DestinationStore(Protocol):
    side: str
    bucket: str
    @property
    def lists_metadata(self) -> bool:
        """Its listings carry attributes (known once check() ran)."""

    def check(self, create: bool) -> None:
        """Reachable, credentials accepted; bucket exists (created when ``create``)."""

    def list_from(self, start_after: str | None, *, prefix: str = "") -> Iterator[ObjectInfo]:
        """All objects under ``prefix`` after ``start_after``, in key order."""

    def open(self, key: str) -> AbstractContextManager[tuple[SourceObject, Reader]]:
        """GET the whole object, as ``SourceStore.open`` does (``verify --content`` reads
        both sides)."""

    def head_source_etag(self, key: str) -> str | None:
        """The source ETag recorded on the destination object, None if absent or no object."""

    def stat(self, key: str) -> SourceObject | None:
        """The destination object described as the source's are (its HEAD: Content-Type,
        copied headers, user metadata, tag count, lock), or None if it doesn't exist."""

    def get_tags(self, key: str) -> dict[str, str]:
        ...

    def mirrored_lock(self, src: SourceObject) -> ObjectLock | None:
        """The lock settings the copy of ``src`` should have now, or None where the
        destination takes none (so they are not compared)."""

    def put(self, key: str, data: bytes, src: SourceObject, tags: dict[str, str] | None) -> None:
        """Write ``key``."""

    def start_multipart(self, key: str, src: SourceObject, tags: dict[str, str] | None) -> str:
        ...

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Upload one part; returns its ETag."""

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        ...

    def abort_multipart(self, key: str, upload_id: str) -> bool:
        """True when the upload was aborted, False when there was none by that id (it
        was completed or aborted already)."""

    def put_tags(self, key: str, tags: dict[str, str]) -> None:
        ...

    def put_retention(self, key: str, lock: ObjectLock) -> None:
        """Give the object ``lock``'s retention (none when ``lock.mode`` is None); NotFound
        if the object isn't there. A no-op where the bucket has no object lock."""

    def put_legal_hold(self, key: str, on: bool) -> None:
        """Set or lift the object's legal hold; NotFound if the object isn't there. A no-op
        where the bucket has no object lock."""

    def delete_many(self, keys: list[str]) -> dict[str, str]:
        """Delete up to 1000 keys; returns {key: error} for those that failed."""
