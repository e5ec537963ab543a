"""One destination of one mirror, and everything that replicates to it.

Each replica has its own object graph (stores, retry policy, copier, reconciler), its
own queue and event workers, its own reconcile schedule, metadata sweep and health.
Nothing of it is shared with another destination but the listener that feeds its queue
(events.Intake) and the process's stop token: a destination that is down or slow fills
its own queue, sheds to its own next reconcile, and delays no other (issue 13).

A replica's threads run in its context (observability/context.py), so their log lines
and metrics name its mirror and destination where the configuration file gave several.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from loguru import logger

from .app import App, build
from .config import Settings
from .errors import ConfigError, ReplicatorError
from .events import Intake, Listener
from .lease import TTL, Lease, Renewer
from .model import RunStats
from .observability import context, metrics
from .observability.health import Health
from .progress import iso
from .ranges import SAMPLE_SIZE, Sample, split_points
from .reconcile import check_endpoints
from .scheduler import Deferred, Scheduler
from .sweep import MetadataSweep
from .workers import Workers
from .workqueue import KeyedQueue

if TYPE_CHECKING:
    from .jetstream import Consumer, KeyValue, RangeTasks
    from .shared_reconcile import SharedReconcile

SUBSCRIBE_WAIT = 10.0
T = TypeVar("T")


@dataclass(frozen=True)
class Report:
    """A reconcile a process published for a destination (S3_SYNC_EVENTS=jetstream)."""

    holder: str
    started_at: float
    finished_at: float
    stats: RunStats
    split_points: list[str]  # where the next pass is cut (S3_SYNC_RECONCILE_RANGES)


class Replica:
    def __init__(self, settings: Settings, health: Health, stop: threading.Event):
        self.settings = settings
        self.scope = context.Scope(settings.source_bucket, settings.mirror, settings.destination)
        self.name = f"{settings.mirror}/{settings.destination}"
        self.stop_event = stop
        self.health = health
        self.queue = KeyedQueue(settings.queue_size)
        self.app: App = build(settings, key_lock=self.queue.claim, stop=stop)  # one stop token for all
        self.scheduler = Scheduler(
            self._reconcile, interval=settings.interval, max_retries=settings.max_retries,
            retry_delay=settings.retry_delay, stop=stop, min_gap=settings.reconcile_cooldown,
            on_result=self._reconciled,
        )
        self.sweep: MetadataSweep | None = None
        if settings.metadata_sweep_interval > 0:
            self.sweep = MetadataSweep(self.app.source, self.app.dest, self.queue, self.app.policy,
                                       interval=settings.metadata_sweep_interval, rate=settings.metadata_sweep_rate,
                                       concurrency=min(settings.workers, 16), min_gap=settings.reconcile_cooldown,
                                       key_filter=settings.key_filter)
            self.health.sweep = self.sweep.status
        self.workers: Workers = self.app.workers(self.queue, on_failure=self.scheduler.request)
        self.intake = Intake(self.queue, self.gap, self.workers.waiting_room.keep, accepts=settings.key_filter,
                             scope=self.scope)
        self.listener: Listener | Consumer | None = None  # its events' source, once the service starts it
        self.threads: list[threading.Thread] = []
        self._caught_up = False  # a reconcile has succeeded: the initial copy is done
        # S3_SYNC_EVENTS=jetstream: the reconcile runs where the lease is held (lease.py);
        # the others report the holder's last result.
        self.lease: Lease | None = None
        self.results: KeyValue | None = None
        self._result_time: float | None = None
        self.shared: SharedReconcile | None = None  # S3_SYNC_RECONCILE_RANGES above 1
        self._gap_since: float | None = None  # when events may have been lost, since the last reconcile began
        self._swept_after_start = False
        self.health.queue_depth = self.queue.depth
        self.health.in_flight = self.queue.in_flight
        self.health.oldest_event = self.queue.oldest_event
        self.health.metadata_waiting = lambda: len(self.workers.waiting_room)
        self.health.reconcile_progress = self.app.reconciler.progress
        with context.working_for(self.scope):
            metrics.start_pair()
            metrics.queue_depth.set_function(self.queue.depth)
            metrics.in_flight.set_function(self.queue.in_flight)
            metrics.reconcile_interval.set(settings.interval)

    def spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        with context.working_for(self.scope):
            thread = threading.Thread(target=context.inherit(target), name=name, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def follow(self, listener: Listener | Consumer) -> None:
        """Take events from ``listener``, its source bucket's."""
        self.listener = listener
        self.health.listener_connected = listener.connected.is_set
        self.health.listener_reconnects = lambda: listener.reconnects

    # -- start -----------------------------------------------------------------------------

    def until_done(self, state: str, attempt: Callable[[], T], *, recovered: str) -> T | None:
        """``attempt`` until it raises no ReplicatorError (or ConfigError: a setting the
        operator can fix without a restart), backing off, with health in ``state`` and
        the error logged; None if stopped first."""
        self.health.set_state(state)
        failures, rng = 0, random.Random()
        while not self.stop_event.is_set():
            try:
                result = attempt()
            except (ReplicatorError, ConfigError) as error:
                failures += 1
                delay = min(60.0, max(1.0, self.settings.retry_delay) * 2 ** min(failures - 1, 6))
                delay = delay / 2 + rng.uniform(0, delay / 2)
                self.health.set_state(state, str(error))
                if failures == 1 or failures % 10 == 0:
                    logger.error("{}; not ready, retrying in {:.0f}s (attempt {})", error, delay, failures)
                self.stop_event.wait(delay)
                continue
            if failures:
                logger.info("✓ {} after {} failed attempts", recovered, failures)
            return result
        return None

    def reach_endpoints(self) -> bool:
        """Wait for both endpoints, backing off; False if stopped first."""
        logger.info("Checking bucket accessibility...")
        def check() -> bool:
            check_endpoints(self.app.source, self.app.dest, create=True)
            return True

        if self.until_done("waiting-for-endpoints", check, recovered="Endpoints reachable") is None:
            return False
        # What exists now (modules, botocore's service models, the clients) lives as long
        # as the process: take it out of the cyclic collector's reach. A full collection
        # then walks only what was allocated since, instead of ~85,000 objects for 40-50 ms
        # with every thread stopped, a pause each event copy in flight would wait out.
        gc.collect()  # what the endpoint retries left in cycles: not worth keeping forever
        gc.freeze()
        return True

    def replicate(self) -> None:
        """Start the workers, then the schedule once the listener is subscribed."""
        assert self.listener is not None
        self.workers.start()
        # The initial reconcile starts once the subscription is live (or after a bounded
        # wait): an upload landing between the reconcile's listing and the subscription
        # would otherwise wait a whole interval.
        if not self.listener.connected.wait(SUBSCRIBE_WAIT):
            logger.warning("listener not connected after {:g}s; reconciling anyway", SUBSCRIBE_WAIT)
        self.health.set_state("running")
        logger.info("Performing initial sync...")
        self.spawn("scheduler", self.scheduler.run)
        if self.sweep is not None:
            self.spawn("sweep", self.sweep.run)
        if self.shared is not None:
            self.spawn("ranges", self.shared.work)

    def gap(self, reason: str) -> None:
        """Events may have been lost: a reconcile repairs bytes, a sweep the rest."""
        # A reconcile begun from now on covers it, ours or another process's (which
        # sees the same gap, MinIO's counter or a consumer behind, and reconciles too).
        self._gap_since = self._gap_since or time.time()
        self.scheduler.request(reason)
        if self.sweep is not None:
            self.sweep.request(reason)

    def coordinate(self, lease: Lease, results: KeyValue, tasks: RangeTasks | None = None) -> None:
        """Reconcile only while holding ``lease``; publish each result in ``results``.
        With ``tasks`` and S3_SYNC_RECONCILE_RANGES above 1, the holder cuts each pass
        into key ranges there, and this process takes some of every holder's."""
        self.lease, self.results = lease, results
        if tasks is not None and self.settings.reconcile_ranges > 1:
            from .shared_reconcile import SharedReconcile

            self.shared = SharedReconcile(self.app.reconciler, self.settings, results, tasks, lease.key,
                                          self.stop_event, self._listening)

    def _listening(self) -> Callable[[], bool] | None:
        assert self.listener is not None
        return self.listener.watch() if self._caught_up else None

    def _reconcile(self) -> RunStats:
        """One reconcile of the schedule. What it copies or deletes counts as repaired,
        changes the events should have brought, only once the initial copy is done (the
        backlog from before this process listened is no miss) and only if the listener
        stays connected throughout."""
        self._result_time = None
        listening = self._listening()
        if self.lease is None or self.results is None:
            return self.app.reconciler.run(listening=listening)
        # Another process reconciled this destination lately: that run stands for ours,
        # or every process would reconcile each interval, one after the other. After a
        # gap, only a run begun since stands for one.
        report = self._last_report()
        if report is not None and self._covered_by(report):
            return self._reported(report)
        if not self.lease.hold():
            if report is None or self._gap_since is not None:
                raise Deferred(f"another replicator process holds the reconcile lease of {self.name} and "
                               + ("events may have been lost since its run began" if self._gap_since is not None
                                  else "has reported no reconcile yet"))
            return self._reported(report)
        logger.info("holding the reconcile lease: this process reconciles {}", self.name)
        self._gap_since = None  # this run covers it (a gap found from now on asks for another)
        started = time.time()
        try:
            with Renewer(self.lease, every=TTL / 3, on_lost=lambda: logger.warning(
                    "lost the reconcile lease mid-run; deletes stop at the next batch")):
                stats, points = self._pass(listening, report)
            self.results.put(self.lease.key, json.dumps({
                "holder": self.lease.holder, "started_at": started, "finished_at": time.time(),
                "stats": dataclasses.asdict(stats), "split_points": points}).encode())
        finally:
            self.lease.release()  # it guards one run: the next is whoever's schedule comes first
        return stats

    def _pass(self, listening: Callable[[], bool] | None, report: Report | None) -> tuple[RunStats, list[str]]:
        """The lease holder's pass: shared in ranges where there are split points to cut
        at and the source has objects; whole (and sampled for the next) otherwise."""
        assert self.lease is not None
        points = report.split_points if report is not None else []
        if self.shared is None:
            return self.app.reconciler.run(listening=listening, fence=self.lease.hold), []
        if points and report is not None and report.stats.source_objects:
            pass_id = f"{self.lease.holder}-{self.lease.revision}-{time.time():.0f}"
            return self.shared.coordinate(pass_id, points, held=lambda: self.lease is not None and self.lease.held)
        sample = Sample(size=max(SAMPLE_SIZE, 16 * self.settings.reconcile_ranges))
        stats = self.app.reconciler.run(listening=listening, fence=self.lease.hold, sample=sample)
        return stats, split_points([sample.to_json()], self.settings.reconcile_ranges)

    def _covered_by(self, report: Report) -> bool:
        if self._gap_since is not None:
            return report.started_at > self._gap_since
        return time.time() - report.finished_at < self.settings.interval / 2

    def _last_report(self) -> Report | None:
        """The last reconcile any process published for this destination."""
        assert self.lease is not None and self.results is not None
        raw = self.results.get(self.lease.key)
        if raw is None:
            return None
        report = json.loads(raw)
        stats = RunStats(**report["stats"])
        finished_at = float(report["finished_at"])
        return Report(str(report["holder"]), float(report.get("started_at", finished_at - stats.duration)),
                      finished_at, stats, list(report.get("split_points") or []))

    def _reported(self, report: Report) -> RunStats:
        self._result_time = report.finished_at
        stats = report.stats
        logger.info("reconciled by {} (holder of the lease) at {}: {} copied, {} deleted, {} failed", report.holder,
                    iso(report.finished_at), stats.copied, stats.deleted, stats.failed)
        return stats

    def _reconciled(self, stats: RunStats | None, error: BaseException | None) -> None:
        self.health.record_reconcile(stats, error, finished_at=self._result_time)
        if error is None and stats is not None and not stats.failed and not stats.guard:
            # Not after a run a guard refused: the deletions it held back are the
            # initial copy's too, and the run that makes them must not count them.
            self._caught_up = True
        if error is None and stats is not None:
            self.workers.waiting_room.retry()  # it completed, so the destination answers again
            if self.sweep is not None and not self._swept_after_start:
                # Whatever changed while no process was listening (stopped, killed,
                # never started) is a gap of its own: tags and metadata the events of
                # that time would have carried.
                self._swept_after_start = True
                self.sweep.request("after the initial reconcile")

    # -- stop ------------------------------------------------------------------------------

    def close_intake(self) -> tuple[int, int]:
        """Close the queue: (events left for the next start's reconcile, of them metadata changes)."""
        left = self.queue.close()
        return left, sum(1 for item in self.queue.pending() if item.metadata)

    def join(self, deadline: float) -> bool:
        done = self.workers.join(deadline)
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return done and not any(t.is_alive() for t in self.threads)
