"""One operation per key for every trigger: make the destination's ``key`` match the
source's as it is now.

The event workers and the reconcile both call ``Converger.converge(key, hint)``; so
will a replica taking work from a durable log. A trigger's ``Hint`` says what it saw
(an event's flags, the two listings' entries) and decides only which requests are
worth making first: the source is read again, and what it says decides. The retries
are the copier's and the policy's; the claim on the key is the caller's (the work
queue's for events, ``key_lock`` for the reconcile).

Every outcome but one is final for the state converged on. ``CHANGED`` is not: the
source was rewritten during each attempt, so the caller tries again (the workers put
the key back on the queue; the reconcile counts it failed, which keeps the run dirty
and the next run at it). A replica taking work from a durable log acks on anything
else and redelivers on ``CHANGED``.

A key outside the mirror's filter (filters.py) is refused here, whatever the trigger:
never copied, never deleted (``EXCLUDED``). The listings are filtered before the diff
(reconcile.listed_changes), so only events bring such keys; the check stands here
because this is the one operation every trigger calls.

A deletion the source made is mirrored here for events only: the reconcile deletes in
guarded batches after a clean run (reconcile.py), never one key at a time.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from loguru import logger

from . import diff, drift
from .copier import Copier
from .errors import NotFound, ReplicatorError, SourceChanged
from .filters import EVERYTHING, KeyFilter
from .model import ObjectInfo, SourceObject
from .retry import RetryPolicy
from .stores.base import DestinationStore, SourceStore


class Outcome(enum.Enum):
    COPIED = "copied"  # the bytes written, and with them attributes, tags and lock settings
    REFRESHED = "refreshed"  # tags, retention or legal hold rewritten over bytes in sync
    IN_SYNC = "in sync"  # nothing to do
    DELETED = "deleted"
    GONE = "gone"  # the source lacks it; the destination keeps it (S3_SYNC_DELETE=false, or not ours to delete)
    # The source was rewritten during every attempt at the copy: each was abandoned
    # whole (no half-written object, no upload left), and the destination still holds
    # what it held before. Try again: nothing failed, but nothing converged either.
    CHANGED = "changed while copying"
    # Outside the mirror's filter (S3_SYNC_PREFIX, S3_SYNC_FILTER): not the mirror's,
    # at either side; nothing was read, copied or deleted.
    EXCLUDED = "excluded by the filter"


@dataclass(frozen=True)
class Hint:
    """What a trigger saw of a key. All fields are hints: they choose the cheapest
    requests, never the outcome."""

    content: bool = True  # the bytes may differ
    tags: bool = False
    retention: bool = False
    legal_hold: bool = False
    attributes: bool = False  # Content-Type or user metadata may differ over the same bytes
    removed: bool = False  # the newest event was a removal
    size: int | None = None  # the object's size, if the trigger saw it
    # The reconcile's view: the destination lacks the key (``missing``), or the two
    # listings agree on the size but not the ETag (``listed``: source and destination
    # entries), which only the copy's recorded source ETag can settle.
    missing: bool = False
    listed: tuple[ObjectInfo, ObjectInfo] | None = None
    may_delete: bool = False  # mirror a deletion the source made (events with S3_SYNC_DELETE)

    @property
    def refreshes(self) -> bool:
        """It asks for what is rewritten without a copy: tags, retention, legal hold."""
        return self.tags or self.retention or self.legal_hold


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    detail: str = ""  # for the log: "12 bytes", "tags", "retention and legal hold"
    size: int = 0  # bytes copied
    error: SourceChanged | None = None  # CHANGED: the last attempt's refusal


class Converger:
    def __init__(self, source: SourceStore, dest: DestinationStore, copier: Copier, policy: RetryPolicy, *,
                 threshold: int, key_filter: KeyFilter = EVERYTHING, recheck: bool = False):
        self.source = source
        self.dest = dest
        self.copier = copier
        self.policy = policy
        self.threshold = threshold
        self.key_filter = key_filter
        # Several processes (S3_SYNC_EVENTS=jetstream) may work on one key at once, where
        # one process's queue holds each key once. Then the source is stated again after
        # each write: an older version's copy that landed after a newer one's, or a delete
        # that landed after a re-upload's copy, is found and made good, by whichever
        # process wrote last. One HEAD per write.
        self.recheck = recheck

    def converge(self, key: str, hint: Hint) -> Result:
        if not self.key_filter(key):
            logger.debug("{}: outside the mirror's filter ({}); neither copied nor deleted", key, self.key_filter,
                         event="excluded", key=key)
            return Result(Outcome.EXCLUDED)
        if hint.listed is not None:
            if self.in_sync_by_record(key, hint.listed):
                return Result(Outcome.IN_SYNC)
            return self._copy(key, hint)
        if hint.missing or (hint.content and not hint.removed and (hint.size or 0) <= self.threshold):
            # The common case, a small upload (or a key the destination lacks): copy
            # straight away. The copy's own GET reads the source as it is now (a newer
            # version, or nothing), so a HEAD on each side first would only add two
            # requests, which cost more CPU than the copy's GET (profiled in
            # docs/benchmarks-events.md). The price is at most one redundant small copy
            # when another trigger copied the same key moments before.
            return self._copy(key, hint)
        current = self.policy.call(lambda: self.source.stat(key))
        if current is None:
            return self._gone(key, hint)
        if hint.content or hint.attributes:
            # Large objects (and re-uploads after a delete event) are checked first: a
            # redundant multipart copy is expensive. So are attribute changes: the bytes
            # may be in sync, and a copy is how Content-Type and user metadata are rewritten.
            copy = self.policy.call(lambda: self.dest.stat(key))
            if copy is None or not drift.same_bytes(current, copy) or (
                    hint.attributes and not drift.same_attributes(current, copy)):
                return self._copy(key, hint)  # a copy carries tags and lock settings along
            if not hint.refreshes:
                return Result(Outcome.IN_SYNC)
        return self._refresh(key, hint, current)

    def in_sync_by_record(self, key: str, listed: tuple[ObjectInfo, ObjectInfo]) -> bool:
        """Listings of the same size and other ETags: in sync if the copy records the
        source's ETag (and, where both listed them, the attributes agree). One HEAD."""
        source, dest = listed
        return diff.in_sync_by_record(source, dest, self.policy.call(lambda: self.dest.head_source_etag(key)))

    def _copy(self, key: str, hint: Hint) -> Result:
        try:
            copied = self.copier.copy(key)
        except SourceChanged as error:  # the copier's restarts are spent
            return Result(Outcome.CHANGED, str(error), error=error)
        if copied is None:
            return self._gone(key, hint)
        if self.recheck:
            current = self.policy.call(lambda: self.source.stat(key))
            if current is None or current.etag != copied.etag:
                # Written meanwhile (or deleted): our copy may have landed after the newer
                # one's, and must not stand. Again, from the source as it is now.
                return Result(Outcome.CHANGED, f"changed at the source while {copied.size} bytes were copied",
                              copied.size)
        return Result(Outcome.COPIED, f"{copied.size} bytes", copied.size)

    def _refresh(self, key: str, hint: Hint, current: SourceObject) -> Result:
        """Tags, retention and legal hold over bytes in sync. A destination without the
        object gets all of it: the copy carries them."""
        done = []
        try:
            if hint.tags:
                self.copier.refresh_tags(key)
                done.append("tags")
            if hint.retention or hint.legal_hold:
                self.copier.refresh_lock(current, retention=hint.retention, legal_hold=hint.legal_hold)
                done += [name for name, asked in (("retention", hint.retention), ("legal hold", hint.legal_hold))
                         if asked]
        except NotFound:  # not at the destination (or only its delete marker): the whole object
            return self._copy(key, hint)
        return Result(Outcome.REFRESHED, " and ".join(done))

    def _gone(self, key: str, hint: Hint) -> Result:
        """The source doesn't have the key (any more)."""
        if not hint.may_delete:
            return Result(Outcome.GONE)
        sent, failed = self.copier.delete_batch([key], recheck=self._still_gone)
        if failed:
            raise ReplicatorError(f"destination: delete {key}: {failed[key]}")
        if not sent:  # uploaded again while a delete was being retried: copy that
            return self._copy(key, Hint())
        if self.recheck and self.policy.call(lambda: self.source.stat(key)) is not None:
            # Uploaded again, and maybe copied by another process, just before our delete
            # landed: the source has it, so the destination must.
            logger.debug("{}: uploaded again as it was deleted at the destination; copying it", key)
            return self._copy(key, Hint())
        logger.debug("{}: deleted at the destination", key)
        return Result(Outcome.DELETED)

    def _still_gone(self, keys: list[str]) -> list[str]:
        return [key for key in keys if self.policy.call(functools.partial(self.source.stat, key)) is None]
