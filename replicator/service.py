"""The sidecar: owns every thread and their order of start and stop.

Threads: http (health/metrics), startup (waits for the endpoints), listener (events
-> queue), event workers (queue -> copier), scheduler (reconciles). One stop event
ends intake everywhere; a separate abort event abandons work in flight.

Start: HTTP first (so probes answer), then wait for both endpoints with backoff
(reporting not-ready rather than crash-looping), then the listener *before* the
initial reconcile, so nothing uploaded during that reconcile goes unnoticed.

Stop, on the first SIGTERM/SIGINT (Litestream's two-stage shutdown):
1. stop intake: close the listener's stream, close the queue, stop the scheduler;
2. let in-flight copies finish until ``S3_SYNC_SHUTDOWN_TIMEOUT``;
3. past the deadline, abort: multipart copies abort their uploads, so neither a
   partial object nor an orphaned upload is left; exit 0.
A second signal exits at once.
"""

from __future__ import annotations

import gc
import os
import random
import threading
import time
from collections.abc import Callable

from loguru import logger

from . import __version__
from .app import App, build
from .config import Settings
from .errors import ReplicatorError
from .events import Listener
from .model import RunStats
from .observability import metrics
from .observability.health import Health
from .observability.http import HttpServer
from .reconcile import check_endpoints
from .scheduler import Scheduler
from .stores.notifications import Notifications
from .sweep import MetadataSweep
from .workers import Workers
from .workqueue import KeyedQueue

SUBSCRIBE_WAIT = 10.0
ABORT_GRACE = 5.0  # after the deadline: time for aborts of multipart uploads to go through


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.health = Health(settings.interval)
        self.queue = KeyedQueue(settings.queue_size)
        self.app: App | None = None
        self.listener: Listener | None = None
        self.workers: Workers | None = None
        self.scheduler: Scheduler | None = None
        self.sweep: MetadataSweep | None = None
        self._swept_after_start = False
        self._caught_up = False  # a reconcile has succeeded: the initial copy is done
        self.http: HttpServer | None = None
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._signalled = threading.Event()

    # -- entry point ---------------------------------------------------------------------

    def run_until_signalled(self, install_signals: Callable[[Callable[[str, int], None]], None]) -> int:
        install_signals(self._on_signal)
        self.start()
        while not self._signalled.wait(0.5):
            pass
        return self.shutdown()

    def _on_signal(self, name: str, count: int) -> None:
        if count > 1:
            logger.warning("{} again: exiting immediately", name)
            os._exit(1)
        logger.info("{} received: shutting down (send it again to exit immediately)", name)
        self._signalled.set()

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        # Before anything else starts: a host or port that can't be bound raises a
        # ConfigError naming it (exit 2), with no thread to stop.
        self.http = HttpServer(s.http_host, s.http_port, self.health)
        metrics.ready.set_function(lambda: float(self.health.ready()[0]))  # what /readyz says, at each scrape
        self.http.start()
        self._banner()
        if not s.enabled:
            self.health.set_state("disabled", "S3_SYNC_ENABLED=false")
            logger.warning("Sync is disabled (S3_SYNC_ENABLED=false): idling. Health and metrics stay up on :{}",
                           self.http.port)
            return
        self.app = build(s, key_lock=self.queue.claim, stop=self.stop_event)  # one stop token for all
        metrics.reconcile_interval.set(s.interval)
        self._spawn("startup", self._startup)

    def _banner(self) -> None:
        s = self.settings
        logger.info("=========================================")
        logger.info("  replicator {}: MinIO → S3 mirror", __version__)
        logger.info("=========================================")
        logger.info("Configuration:")
        for name, value in s.summary().items():
            logger.info("  {:<12} {}", name + ":", value)
        logger.info("  {:<12} :{} (/healthz /readyz /status /metrics)", "HTTP:", self.http.port if self.http else "-")

    def _spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _startup(self) -> None:
        """Wait for both endpoints, then start the replicating threads."""
        assert self.app is not None
        app = self.app
        self.health.set_state("waiting-for-endpoints")
        logger.info("Checking bucket accessibility...")
        failures, rng = 0, random.Random()
        while not self.stop_event.is_set():
            try:
                check_endpoints(app.source, app.dest, create=True)
                break
            except ReplicatorError as error:
                failures += 1
                delay = min(60.0, max(1.0, self.settings.retry_delay) * 2 ** min(failures - 1, 6))
                delay = delay / 2 + rng.uniform(0, delay / 2)
                self.health.set_state("waiting-for-endpoints", str(error))
                if failures == 1 or failures % 10 == 0:
                    logger.error("{}; not ready, retrying in {:.0f}s (attempt {})", error, delay, failures)
                self.stop_event.wait(delay)
        if self.stop_event.is_set():
            return
        if failures:
            logger.info("✓ Endpoints reachable after {} failed attempts", failures)

        notifications = Notifications(app.source, self.settings)
        self.scheduler = Scheduler(
            self._reconcile, interval=self.settings.interval, max_retries=self.settings.max_retries,
            retry_delay=self.settings.retry_delay, stop=self.stop_event, min_gap=self.settings.reconcile_cooldown,
            on_result=self._reconciled,
        )
        s = self.settings
        if s.metadata_sweep_interval > 0:
            self.sweep = MetadataSweep(app.source, app.dest, self.queue, app.policy,
                                       interval=s.metadata_sweep_interval, rate=s.metadata_sweep_rate,
                                       concurrency=min(s.workers, 16), min_gap=s.reconcile_cooldown)
            self.health.sweep = self.sweep.status
        self.workers = app.workers(self.queue, on_failure=self.scheduler.request)
        self.listener = Listener(notifications, self.queue, self.stop_event, on_gap=self._gap,
                                 on_dropped=self.workers.waiting_room.keep)
        self.health.listener_connected = self.listener.connected.is_set
        self.health.listener_reconnects = lambda: self.listener.reconnects if self.listener else 0
        self.health.queue_depth = self.queue.depth
        self.health.in_flight = self.queue.in_flight
        self.health.oldest_event = self.queue.oldest_event
        self.health.metadata_waiting = lambda: len(self.workers.waiting_room) if self.workers else 0
        self.health.reconcile_progress = app.reconciler.progress
        metrics.queue_depth.set_function(self.queue.depth)
        metrics.in_flight.set_function(self.queue.in_flight)

        # What exists now (modules, botocore's service models, the clients) lives as long
        # as the process: take it out of the cyclic collector's reach. A full collection
        # then walks only what was allocated since, instead of ~85,000 objects for 40-50 ms
        # with every thread stopped, a pause each event copy in flight would wait out.
        gc.collect()  # what the endpoint retries left in cycles: not worth keeping forever
        gc.freeze()
        self._spawn("listener", self.listener.run)
        self.workers.start()
        # The initial reconcile starts once the subscription is live (or after a bounded
        # wait): an upload landing between the reconcile's listing and the subscription
        # would otherwise wait a whole interval.
        if not self.listener.connected.wait(SUBSCRIBE_WAIT):
            logger.warning("listener not connected after {:g}s; reconciling anyway", SUBSCRIBE_WAIT)
        self.health.set_state("running")
        logger.info("Performing initial sync...")
        self._spawn("scheduler", self.scheduler.run)
        if self.sweep is not None:
            self._spawn("sweep", self.sweep.run)

    def _gap(self, reason: str) -> None:
        """Events may have been lost: a reconcile repairs bytes, a sweep the rest."""
        assert self.scheduler is not None
        self.scheduler.request(reason)
        if self.sweep is not None:
            self.sweep.request(reason)

    def _reconcile(self) -> RunStats:
        """One reconcile of the schedule. What it copies or deletes counts as repaired,
        changes the events should have brought, only once the initial copy is done (the
        backlog from before this process listened is no miss) and only if the listener
        stays connected throughout."""
        assert self.app is not None and self.listener is not None
        return self.app.reconciler.run(listening=self.listener.watch() if self._caught_up else None)

    def _reconciled(self, stats: RunStats | None, error: BaseException | None) -> None:
        self.health.record_reconcile(stats, error)
        if error is None and stats is not None and not stats.failed and not stats.guard:
            # Not after a run a guard refused: the deletions it held back are the
            # initial copy's too, and the run that makes them must not count them.
            self._caught_up = True
        if error is None and stats is not None and self.workers is not None:
            self.workers.waiting_room.retry()  # it completed, so the destination answers again
            if self.sweep is not None and not self._swept_after_start:
                # Whatever changed while no process was listening (stopped, killed,
                # never started) is a gap of its own: tags and metadata the events of
                # that time would have carried.
                self._swept_after_start = True
                self.sweep.request("after the initial reconcile")

    # -- stop ------------------------------------------------------------------------------

    def shutdown(self) -> int:
        timeout = self.settings.shutdown_timeout
        deadline = time.monotonic() + timeout
        self.health.set_state("stopping")
        logger.info("Stopping intake; finishing copies in flight (up to {:g}s)", timeout)
        self.stop_event.set()
        if self.listener:
            self.listener.stop()
        left = self.queue.close()
        metadata_left = sum(1 for item in self.queue.pending() if item.metadata)
        if left:
            logger.info("{} queued events left for the next start's reconcile", left)
        finished = self._join(deadline)
        if not finished and self.app is not None:
            logger.warning("Deadline passed: aborting copies in flight (multipart uploads are aborted)")
            self.app.abort.set()
            finished = self._join(time.monotonic() + ABORT_GRACE)
            if not finished:
                logger.error("Some copies did not stop in time; single-part uploads are atomic, and the "
                             "reconcile at the next start repairs anything unfinished")
        unseen = metadata_left + (len(self.workers.waiting_room) if self.workers else 0)
        if unseen and self.sweep is not None:
            logger.warning("{} possible metadata changes (queued, or waiting for a reconcile) are left for the "
                           "metadata sweep after the next start: a reconcile can't see them", unseen)
        elif unseen:
            logger.error("{} possible metadata changes (queued, or waiting for a reconcile) are lost: a reconcile "
                         "can't see them, and S3_SYNC_METADATA_SWEEP_INTERVAL=0 turns the sweep off", unseen)
        if self.app is not None:
            self.app.close()
        if self.http:
            self.http.stop()
        logger.info("Stopped")
        return 0

    def _join(self, deadline: float) -> bool:
        done = self.workers.join(deadline) if self.workers else True
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return done and not any(t.is_alive() for t in self._threads)
