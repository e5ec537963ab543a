"""An in-memory store implementing both SourceStore and DestinationStore, for pure
unit tests of the copier and the reconcile: no server, no thread, no sleep.

It behaves like S3 where the core relies on it: listings in UTF-8 byte order, MD5
ETags for single PUTs and ``md5(part digests)-N`` for multipart ones, a ranged read
pinned to an ETag fails with ``SourceChanged``, and the copier's recorded source
ETag lands in user metadata under ``SOURCE_ETAG_META``.

Faults are injected per operation: ``store.fail("put", "a.txt", error, times=1)``
raises ``error`` on the next ``put`` of ``a.txt`` (``key=None`` matches any key).
Every call is recorded in ``store.calls`` as ``(op, key)``, so a test can assert
that an in-sync pair cost no request beyond the listing. Multipart uploads that were
started and neither completed nor aborted are in ``store.incomplete_uploads()``.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlencode

from ..drift import listed_attributes
from ..errors import FatalError, NotFound, SourceChanged, StoreError
from ..model import NO_LOCK, SOURCE_ETAG_META, ObjectInfo, ObjectLock, SourceObject


def md5_etag(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def multipart_etag(parts: list[bytes]) -> str:
    digests = b"".join(hashlib.md5(p, usedforsecurity=False).digest() for p in parts)
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"


@dataclass
class StoredObject:
    data: bytes
    etag: str
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lock: ObjectLock = NO_LOCK
    part_sizes: tuple[int, ...] = ()  # as uploaded, for a multipart object


class _Body:
    """An object's body (stores.base.Reader)."""

    def __init__(self, data: bytes):
        self._data = data
        self._at = 0

    def read(self, amt: int | None = None) -> bytes:
        end = len(self._data) if amt is None else min(len(self._data), self._at + amt)
        chunk, self._at = self._data[self._at:end], end
        return chunk


@dataclass
class _Fault:
    op: str
    key: str | None
    error: BaseException
    times: int | None  # None: for ever


@dataclass
class _Upload:
    key: str
    src: SourceObject
    tags: dict[str, str] | None
    parts: dict[int, bytes] = field(default_factory=dict)


class MemoryStore:
    def __init__(self, side: str = "source", *, bucket: str = "bucket", bucket_exists: bool = True):
        self.side = side
        self.bucket = bucket
        self.bucket_exists = bucket_exists
        self.lists_metadata = False  # as a destination: list attributes, as MinIO does
        self.objects: dict[str, StoredObject] = {}
        self.uploads: dict[str, _Upload] = {}
        self.calls: list[tuple[str, str | None]] = []
        self._faults: list[_Fault] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- test helpers ------------------------------------------------------------

    def add(self, key: str, data: bytes, *, content_type: str | None = None, headers: dict[str, str] | None = None,
            metadata: dict[str, str] | None = None, tags: dict[str, str] | None = None,
            etag: str | None = None, lock: ObjectLock = NO_LOCK) -> StoredObject:
        """Store an object directly (what a client's PUT would leave behind)."""
        stored = StoredObject(data, etag or md5_etag(data), content_type, dict(headers or {}),
                              dict(metadata or {}), dict(tags or {}), lock)
        self.objects[key] = stored
        return stored

    def fail(self, op: str, key: str | None, error: BaseException, *, times: int | None = None) -> None:
        """Raise ``error`` from ``op`` (on ``key``, or any key when None)."""
        self._faults.append(_Fault(op, key, error, times))

    def heal(self) -> None:
        """Forget every fault: the store answers again."""
        with self._lock:
            self._faults.clear()

    def contents(self) -> dict[str, bytes]:
        return {key: obj.data for key, obj in sorted(self.objects.items())}

    def incomplete_uploads(self) -> dict[str, str]:
        """The multipart uploads started and neither completed nor aborted: upload id -> key
        (what ListMultipartUploads would show)."""
        return {upload_id: upload.key for upload_id, upload in self.uploads.items()}

    def ops(self, op: str) -> list[str | None]:
        return [key for name, key in self.calls if name == op]

    def _fault(self, op: str, key: str | None) -> BaseException | None:
        with self._lock:
            self.calls.append((op, key))
            for fault in self._faults:
                if fault.op == op and fault.key in (None, key) and fault.times != 0:
                    if fault.times is not None:
                        fault.times -= 1
                    return fault.error
        return None

    def _enter(self, op: str, key: str | None) -> None:
        error = self._fault(op, key)
        if error is not None:
            raise error

    def _get(self, op: str, key: str) -> StoredObject:
        obj = self.objects.get(key)
        if obj is None:
            raise NotFound(self.side, op, key, "NoSuchKey (HTTP 404)", code="NoSuchKey")
        return obj

    def _describe(self, key: str, obj: StoredObject) -> SourceObject:
        return SourceObject(key, len(obj.data), obj.etag, obj.content_type, dict(obj.headers),
                            dict(obj.metadata), len(obj.tags), obj.lock)

    # -- both protocols ----------------------------------------------------------

    def check(self, create: bool = False) -> None:
        self._enter("check", None)
        if not self.bucket_exists:
            if not create:
                raise FatalError(self.side, "check bucket", "memory", "bucket does not exist")
            self.bucket_exists = True

    def list_from(self, start_after: str | None, *, prefix: str = "", metadata: bool = False) -> Iterator[ObjectInfo]:
        self._enter("list", start_after)
        # Sorting by UTF-8 bytes, not code points, keeps the fake honest about what S3
        # does (the two orders agree for valid strings; surrogates aside).
        for key in sorted(self.objects, key=lambda k: k.encode("utf-8", "surrogatepass")):
            if start_after is not None and key.encode("utf-8", "surrogatepass") <= start_after.encode(
                    "utf-8", "surrogatepass"):
                continue
            obj = self.objects.get(key)
            if obj is not None and key.startswith(prefix):
                yield ObjectInfo(key, len(obj.data), obj.etag,
                                 attributes=self._listed(obj) if metadata or self.lists_metadata else None)

    @staticmethod
    def _listed(obj: StoredObject) -> frozenset[tuple[str, str]]:
        """The object's attributes as MinIO's metadata=true listing gives them."""
        meta = {f"x-amz-meta-{name}": value for name, value in obj.metadata.items()}
        meta.update({name.lower(): value for name, value in obj.headers.items()})
        if obj.content_type:
            meta["content-type"] = obj.content_type
        return listed_attributes(meta, urlencode(obj.tags) or None)

    # -- SourceStore (open serves as the DestinationStore's too) -------------------------

    @contextmanager
    def open(self, key: str):
        self._enter("get", key)
        obj = self._get("get", key)
        yield self._describe(key, obj), _Body(obj.data)

    def read_range(self, key: str, offset: int, length: int, etag: str) -> bytes:
        self._enter("get range", key)
        obj = self._get("get", key)
        if obj.etag != etag:
            raise SourceChanged(self.side, "get", key, "object changed during the copy: PreconditionFailed",
                                code="PreconditionFailed")
        return obj.data[offset:offset + length]

    def stat(self, key: str) -> SourceObject | None:
        self._enter("stat", key)
        obj = self.objects.get(key)
        return self._describe(key, obj) if obj is not None else None

    def part_sizes(self, key: str, etag: str) -> list[int] | None:
        self._enter("get attributes", key)
        obj = self._get("get attributes", key)
        if obj.etag != etag:
            raise SourceChanged(self.side, "get attributes", key, "object changed during the copy")
        return list(obj.part_sizes) or None

    def get_tags(self, key: str) -> dict[str, str]:
        self._enter("get tags", key)
        obj = self.objects.get(key)
        return dict(obj.tags) if obj is not None else {}

    # -- DestinationStore ------------------------------------------------------------

    def head_source_etag(self, key: str) -> str | None:
        self._enter("head", key)
        obj = self.objects.get(key)
        return obj.metadata.get(SOURCE_ETAG_META) if obj is not None else None

    def mirrored_lock(self, src: SourceObject) -> ObjectLock | None:
        return src.lock

    def _written(self, data: bytes, etag: str, src: SourceObject, tags: dict[str, str] | None) -> StoredObject:
        return StoredObject(data, etag, src.content_type, dict(src.headers),
                            {**src.metadata, SOURCE_ETAG_META: src.etag}, dict(tags or {}), src.lock)

    def put(self, key: str, data: bytes, src: SourceObject, tags: dict[str, str] | None) -> None:
        self._enter("put", key)
        self.objects[key] = self._written(bytes(data), md5_etag(data), src, tags)

    def start_multipart(self, key: str, src: SourceObject, tags: dict[str, str] | None) -> str:
        self._enter("start multipart", key)
        upload_id = f"upload-{next(self._ids)}"
        self.uploads[upload_id] = _Upload(key, src, tags)
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        self._enter("put part", key)
        upload = self.uploads.get(upload_id)
        if upload is None:
            raise NotFound(self.side, "put part", key, "NoSuchUpload (HTTP 404)", code="NoSuchUpload")
        upload.parts[number] = bytes(data)
        return md5_etag(data)

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        self._enter("complete multipart", key)
        upload = self.uploads.pop(upload_id, None)
        if upload is None:
            raise NotFound(self.side, "complete multipart", key, "NoSuchUpload (HTTP 404)", code="NoSuchUpload")
        numbers = [n for n, _ in parts]
        if numbers != sorted(numbers) or set(numbers) != set(upload.parts):
            raise StoreError(self.side, "complete multipart", key, "InvalidPart", code="InvalidPart")
        chunks = [upload.parts[n] for n in numbers]
        written = self._written(b"".join(chunks), multipart_etag(chunks), upload.src, upload.tags)
        written.part_sizes = tuple(len(c) for c in chunks)
        self.objects[key] = written

    def abort_multipart(self, key: str, upload_id: str) -> bool:
        self._enter("abort multipart", key)
        return self.uploads.pop(upload_id, None) is not None

    def put_tags(self, key: str, tags: dict[str, str]) -> None:
        self._enter("put tags", key)
        self._get("put tags", key).tags = dict(tags)

    def put_retention(self, key: str, lock: ObjectLock) -> None:
        self._enter("put retention", key)
        obj = self._get("put retention", key)
        obj.lock = ObjectLock(lock.mode, lock.retain_until, obj.lock.legal_hold)

    def put_legal_hold(self, key: str, on: bool) -> None:
        self._enter("put legal hold", key)
        obj = self._get("put legal hold", key)
        obj.lock = ObjectLock(obj.lock.mode, obj.lock.retain_until, on)

    def delete_many(self, keys: list[str]) -> dict[str, str]:
        """A fault on ``delete batch`` fails the request; one on ``delete`` fails a key,
        reported in the result the way S3's DeleteObjects reports per-key errors."""
        self._enter("delete batch", None)
        failed: dict[str, str] = {}
        for key in keys:
            error = self._fault("delete", key)
            if error is not None:
                failed[key] = getattr(error, "code", None) or "error"
            else:
                self.objects.pop(key, None)
        return failed
