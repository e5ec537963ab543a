"""One full reconciliation: list both sides, diff, copy, then (maybe) delete.

The order of a run, and why:
1. Health check: both endpoints answer, credentials work, the source bucket exists,
   the destination bucket exists or is created. A clear error beats a listing failure.
   Then the multipart uploads crashed replicator processes left unfinished are
   aborted (copier.abort_abandoned_uploads; uploads.py tells them from others').
2. Stream both listings (each in its own thread, a bounded distance ahead) through
   the pure merge-join in ``diff.py``. Copies go to a bounded worker pool as they are
   found; deletion candidates are spooled to a temporary file, so neither a huge
   bucket nor a huge deletion set lives in memory.
3. Deletes only after everything else, and only if the run was clean: any listing
   or copy error means the listings can't be trusted to say what the source lacks
   (rclone's rule). Then the guards: an empty source, or more deletions than the
   configured share of the destination, refuse the deletions unless allowed.
4. Each delete candidate is re-checked against the source just before it goes: a
   key uploaded after the source listing passed it must not be deleted.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import KW_ONLY, dataclass, field
from typing import TextIO

from loguru import logger

from . import diff
from .config import Settings
from .converge import Converger, Hint, Outcome
from .copier import Copier
from .errors import FatalError, GuardRefused, ReplicatorError, StoreError, log_fields
from .filters import KeyFilter
from .model import Action, Change, ObjectInfo, RunStats
from .observability import metrics
from .pool import BoundedExecutor, prefetch
from .printable import printable
from .progress import Progress, Reporter, Snapshot
from .ranges import Budget, KeyRange, Sample
from .retry import RetryPolicy, Stopped
from .stores.base import DestinationStore, SourceStore

DELETE_BATCH = 1000
MAX_LOGGED_FAILURES = 20

# Claims keys so no event worker acts on them meanwhile (workqueue.KeyedQueue.claim).
KeyLock = Callable[[list[str]], AbstractContextManager]


def _no_lock(keys: list[str]) -> AbstractContextManager:
    return nullcontext()


def check_endpoints(source: SourceStore, dest: DestinationStore, *, create: bool,
                    policy: RetryPolicy | None = None) -> None:
    """Fail with a specific error unless both sides are usable. With a policy, transient
    failures (a server still starting, a 503) are retried like any other request."""
    call = policy.call if policy is not None else (lambda fn: fn())
    call(source.check)
    logger.info("✓ Source bucket accessible: {}", source.bucket)
    call(lambda: dest.check(create=create))
    logger.info("✓ Destination bucket accessible: {}", dest.bucket)


def delete_guard(stats: RunStats, deletes: int, settings: Settings, force: bool) -> str | None:
    """Why the planned deletions must not happen, or None. Pure."""
    if force or deletes == 0:
        return None
    if stats.source_objects == 0:
        if settings.allow_empty_source:
            # An empty source means deleting 100%: the share guard below would refuse
            # what the user has just explicitly allowed.
            return None
        return ("the source bucket listed no objects but the destination has some; if the source "
                "really is empty on purpose, set S3_SYNC_ALLOW_EMPTY_SOURCE=true")
    limit = stats.dest_objects * settings.delete_max_percent / 100
    if deletes > settings.delete_guard_floor and deletes > limit:
        return (f"{deletes} deletions exceed S3_SYNC_DELETE_MAX_PERCENT={settings.delete_max_percent:g}% "
                f"of the destination's {stats.dest_objects} objects; run `replicator reconcile "
                f"--allow-mass-delete` once if this is intended")
    return None


def refused(stats: RunStats, reason: str, deletes: int, *, dry_run: bool) -> None:
    """Record and report that a guard refused ``deletes`` deletions (of a run, or of a
    shared pass): in ``stats``, the metric and the log."""
    stats.guard = reason
    if not dry_run:  # a dry run only shows what a real one would be refused
        metrics.delete_guard_refusals.inc()
    logger.error("{}", GuardRefused(reason, would_delete=deletes, destination_objects=stats.dest_objects,
                                    source_objects=stats.source_objects))


def listed_changes(source: SourceStore, dest: DestinationStore, policy: RetryPolicy, stats: RunStats, *,
                   until: Callable[[], bool], key_filter: KeyFilter, key_range: KeyRange | None = None,
                   sample: Sample | None = None) -> Generator[Change, None, None]:
    """The diff of both listings, as every full comparison walks it (a reconcile, and
    ``verify``): each listing resumes after a transient failure, runs in a thread of its
    own a bounded distance ahead, and is counted into ``stats``. Attributes come in both
    listings where the destination can list them (MinIO): then a metadata rewrite over
    the same bytes shows in the diff too. It ends early once ``until()`` is true (a
    fatal error, a stop). Close it to stop both listings' threads.

    Both listings hold only the keys of ``key_filter``: under its prefix (asked of the
    servers), and passing its rules (asked here, before the diff and the counts). So a
    destination object outside the mirror is never a difference, never a delete
    candidate, and not counted into the share the delete guard allows.

    With ``key_range``, both listings hold only its keys (one range of a shared pass,
    ranges.py), and ``sample`` samples the source's."""
    prefix = key_filter.prefix
    changes = diff.plan(
        _counted(_within(list_with(source.list_from, prefix=prefix, metadata=dest.lists_metadata), key_range),
                 "source", policy, stats, key_filter, sample),
        _counted(_within(list_with(dest.list_from, prefix=prefix), key_range), "destination", policy, stats,
                 key_filter))
    with closing(changes):  # closed with this generator, or when it ends early
        for change in changes:
            if until():
                return
            yield change


def list_with(list_from: Callable[..., Iterator[ObjectInfo]], **options: object
            ) -> Callable[[str | None], Iterator[ObjectInfo]]:
    """``list_from`` with those of its options (``prefix``, ``metadata``) that are set;
    ``list_from`` itself when none is."""
    given = {name: value for name, value in options.items() if value}
    return (lambda after: list_from(after, **given)) if given else list_from


def _within(list_from: Callable[[str | None], Iterator[ObjectInfo]], key_range: KeyRange | None
            ) -> Callable[[str | None], Iterator[ObjectInfo]]:
    """``list_from`` limited to ``key_range``: started after its lower bound (resumed
    after a later key), and ended past its upper one."""
    if key_range is None or key_range.whole:
        return list_from

    def listing(after: str | None) -> Iterator[ObjectInfo]:
        start = after if after is not None else key_range.after
        items = list_from(start)
        try:
            for item in items:
                if not key_range.holds(item.key):
                    return
                yield item
        finally:
            close = getattr(items, "close", None)  # a generator's: no page is fetched past the range
            if close is not None:
                close()

    return listing


def _counted(list_from: Callable[[str | None], Iterator[ObjectInfo]], side: str, policy: RetryPolicy,
             stats: RunStats, key_filter: KeyFilter, sample: Sample | None = None) -> Iterator[ObjectInfo]:
    # Filtered after the resumption: a listing that fails resumes after the last key it
    # listed, whether or not the filter let that one through.
    keep = None if key_filter.everything else key_filter
    for item in prefetch(policy.resumable(list_from, lambda item: item.key), name=f"list-{side}"):
        if keep is not None and not keep(item.key):
            continue
        if side == "source":
            stats.source_objects += 1
            if sample is not None:
                sample.add(item.key)
        else:
            stats.dest_objects += 1
        yield item


@dataclass(eq=False)
class Reconciler:
    source: SourceStore
    dest: DestinationStore
    copier: Copier
    converger: Converger
    settings: Settings
    policy: RetryPolicy
    _: KW_ONLY
    key_lock: KeyLock = _no_lock
    out: TextIO = field(default_factory=lambda: sys.stdout)
    _run_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)  # never two at once
    # The progress of the run now, or of the last one once it ended (``done``): its final
    # figures are the terminal display's last frame.
    last_progress: Progress | None = field(default=None, init=False, repr=False)

    @property
    def stop(self) -> threading.Event:
        return self.policy.stop

    def run(self, *, dry_run: bool = False, allow_mass_delete: bool = False,
            listening: Callable[[], bool] | None = None, fence: Callable[[], bool] | None = None,
            key_range: KeyRange | None = None, budget: Budget | None = None, sample: Sample | None = None,
            hold_deletes: bool = False) -> RunStats:
        """One full reconcile. ``listening``, when given, is asked as the run ends whether
        the notification listener was connected throughout it. Only then should the
        events have brought what the run had to copy or delete, and only then is that
        counted as repaired. The service gives none until a reconcile has succeeded (the
        ones before are the initial copy), and a reconcile by hand has no listener.
        ``fence``, when given, is asked before each batch of deletes whether this process
        still holds the reconcile lease (lease.py): once it says no, nothing more is
        deleted.

        One range of a pass several processes share (shared_reconcile.py) gives its
        ``key_range`` and a ``sample`` to fill with the source keys listed. Its first
        round ``hold_deletes``: it only counts them. Its second, once the pass's guard
        allowed them, draws them from the pass's ``budget`` (instead of the run's own
        guard: the threshold is the pass's)."""
        with self._run_lock, metrics.reconcile_in_progress.track_inprogress():
            run = _Run(self, dry_run, allow_mass_delete, listening, fence, key_range=key_range, budget=budget,
                       sample=sample, hold_deletes=hold_deletes)
            self.last_progress = run.progress
            try:
                return run.execute()
            except Exception:  # an endpoint unusable (check_endpoints), or a bug: the caller logs it
                if not dry_run:
                    metrics.reconciles.labels("failed").inc()
                raise
            finally:
                run.progress.done = True

    def progress(self) -> Snapshot | None:
        """How far the reconcile running now has got; None when none runs."""
        progress = self.last_progress
        return progress.snapshot() if progress is not None and not progress.done else None


def _described(key_range: KeyRange) -> str:
    after = "the first" if key_range.after is None else f"after {printable(key_range.after)}"
    until = "the last" if key_range.until is None else f"{printable(key_range.until)}"
    return f"{after} to {until}"


class _Run:
    """The state of one run; lives as long as the run."""

    def __init__(self, owner: Reconciler, dry_run: bool, force_delete: bool,
                 listening: Callable[[], bool] | None, fence: Callable[[], bool] | None = None, *,
                 key_range: KeyRange | None = None, budget: Budget | None = None, sample: Sample | None = None,
                 hold_deletes: bool = False):
        self.o = owner
        self.hold_deletes = hold_deletes
        self.key_range = key_range
        self.budget = budget
        self.sample = sample
        self.dry_run = dry_run
        self.force_delete = force_delete
        self.listening = listening
        self.fence = fence
        self.fenced = False
        self.stats = RunStats(dry_run=dry_run)
        self.progress = Progress(self.stats)
        self.errors: list[BaseException] = []
        self.fatal: BaseException | None = None
        self.lock = threading.Lock()

    # -- bookkeeping -----------------------------------------------------------------

    def _failed(self, key: str, error: BaseException) -> None:
        with self.lock:
            self.stats.failed += 1
            self.errors.append(error) if len(self.errors) < 1000 else None
            count = self.stats.failed
            if isinstance(error, FatalError) and self.fatal is None:
                self.fatal = error
        metrics.failures.labels(metrics.failure_reason(error)).inc()
        if count <= MAX_LOGGED_FAILURES:
            logger.error("{}: {}", key, error, event="failed", trigger="reconcile", **log_fields(error))
        elif count == MAX_LOGGED_FAILURES + 1:
            logger.error("more failures; logging only the count from here on")

    def _print(self, action: str, key: str, size: int) -> None:
        with self.lock:
            print(f"{action:<7} {printable(key)}  ({size} bytes)", file=self.o.out)

    # -- the run ---------------------------------------------------------------------

    def execute(self) -> RunStats:
        started = time.monotonic()
        o = self.o
        try:
            check_endpoints(o.source, o.dest, create=not self.dry_run, policy=o.policy)
        except Stopped:  # asked to stop while backing off: nothing began, nothing to report
            logger.warning("stopped before the run began")
            return self.stats
        part = "" if self.key_range is None or self.key_range.whole else f", keys {_described(self.key_range)}"
        logger.info("Reconciling {} → {}{}{}", o.settings.source_bucket, o.settings.dest_bucket, part,
                    " (dry run: nothing will change)" if self.dry_run else "")
        # What a crashed run left: at every reconcile, not only at a start, so that the
        # sidecar also cleans up after an operator's reconcile that was killed. Once per
        # pass: by its first range.
        if self.key_range is None or self.key_range.after is None:
            o.copier.abort_abandoned_uploads(dry_run=self.dry_run)
        with tempfile.TemporaryFile("w+", encoding="utf-8") as spool, Reporter(self.progress,
                                                                                o.settings.progress_interval):
            with BoundedExecutor(o.settings.workers, name="copy") as pool:
                try:
                    # closing: a run that stops early stops both listings' threads now.
                    with closing(listed_changes(o.source, o.dest, o.policy, self.stats,
                                                until=lambda: self.fatal is not None or o.stop.is_set(),
                                                key_filter=o.settings.key_filter, key_range=self.key_range,
                                                sample=self.sample)) as changes:
                        for change in changes:
                            self.progress.compared += 1
                            if change.action is Action.UNCHANGED:
                                with self.lock:
                                    self.stats.unchanged += 1
                            elif change.action is Action.DELETE:
                                spool.write(json.dumps([change.key, change.size]) + "\n")
                                self.stats.planned_deletes += 1
                            else:
                                self.progress.found_copy(change.size)
                                pool.submit(self._apply, change)
                        self.progress.listed = True
                except StoreError as error:  # a listing failed after its retries, or was out of order
                    self._failed("listing", error)
                    self.fatal = self.fatal or error
                except Stopped:
                    pass
            if o.stop.is_set() and not self.errors:
                self.errors.append(Stopped())
            self._deletions(spool, self.stats.planned_deletes)
        self.stats.duration = time.monotonic() - started
        metrics.reconcile_duration.observe(self.stats.duration)
        # Counted as the run ends, not per object: only now is it known whether the
        # listener stayed connected, that is whether the events should have brought these.
        if not self.dry_run and self.listening is not None and self.listening():
            metrics.reconcile_repaired.inc(self.stats.copied + self.stats.updated + self.stats.deleted)
        self._summary()
        return self.stats

    def _apply(self, change: Change) -> None:
        """Converge one key the diff found different (or, in a dry run, report it).
        Runs on a pool thread."""
        key = change.key
        o = self.o
        listed = ((change.source, change.dest) if change.action is Action.VERIFY
                  and change.source is not None and change.dest is not None else None)  # a VERIFY has both
        try:
            with o.key_lock([key]):
                if self.dry_run:
                    self._plan(change, listed)
                    return
                result = o.converger.converge(key, Hint(missing=change.action is Action.COPY,
                                                        listed=listed))
        except (ReplicatorError, Stopped) as error:
            if not isinstance(error, Stopped):
                self._failed(key, error)
            return
        except Exception as error:  # a bug must fail the run, not kill the pool silently
            logger.exception("{}: unexpected error", key)
            self._failed(key, error)
            return
        if result.outcome is Outcome.IN_SYNC:
            with self.lock:
                self.stats.unchanged += 1
            return
        if result.outcome is Outcome.CHANGED and result.error is not None:
            self._failed(key, result.error)  # not replicated: the run is dirty, the next one tries again
            return
        if result.outcome is not Outcome.COPIED:  # gone from the source since it was listed
            with self.lock:
                self.stats.skipped += 1
            return
        with self.lock:
            if change.action is Action.COPY:
                self.stats.copied += 1
            else:
                self.stats.updated += 1
            self.stats.bytes_copied += result.size
        metrics.objects_copied.labels("reconcile").inc()
        verb = "copied" if change.action is Action.COPY else "updated"
        logger.debug("{}: {} ({} bytes)", key, verb, result.size, event=verb, key=key, bytes=result.size,
                     trigger="reconcile")

    def _plan(self, change: Change, listed) -> None:
        """A dry run's line for ``change``, after the HEAD that tells a pair in sync."""
        if listed is not None and self.o.converger.in_sync_by_record(change.key, listed):
            with self.lock:
                self.stats.unchanged += 1
            return
        action = Action.COPY if change.action is Action.COPY else Action.UPDATE
        with self.lock:
            self.stats.planned_bytes += change.size
            if action is Action.COPY:
                self.stats.copied += 1
            else:
                self.stats.updated += 1
        self._print(action.value, change.key, change.size)

    # -- deletions ---------------------------------------------------------------------

    def _deletions(self, spool: TextIO, deletes: int) -> None:
        o = self.o
        if not o.settings.delete:
            if deletes:
                logger.info("{} objects exist only at the destination; kept (S3_SYNC_DELETE=false)", deletes)
            return
        if self.errors or self.fatal is not None:
            # Said on every dirty run, however far it got: a listing that failed on its
            # first page has found no deletions yet, and the operator still needs to know
            # that none would have been made.
            logger.warning("deletions skipped: this run had errors, and deleting after an incomplete run could "
                           "remove objects the source still has ({} found so far; the next clean run makes them)",
                           deletes)
            return
        if not deletes:
            return
        if self.hold_deletes:
            logger.info("{} objects exist only at the destination in these keys; the pass decides their deletion "
                        "once every range is listed", deletes)
            return
        if self.budget is not None:  # one range of a pass: the pass's threshold, not this range's
            reason = None if self.dry_run else self.budget.draw(deletes)
        else:
            reason = delete_guard(self.stats, deletes, o.settings, self.force_delete)
        if reason:
            refused(self.stats, reason, deletes, dry_run=self.dry_run)
            return
        spool.seek(0)
        batch: list[tuple[str, int]] = []
        for line in spool:
            key, size = json.loads(line)
            batch.append((key, size))
            if len(batch) == DELETE_BATCH:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _still_absent(self, keys: list[str]) -> list[str]:
        """The keys the source still lacks. A key the source has now (uploaded after the
        listing passed it) is kept; a key we can't check is kept and counted as a failure."""
        o = self.o
        absent: list[str] = []

        def check(key: str) -> None:
            try:
                found = o.policy.call(lambda: o.source.stat(key))
            except ReplicatorError as error:
                self._failed(key, error)
                return
            if found is None:
                with self.lock:
                    absent.append(key)
            else:
                logger.info("{}: appeared at the source during the run; not deleted", key)
                with self.lock:
                    self.stats.skipped += 1

        with BoundedExecutor(o.settings.workers, name="recheck") as pool:
            for key in keys:
                pool.submit(check, key)
        return sorted(absent)

    def _delete_batch(self, entries: list[tuple[str, int]]) -> None:
        o = self.o
        if o.stop.is_set():
            return
        if self.dry_run:
            for key, size in entries:
                self._print("delete", key, size)
            with self.lock:
                self.stats.deleted += len(entries)
            return
        if self.fence is not None and (self.fenced or not self.fence()):
            if not self.fenced:
                logger.error("lost the reconcile lease to another replicator process: no more deletes in this run "
                             "(the holder's reconcile decides them)")
            self.fenced = True
            with self.lock:
                self.stats.failed += len(entries)
            return
        keys = [key for key, _ in entries]
        # The claim covers the re-check and the delete, so an event worker can't copy a
        # key the source just received in between and then see it deleted.
        with o.key_lock(keys):
            keys = self._still_absent(keys)
            try:
                sent, failed = o.copier.delete_batch(keys, recheck=self._still_absent)
            except ReplicatorError as error:
                for key in keys:
                    self._failed(key, error)
                return
        for key, code in failed.items():
            self._failed(key, StoreError("destination", "delete", key, code))
        done = len(sent) - len(failed)
        with self.lock:
            self.stats.deleted += done
        for key in sent:
            if key not in failed:
                logger.debug("{}: deleted", key, event="deleted", key=key, trigger="reconcile")

    # -- output ------------------------------------------------------------------------

    def _summary(self) -> None:
        s = self.stats
        mib = s.bytes_copied / (1024 * 1024)
        changes = (f"would copy {s.copied}, would update {s.updated}, would delete {s.deleted}" if self.dry_run
                   else f"{s.copied} copied, {s.updated} updated, {s.deleted} deleted")
        line = (f"{changes}, {s.unchanged} unchanged, {s.failed} failed, {s.skipped} skipped; {mib:.1f} MiB in "
                f"{s.duration:.1f}s ({mib / s.duration if s.duration else 0:.1f} MiB/s); source {s.source_objects} "
                f"objects, destination {s.dest_objects}")
        fields = {"trigger": "reconcile", "duration_s": round(s.duration, 3), "bytes": s.bytes_copied,
                  "copied": s.copied, "updated": s.updated, "deleted": s.deleted, "unchanged": s.unchanged,
                  "failed": s.failed, "skipped": s.skipped, "source_objects": s.source_objects,
                  "dest_objects": s.dest_objects}
        if self.dry_run:
            logger.info("Dry run: {} (planned bytes: {})", line, s.planned_bytes, event="dry_run", **fields)
        elif s.failed or self.errors:
            logger.error("Sync failed: {}", line, event="reconcile_failed", **fields)
            metrics.reconciles.labels("failed").inc()
        elif s.guard:
            logger.error("Sync incomplete, deletions refused: {}", line, event="reconcile_refused_by_guard", **fields)
            metrics.reconciles.labels("refused_by_guard").inc()
        else:
            logger.success("✓ Sync completed successfully: {}", line, event="reconcile_completed", **fields)
            metrics.reconciles.labels("success").inc()
            metrics.reconcile_last_success.set_to_current_time()
