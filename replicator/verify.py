"""``replicator verify``: proof that the mirror is whole, as ``rclone check`` and
``mc diff`` give it. It changes nothing.

It walks both listings with the reconcile's own diff (``reconcile.listed_changes``)
and settles each pair with the reconcile's own rules (``diff.compare``, then
``diff.in_sync_by_record``: one destination HEAD for a pair of the same size and
other ETags). So a pair a reconcile leaves alone is in sync here too, and whatever a
reconcile would copy or delete is a difference. Each key that is missing (only at the
source), extra (only at the destination, whether or not a reconcile would delete it)
or different is printed on stdout, one line each, in key order; then one summary line
goes to the log.

What it never does: write, delete, create a bucket, abort an upload (a reconcile's
first step), or open the state directory. Only GET and HEAD requests leave it.

**Reading the bytes.** With ``content``, every pair of the same size is read on both
sides and the SHA-256 of the two bodies compared: a proof of the bytes, where the
listings can only show what the ETags and the copy's record claim. With ``sample``,
N pairs are read, drawn at random from those the listings show in sync (the others
are reported already) by reservoir sampling as the listing streams by, so that only N
pairs are held, however large the bucket. What reading finds is added to what the
listings say, never put in its place: a pair is in sync only when both agree.

A read streams the body ``CHUNK`` bytes at a time into the digest, on at most
``S3_SYNC_WORKERS`` threads (a bounded pool, as the copies use): at most that many
chunks are held at once, whatever the objects' sizes. A copy, which holds a whole
small object, needs a byte budget for that; a digest never holds more than a chunk.
"""

from __future__ import annotations

import enum
import hashlib
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass, field
from typing import Generic, TextIO, TypeVar

from loguru import logger

from . import diff
from .config import MiB, Settings
from .errors import FatalError, PermanentError, ReplicatorError, StoreError, TransientError
from .model import Action, Change, ObjectInfo, RunStats
from .observability import metrics
from .pool import BoundedExecutor
from .printable import printable
from .reconcile import check_endpoints, delete_guard, listed_changes
from .retry import RetryPolicy, Stopped
from .stores.base import DestinationStore, SourceStore

CHUNK = MiB  # what one read holds at a time
# Findings waiting to be printed behind a key whose comparison still runs (a HEAD, a
# large read): at most this many, then the listing waits for it.
WINDOW = 10_000
MAX_LOGGED_FAILURES = 20

T = TypeVar("T")


# --- what is reported (pure) -----------------------------------------------------------

class Kind(enum.Enum):
    MISSING = "missing"  # only at the source
    EXTRA = "extra"  # only at the destination
    DIFFERENT = "different"


@dataclass(frozen=True)
class Finding:
    kind: Kind
    key: str
    detail: str

    def line(self) -> str:
        """The kind, the key (escaped: no key can forge a line; from the 11th column),
        and what differs, in the line's last parentheses."""
        return f"{self.kind.value:<9} {printable(self.key)}  ({printable(self.detail)})"


def missing(source: ObjectInfo) -> Finding:
    return Finding(Kind.MISSING, source.key, f"{source.size} bytes")


def extra(dest: ObjectInfo, *, delete: bool) -> Finding:
    # Extra all the same: a mirror that keeps what the source deleted is not whole, and
    # the line says why a reconcile leaves it there.
    return Finding(Kind.EXTRA, dest.key, f"{dest.size} bytes" + ("" if delete else "; kept: S3_SYNC_DELETE=false"))


def differences(change: Change, recorded: str | None = None) -> list[str]:
    """What differs in a pair both sides list, by the reconcile's rules; [] when in sync.
    ``recorded`` is the source ETag the destination object records (from its HEAD),
    which the rules need only where ``change.action`` is VERIFY."""
    source, dest = change.source, change.dest
    assert source is not None and dest is not None
    if change.action is Action.UNCHANGED or (
            change.action is Action.VERIFY and diff.in_sync_by_record(source, dest, recorded)):
        return []
    found = []
    if source.size != dest.size:
        found.append(f"size: source {source.size} bytes, destination {dest.size}")
    elif source.etag != dest.etag and recorded != source.etag:
        record = f"source ETag {recorded}" if recorded else "no source ETag"
        found.append(f"ETag: source {source.etag}, destination {dest.etag}, which records {record}")
    names = attribute_differences(source.attributes, dest.attributes)
    if names:
        found.append("attributes: " + ", ".join(names))
    return found


def attribute_differences(source: frozenset[tuple[str, str]] | None,
                          dest: frozenset[tuple[str, str]] | None) -> list[str]:
    """The names of the listed attributes (drift.listed_attributes) that differ, or that
    one side lacks; none where either listing carries none. Names only: a value may be
    long, or something its owner would not want in a report."""
    if source is None or dest is None:
        return []
    return sorted({name for name, _ in source ^ dest})


def content_differences(found: list[str], source_digest: str, dest_digest: str) -> list[str]:
    """``found`` (the listings' verdict on a pair) with the verdict of reading both sides."""
    if source_digest != dest_digest:
        return [*found, f"content: sha256 source {source_digest}, destination {dest_digest}"]
    if found:
        return [*found, f"bytes equal (sha256 {source_digest})"]
    return []


class Reservoir(Generic[T]):
    """A uniform random sample of at most ``size`` items from a stream of unknown
    length, holding only those (Vitter's algorithm R): the n-th item offered takes the
    place of a random kept one with probability size/n."""

    def __init__(self, size: int, rng: random.Random):
        self.size = size
        self.seen = 0
        self.items: list[T] = []
        self._rng = rng

    def offer(self, item: T) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.size:
            self.items[slot] = item


@dataclass
class Tally:
    """The counters of one verify."""

    compared: int = 0  # keys, both listings merged
    found: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(Kind, 0))
    read: int = 0  # pairs whose bytes were read on both sides
    bytes_read: int = 0  # both sides together
    failed: int = 0  # keys (or a listing) that could not be compared
    complete: bool = False  # both listings to their end, every key settled, not stopped
    duration: float = 0.0

    @property
    def in_sync(self) -> bool:
        return self.complete and not any(self.found.values())


def extra_note(extras: int, listed: RunStats, settings: Settings) -> str:
    """What a reconcile would do with the extra objects, for the summary."""
    if not extras:
        return ""
    if not settings.delete:
        return " (kept: S3_SYNC_DELETE=false)"
    refused = delete_guard(listed, extras, settings, force=False)
    return f" (a reconcile would not delete them: {refused})" if refused else ""


def summary(tally: Tally, listed: RunStats, how: str, note: str = "") -> tuple[str, str]:
    """The log level and the line that end a verify. ``how``: what was compared;
    ``note``: extra_note's."""
    found = tally.found
    counts = (f"{found[Kind.MISSING]} missing, {found[Kind.EXTRA]} extra{note}, "
              f"{found[Kind.DIFFERENT]} different")
    scope = (f"{tally.compared} objects compared (source {listed.source_objects}, destination "
             f"{listed.dest_objects}); {how}; {tally.duration:.1f}s")
    if not tally.complete:
        why = f"{tally.failed} could not be compared" if tally.failed else "stopped before the end"
        return "ERROR", f"Verify failed: {why}; found so far: {counts}; {scope}"
    if not tally.in_sync:
        return "ERROR", f"Verify: out of sync: {counts}; {scope}"
    return "SUCCESS", f"✓ Verify: in sync: {scope}"


def _done(value: T) -> Future[T]:
    future: Future[T] = Future()
    future.set_result(value)
    return future


# --- the run ---------------------------------------------------------------------------

class Verifier:
    """One verify of ``source`` against ``dest``: build one, ``run()`` it once."""

    def __init__(self, source: SourceStore, dest: DestinationStore, policy: RetryPolicy, settings: Settings, *,
                 content: bool = False, sample: int = 0, out: TextIO | None = None,
                 rng: random.Random | None = None):
        self.source = source
        self.dest = dest
        self.policy = policy
        self.settings = settings
        self.content = content
        self.reservoir: Reservoir[tuple[ObjectInfo, ObjectInfo]] | None = (
            Reservoir(sample, rng or random.Random()) if sample else None)
        self.out = out or sys.stdout
        self.tally = Tally()
        self.listed = RunStats()  # each listing's count, as the reconcile's guards read them
        self.fatal: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def stop(self) -> threading.Event:
        return self.policy.stop

    def run(self) -> Tally:
        """Compare, print, count. The endpoints' check raises (ReplicatorError, Stopped);
        anything after it is counted, logged and summed up instead."""
        started = time.monotonic()
        check_endpoints(self.source, self.dest, create=False, policy=self.policy)
        logger.info("Verifying {} → {}, {}; nothing will change", self.settings.source_bucket,
                    self.settings.dest_bucket, self._mode())
        pending: deque[Future[Finding | None]] = deque()
        with BoundedExecutor(self.settings.workers, name="verify") as pool:
            self._compare_listings(pool, pending)
            self._drain(pending)  # the HEADs still running may add to the sample
            if self.reservoir is not None and not self.tally.failed:
                self._read_sample(pool, pending)
            self._drain(pending)
        tally = self.tally
        tally.complete = not (tally.failed or self.stop.is_set())
        tally.duration = time.monotonic() - started
        if tally.complete:
            metrics.verify_objects_checked.set(tally.compared)
            for kind in Kind:
                metrics.verify_differences.labels(kind.value).set(tally.found[kind])
            metrics.verify_last_run.set_to_current_time()
        level, line = summary(tally, self.listed, self._compared(),
                              extra_note(tally.found[Kind.EXTRA], self.listed, self.settings))
        logger.log(level, "{}", line)
        return tally

    def _compare_listings(self, pool: BoundedExecutor, pending: deque[Future[Finding | None]]) -> None:
        try:
            with closing(listed_changes(self.source, self.dest, self.policy, self.listed,
                                        until=lambda: self.fatal is not None or self.stop.is_set(),
                                        key_filter=self.settings.key_filter)) as changes:
                for change in changes:
                    self.tally.compared += 1
                    self._emit(pending, self._compare(change, pool))
        except StoreError as error:  # a listing failed after its retries, or was out of order
            self._failed("listing", error)
        except Stopped:
            pass

    def _read_sample(self, pool: BoundedExecutor, pending: deque[Future[Finding | None]]) -> None:
        """Read the pairs drawn, in key order: only once every pair is settled is the
        sample drawn."""
        assert self.reservoir is not None
        for source, dest in sorted(self.reservoir.items, key=lambda pair: pair[0].key):
            if self.stop.is_set():
                return
            self._emit(pending, pool.submit(self._job, source.key, lambda pair=(source, dest): self._read(*pair)))

    # -- one key ---------------------------------------------------------------------

    def _compare(self, change: Change, pool: BoundedExecutor) -> Future[Finding | None]:
        """A finding for ``change``, or a future of one where it takes a request."""
        source, dest = change.source, change.dest
        if dest is None:
            assert source is not None  # a change of the plan has one side at least
            return _done(missing(source))
        if source is None:
            return _done(extra(dest, delete=self.settings.delete))
        read = self.content and source.size == dest.size
        if change.action is Action.VERIFY or read:
            return pool.submit(self._job, change.key, lambda: self._settle(change, read))
        found = differences(change)
        if not found:
            self._offer(source, dest)
        return _done(Finding(Kind.DIFFERENT, change.key, "; ".join(found)) if found else None)

    def _job(self, key: str, work: Callable[[], list[str]]) -> Finding | None:
        """Run ``work`` (what differs in ``key``) on a pool thread; a failure is counted
        and logged, never raised: one key's error must not end the others'."""
        try:
            found = work()
        except Stopped:
            return None
        except ReplicatorError as error:
            self._failed(key, error)
            return None
        except Exception as error:  # a bug must fail the verify, not vanish in the pool
            logger.exception("{}: unexpected error", key)
            self._failed(key, error)
            return None
        return Finding(Kind.DIFFERENT, key, "; ".join(found)) if found else None

    def _settle(self, change: Change, read: bool) -> list[str]:
        """What differs in a pair whose verdict takes a request: the HEAD the rules ask
        for, the read ``content`` asks for, or both."""
        source, dest = change.source, change.dest
        assert source is not None and dest is not None
        recorded = None
        if change.action is Action.VERIFY:
            recorded = self.policy.call(lambda: self.dest.head_source_etag(change.key))
        found = differences(change, recorded)
        if read:
            return self._read(source, dest, found)
        if not found:
            self._offer(source, dest)
        return found

    def _read(self, source: ObjectInfo, dest: ObjectInfo, found: list[str] | None = None) -> list[str]:
        digests = self._digest(self.source, source), self._digest(self.dest, dest)
        with self._lock:
            self.tally.read += 1
        return content_differences(found or [], *digests)

    def _digest(self, store: SourceStore | DestinationStore, listed: ObjectInfo) -> str:
        """The SHA-256 of the object ``listed`` names, read from ``store`` a chunk at a
        time. The object must still be the one listed: compared with another version,
        the pair would be neither proven in sync nor shown to differ."""
        def attempt() -> tuple[str, int]:
            digest = hashlib.sha256()
            size = 0
            with store.open(listed.key) as (found, body):
                if found.etag != listed.etag:
                    raise PermanentError(store.side, "get", listed.key,
                                         f"changed since it was listed (ETag {found.etag}, listed {listed.etag}); "
                                         "not compared: verify again")
                while chunk := body.read(CHUNK):
                    if self.stop.is_set():
                        raise Stopped()
                    digest.update(chunk)
                    size += len(chunk)
            if size != listed.size:
                raise TransientError(store.side, "get", listed.key, f"short read: {size} of {listed.size} bytes")
            return digest.hexdigest(), size

        hexdigest, size = self.policy.call(attempt)
        with self._lock:
            self.tally.bytes_read += size
        return hexdigest

    def _offer(self, source: ObjectInfo, dest: ObjectInfo) -> None:
        """A pair in sync by the listings, for the sample to draw from."""
        if self.reservoir is not None:
            with self._lock:
                self.reservoir.offer((source, dest))

    # -- bookkeeping -------------------------------------------------------------------

    def _emit(self, pending: deque[Future[Finding | None]], finding: Future[Finding | None]) -> None:
        """Queue ``finding`` behind the keys before it; print those whose turn has come."""
        pending.append(finding)
        while pending and (pending[0].done() or len(pending) > WINDOW):
            self._print(pending.popleft().result())

    def _drain(self, pending: deque[Future[Finding | None]]) -> None:
        while pending:
            self._print(pending.popleft().result())

    def _print(self, finding: Finding | None) -> None:
        if finding is not None:
            self.tally.found[finding.kind] += 1
            print(finding.line(), file=self.out)

    def _failed(self, key: str, error: BaseException) -> None:
        with self._lock:
            self.tally.failed += 1
            count = self.tally.failed
            if isinstance(error, FatalError) and self.fatal is None:
                self.fatal = error
        if count <= MAX_LOGGED_FAILURES:
            logger.error("{}: {}", key, error)
        elif count == MAX_LOGGED_FAILURES + 1:
            logger.error("more keys could not be compared; logging only the count from here on")

    def _mode(self) -> str:
        if self.content:
            return "reading every object both sides have"
        if self.reservoir is not None:
            return f"reading {self.reservoir.size} random objects both sides have"
        return "by listing"

    def _compared(self) -> str:
        """What this verify compared, for the summary."""
        listed = "sizes, ETags, recorded source ETags" + (", attributes" if self.dest.lists_metadata else "")
        if not (self.content or self.reservoir is not None):
            return f"by listing: {listed}"
        mib = self.tally.bytes_read / MiB
        of = f" random of {self.reservoir.seen} in sync" if self.reservoir is not None else ""
        return f"by listing: {listed}; content of {self.tally.read}{of} read on both sides ({mib:.1f} MiB, SHA-256)"
