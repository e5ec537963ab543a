"""Copy one object, delete a batch: the only code that moves bytes, used by both the
reconcile and the event workers.

Planning follows s3transfer: one GET tells the object's size; up to
``S3_SYNC_MULTIPART_THRESHOLD`` the bytes already streaming in become one PUT,
above it the GET is dropped and the object goes up in parts, each part a ranged GET
pinned to the ETag (``If-Match``) plus an UploadPart. Memory is bounded by
``min(workers, MEMORY_SLOTS) × threshold`` for small objects (a byte budget: a copy
holds its object's size from before reading it until its PUT is done), plus
``UNMETERED`` for each thread copying an object no larger than that, and
``multipart_concurrency × 2 × part size`` for parts, whatever the object sizes.

Retry units (retry.py): a small object's GET+PUT; one part's GET+UploadPart; the
multipart start/complete calls. A whole multipart copy is only restarted when the
source changed under it (412), which makes every part so far worthless.

Every multipart upload is recorded in the registry (uploads.py) from the moment it
starts until it is completed or aborted, and the copier is the only code that starts,
completes or aborts one: so the uploads a crashed process left behind are known, and
``abort_abandoned_uploads`` aborts them at the next start (a reconcile's first step).

A copy whose reason to run has gone (``abandoning``: an event worker's durable message
that NATS may have handed to another process) stops between parts and aborts its
upload, as a shutdown past its deadline does: continuing would upload what the other
process uploads too, and race it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from loguru import logger

from .config import MiB, Settings
from .diff import is_multipart_etag
from .errors import NotFound, PermanentError, ReplicatorError, SourceChanged, TransientError
from .model import SourceObject
from .observability import metrics
from .pool import BoundedExecutor, ByteBudget
from .retry import RetryPolicy, Stopped
from .stores.base import DestinationStore, SourceStore
from .uploads import LIFECYCLE_HINT, Owner, Registry, Upload

MAX_PARTS = 10_000  # S3's limit
OUTSIDE_FILTER = "outside the mirror's filter (S3_SYNC_PREFIX, S3_SYNC_FILTER): refused"
# Small copies in flight hold at most this many multipart thresholds' worth of bytes
# (128 MiB by default), however many threads copy: more threads than this buy
# concurrency for small objects, where copies wait on round trips, not memory.
MEMORY_SLOTS = 8
# Objects this small skip the budget: each copying thread holds at most one, so they are
# bounded by the thread count already, and taking the budget's lock twice per copy from
# 64 threads made a convoy of it (docs/benchmarks.md, where the small copy's time goes).
UNMETERED = 256 * 1024


class Abandoned(Exception):
    """A multipart copy given up between parts (``abandoning``); its upload is aborted."""


# Whether the copies this thread makes are still wanted: asked between parts.
_wanted: ContextVar[Callable[[], bool]] = ContextVar("replicator_copy_wanted", default=lambda: True)


@contextmanager
def abandoning(when: Callable[[], bool]) -> Iterator[None]:
    """Multipart copies made in this block (in this thread) stop before their next part
    once ``when()`` is true, abort their upload and raise Abandoned."""
    token = _wanted.set(lambda: not when())
    try:
        yield
    finally:
        _wanted.reset(token)


@dataclass(frozen=True)
class CopyResult:
    key: str
    size: int
    etag: str


class _Large(Exception):
    """Internal: the object goes up in parts (above the threshold, or multipart at the
    source); carries its description."""

    def __init__(self, src: SourceObject):
        self.src = src


def part_size(size: int, configured: int) -> int:
    """The configured part size, grown (in whole MiB) when the object would need more
    than S3's 10,000 parts."""
    needed = -(-size // MAX_PARTS)
    if needed <= configured:
        return configured
    return -(-needed // MiB) * MiB


MIN_PART = 5 * MiB  # S3's smallest part, the last one aside


def source_layout(sizes: list[int] | None, size: int, etag: str, largest: int) -> str | None:
    """PURE: why the source's own part sizes can't be the copy's, or None if they can.

    Copied part for part, a multipart object gets the source's ETag at the destination
    wherever the provider computes multipart ETags as S3 does, and the listings alone
    then show the pair in sync. ``largest`` bounds the memory a part may take."""
    if sizes is None:
        return "the source doesn't list its parts"
    expected = etag.rpartition("-")[2]
    if not expected.isdigit() or int(expected) != len(sizes):
        return f"{len(sizes)} parts listed for an ETag of {expected or 'no'} parts"
    if sum(sizes) != size:
        return f"parts adding up to {sum(sizes)} bytes for an object of {size}"
    if len(sizes) > MAX_PARTS:
        return f"{len(sizes)} parts, above S3's {MAX_PARTS}"
    if any(part < MIN_PART for part in sizes[:-1]):
        return "parts below S3's 5 MiB minimum"
    if max(sizes) > largest:
        return f"parts of up to {max(sizes)} bytes, above S3_SYNC_MULTIPART_THRESHOLD ({largest})"
    return None


class Copier:
    def __init__(self, source: SourceStore, dest: DestinationStore, settings: Settings, policy: RetryPolicy,
                 abort: threading.Event | None = None, uploads: Registry | None = None):
        self.source = source
        self.dest = dest
        self.policy = policy
        # The multipart uploads in flight, on disk (uploads.py); None records nothing.
        self.uploads = uploads or Registry(None, "")
        self.threshold = settings.multipart_threshold
        # Checked again where every copy and delete is sent from (defence in depth: the
        # listings and converge.py filter first): the destination may hold other data.
        self.key_filter = settings.key_filter
        self.chunk = settings.multipart_chunk_size
        # Set to abandon in-flight multipart uploads (shutdown past its deadline).
        self.abort = abort or policy.stop
        self._memory = ByteBudget(min(settings.workers, MEMORY_SLOTS) * self.threshold)
        self._parts = BoundedExecutor(settings.multipart_concurrency, limit=settings.multipart_concurrency * 2,
                                      name="part")

    def close(self) -> None:
        self._parts.shutdown(wait=True, cancel=True)
        self.uploads.close()

    # -- copy -----------------------------------------------------------------------

    def copy(self, key: str) -> CopyResult | None:
        """Make the destination's ``key`` equal to the source's current object.
        Returns None when the source no longer has it (nothing to copy; the deletion,
        if any, is the reconcile's or the event's business)."""
        if not self.key_filter(key):
            raise PermanentError("destination", "put", key, OUTSIDE_FILTER)
        restarts = 0
        while True:
            try:
                try:
                    return self.policy.call(lambda: self._copy_small(key))
                except _Large as large:
                    return self._copy_multipart(large.src)
            except NotFound as error:
                if error.side != "source":
                    # A 404 from the destination (NoSuchUpload after a lifecycle rule
                    # aborted the upload, a key the provider can't store) is a failed
                    # copy. Taken for "gone from the source", it was counted as skipped
                    # and the run reported success without the object.
                    raise
                logger.debug("{}: gone from the source before it could be copied", key)
                return None
            except SourceChanged:
                restarts += 1
                if restarts >= self.policy.attempts:
                    raise
                logger.info("{}: changed at the source during the copy; starting again ({}/{})",
                            key, restarts + 1, self.policy.attempts)

    def _tags(self, src: SourceObject) -> dict[str, str] | None:
        """One attempt: the caller's retry unit covers it (a retry of its own inside one
        would multiply the attempts, and hold a small copy's memory through backoffs)."""
        if not src.tag_count:
            return None  # x-amz-tagging-count says there are none: no request needed
        return self.source.get_tags(src.key)

    def _copy_small(self, key: str) -> CopyResult:
        with ExitStack() as held:
            with self.source.open(key) as (src, body):
                if src.size > self.threshold or is_multipart_etag(src.etag):
                    # A multipart object at any size goes up in its own parts, so that
                    # its copy has its ETag (_layout): one PUT would cost a HEAD at every
                    # reconcile after, to compare the recorded source ETag.
                    raise _Large(src)
                if src.size > UNMETERED:
                    held.enter_context(self._memory.hold(src.size, self.abort))  # before the body is read
                data = body.read()
            if len(data) != src.size:
                raise TransientError("source", "get", key, f"short read: {len(data)} of {src.size} bytes")
            self.dest.put(key, data, src, self._tags(src))
            del data  # the budget is released next
        metrics.bytes_copied.inc(src.size)
        return CopyResult(key, src.size, src.etag)

    def _copy_multipart(self, src: SourceObject) -> CopyResult:
        key = src.key
        tags = self.policy.call(lambda: self._tags(src))
        layout = self._layout(src)
        upload_id = self.policy.call(lambda: self.dest.start_multipart(key, src, tags))
        # On disk before the first part goes: from here on a crash leaves an upload the
        # next start knows to be replicator's (uploads.py).
        upload = self.uploads.started(key, upload_id)
        futures: list[Future] = []
        completed = False
        wanted = _wanted.get()
        try:
            offset = 0
            for number, length in enumerate(layout, start=1):
                if self.abort.is_set():
                    raise Stopped()
                if not wanted():
                    raise Abandoned(f"given up before part {number}")
                if any(f.done() and f.exception() for f in futures[-4:]):
                    break  # a part failed for good; stop feeding the pool
                futures.append(self._parts.submit(self._copy_part, src, upload_id, number, offset, length, wanted))
                offset += length
            parts = [f.result() for f in futures]
            self.policy.call(lambda: self.dest.complete_multipart(key, upload_id, parts))
            completed = True
        finally:
            if not completed:
                for f in futures:
                    f.cancel()
                for f in futures:
                    if not f.cancelled():
                        f.exception()  # wait: an abort must not race a part still uploading
                self._abort_upload(upload)
        self.uploads.finished(upload)
        metrics.bytes_copied.inc(src.size)
        logger.debug("{}: uploaded in {} parts", key, len(parts))
        return CopyResult(key, src.size, src.etag)

    def _layout(self, src: SourceObject) -> list[int]:
        """The copy's part sizes: the source's own where they can be (source_layout),
        else the configured part size. Re-cut, the copy's ETag differs from the
        source's, and the source ETag recorded with it decides in later reconciles (a
        HEAD each)."""
        if is_multipart_etag(src.etag):
            sizes = self.policy.call(lambda: self.source.part_sizes(src.key, src.etag))
            why = source_layout(sizes, src.size, src.etag, self.threshold)
            if why is None and sizes is not None:
                return sizes
            logger.debug("{}: parts of {} bytes, not the source's ({})", src.key, self.chunk, why)
        chunk = part_size(src.size, self.chunk)
        # An empty object uploaded in parts (one part of 0 bytes) still needs one.
        return [min(chunk, src.size - offset) for offset in range(0, src.size, chunk)] or [0]

    def _copy_part(self, src: SourceObject, upload_id: str, number: int, offset: int, length: int,
                   wanted: Callable[[], bool]) -> tuple[int, str]:
        if self.abort.is_set():
            raise Stopped()
        if not wanted():  # asked here too: the pool takes parts ahead of the loop submitting them
            raise Abandoned(f"given up before part {number}")

        def attempt() -> tuple[int, str]:
            data = self.source.read_range(src.key, offset, length, src.etag)
            return number, self.dest.upload_part(src.key, upload_id, number, data)

        return self.policy.call(attempt)

    def _abort_upload(self, upload: Upload) -> None:
        """Best effort, but loud: an orphaned upload costs the user storage silently."""
        key = upload.key
        try:
            # Not policy.call: on shutdown the stop event is set and would skip the retry waits
            # anyway; one honest attempt plus one more is what a deadline allows.
            for attempt in (1, 2):
                try:
                    self.dest.abort_multipart(key, upload.upload_id)
                    logger.debug("{}: aborted multipart upload", key)
                    self.uploads.finished(upload)
                    return
                except TransientError:
                    if attempt == 2:
                        raise
        except Exception as error:  # noqa: BLE001 - reported, never swallowed silently
            self.uploads.abandoned(upload)
            logger.error("{}: could not abort multipart upload {}: {}; the next reconcile tries again, and the "
                         "destination's lifecycle rule for incomplete uploads is the last net", key, upload.upload_id,
                         error)

    def abort_abandoned_uploads(self, *, dry_run: bool = False) -> int:
        """Abort the multipart uploads that replicator processes started and died
        without finishing (SIGKILL, a second signal, the OOM killer), and those of this
        process whose abort failed: the registry (uploads.py) tells them from anyone
        else's. A dry run only names them. Returns how many were aborted. Never raises:
        what can't be aborted now stays recorded for the next start."""
        aborted = 0
        unreachable: list[ReplicatorError] = []

        def abort(upload: Upload, owner: Owner) -> bool:
            nonlocal aborted
            where = (f"started {upload.started} by this process, whose first abort of it failed"
                     if owner == self.uploads.owner else
                     f"started {upload.started} by {owner}, which stopped before finishing it")
            if dry_run:
                logger.info("{}: would abort unfinished multipart upload {} ({})", upload.key, upload.upload_id,
                            where)
                return False
            if unreachable or self.abort.is_set():
                return False  # the destination is down, or we are stopping: next time
            try:
                gone = self.dest.abort_multipart(upload.key, upload.upload_id)
            except ReplicatorError as error:
                if isinstance(error, TransientError):
                    unreachable.append(error)
                logger.warning("{}: could not abort unfinished multipart upload {} ({}): {}; the next reconcile "
                               "tries again", upload.key, upload.upload_id, where, error)
                return False
            except Exception:  # a bug: said loudly, and the run goes on without this abort
                logger.exception("{}: unexpected error aborting unfinished multipart upload {}", upload.key,
                                 upload.upload_id)
                return False
            if gone:
                aborted += 1
                metrics.orphaned_uploads_aborted.inc()
                logger.info("{}: aborted unfinished multipart upload {} ({})", upload.key, upload.upload_id, where)
            else:
                logger.info("{}: unfinished multipart upload {} ({}) was already gone (completed, or aborted by "
                            "a lifecycle rule)", upload.key, upload.upload_id, where)
            return True

        self.uploads.reclaim(abort)
        if unreachable:
            logger.warning("Unfinished multipart uploads of stopped processes are left for the next reconcile: {}; "
                           "if the destination stays unreachable, {}", unreachable[0], LIFECYCLE_HINT)
        return aborted

    # -- metadata-only changes (tags, retention, legal hold) ----------------------

    def refresh_tags(self, key: str) -> None:
        tags = self.policy.call(lambda: self.source.get_tags(key))
        self.policy.call(lambda: self.dest.put_tags(key, tags))

    def refresh_lock(self, src: SourceObject, *, retention: bool, legal_hold: bool) -> None:
        """Give the destination object the retention and/or legal hold of ``src``, a
        fresh description of the source object (its HEAD carries both)."""
        if retention:
            self.policy.call(lambda: self.dest.put_retention(src.key, src.lock))
        if legal_hold:
            self.policy.call(lambda: self.dest.put_legal_hold(src.key, src.lock.legal_hold))

    # -- delete -----------------------------------------------------------------

    def delete_batch(self, keys: list[str], recheck: Callable[[list[str]], list[str]]
                     ) -> tuple[list[str], dict[str, str]]:
        """Delete keys at the destination (one request per 1000). ``recheck`` returns
        the keys the source still lacks; it runs before every retry, because a retry
        comes seconds after the caller's own check, and a key uploaded again meanwhile
        must not be deleted. Returns the keys it dealt with (a delete sent, or refused), and
        the failures among them. A key outside the mirror's filter is never sent: it is
        refused, returned as failed (a bug upstream of here: the run must not look clean)."""
        outside = {key: OUTSIDE_FILTER for key in keys if not self.key_filter(key)}
        pending = [key for key in keys if key not in outside]
        attempts = 0

        def attempt() -> dict[str, str]:
            nonlocal pending, attempts
            attempts += 1
            if attempts > 1:
                pending = recheck(pending)
            return self.dest.delete_many(pending) if pending else {}

        failed = self.policy.call(attempt)
        metrics.objects_deleted.inc(len(pending) - len(failed))
        return pending + list(outside), failed | outside
