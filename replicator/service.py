"""The sidecar: owns every thread and their order of start and stop.

Threads: http (health/metrics); per destination (replica.py) a startup thread that
waits for its endpoints, its event workers, its scheduler (reconciles) and its
metadata sweep; per source bucket one listener (events -> every destination's queue).
One stop event ends intake everywhere; each replica's abort event abandons its work
in flight.

Start: HTTP first (so probes answer), then each destination waits for both of its
endpoints with backoff (reporting not-ready rather than crash-looping), on its own: a
destination that is down delays no other. The first of a source bucket's destinations
to reach its endpoints starts that bucket's listener, and each starts its initial
reconcile only once the listener is subscribed, so nothing uploaded during that
reconcile goes unnoticed.

Stop, on the first SIGTERM/SIGINT (Litestream's two-stage shutdown):
1. stop intake: close the listeners' streams, close the queues, stop the schedulers;
2. let in-flight copies finish until ``S3_SYNC_SHUTDOWN_TIMEOUT``;
3. past the deadline, abort: multipart copies abort their uploads, so neither a
   partial object nor an orphaned upload is left; exit 0.
A second signal exits at once.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from loguru import logger

from . import __version__, lease
from .config import Settings
from .errors import ConfigError
from .events import Listener
from .observability import context, metrics
from .observability.health import Board, Health
from .observability.http import HttpServer
from .replica import Replica
from .stores.notifications import Notifications

if TYPE_CHECKING:
    from .jetstream import Consumer, JetStream

ABORT_GRACE = 5.0  # after the deadline: time for aborts of multipart uploads to go through


def _ready(health: Health) -> float:
    return float(health.ready()[0])


class Service:
    def __init__(self, pairs: Settings | tuple[Settings, ...]):
        self.pairs = pairs if isinstance(pairs, tuple) else (pairs,)
        self.settings = self.pairs[0]  # the process's own settings (HTTP, log, shutdown) are every pair's
        self.healths = [Health(s.interval) for s in self.pairs]
        self.health = Board([(s.mirror, s.destination, h) for s, h in zip(self.pairs, self.healths, strict=True)])
        self.replicas: list[Replica] = []
        self.listeners: dict[str, Listener] = {}  # by source bucket (S3_SYNC_EVENTS=listen)
        self.jetstream: JetStream | None = None  # S3_SYNC_EVENTS=jetstream
        self._jetstream_connected = False
        self._failed_events_watched = False
        self._listeners_lock = threading.Lock()
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
        self._ready_metrics()
        self.http.start()
        self._banner()
        if not s.enabled:
            self.health.set_state("disabled", "S3_SYNC_ENABLED=false")
            logger.warning("Sync is disabled (S3_SYNC_ENABLED=false): idling. Health and metrics stay up on :{}",
                           self.http.port)
            return
        self.replicas = [Replica(settings, health, self.stop_event)
                         for settings, health in zip(self.pairs, self.healths, strict=True)]
        if s.events == "jetstream":
            from .jetstream import JetStream

            self.jetstream = JetStream(s, self.stop_event)
            self.jetstream.start()
        for replica in self.replicas:  # all built first: a listener feeds every replica of its bucket
            replica.spawn("startup", functools.partial(self._startup, replica))

    def _ready_metrics(self) -> None:
        """replicator_ready: what /readyz says, at each scrape; per destination where named."""
        if not context.named():
            metrics.ready.set_function(lambda: float(self.health.ready()[0]))
            return
        for settings, health in zip(self.pairs, self.healths, strict=True):
            with context.working_for(context.Scope(settings.source_bucket, settings.mirror, settings.destination)):
                metrics.ready.set_function(functools.partial(_ready, health))

    def _banner(self) -> None:
        logger.info("=========================================")
        logger.info("  replicator {}: MinIO → S3 mirror", __version__)
        logger.info("=========================================")
        logger.info("Configuration:")
        for settings in self.pairs:
            if len(self.pairs) > 1:
                logger.info("  {}/{}:", settings.mirror, settings.destination)
            for name, value in settings.summary().items():
                logger.info("  {:<12} {}", name + ":", value)
        logger.info("  {:<12} :{} (/healthz /readyz /status /metrics)", "HTTP:", self.http.port if self.http else "-")

    def _startup(self, replica: Replica) -> None:
        """One destination's start: its endpoints, its events (its bucket's listener, or
        its JetStream consumer), then replicating."""
        if not replica.reach_endpoints():
            return
        if self.jetstream is None:
            replica.follow(self._listener_for(replica))
        else:
            self._watch_failed_events(replica)
            consumer = replica.until_done("waiting-for-events", functools.partial(self._consumer_for, replica),
                                          recovered="JetStream consumer ready")
            if consumer is None:
                return
            replica.follow(consumer)
        replica.replicate()

    def _consumer_for(self, replica: Replica) -> Consumer:
        """The destination's durable JetStream consumer, once MinIO publishes the bucket's
        events to NATS and the stream takes them. Raises what is missing."""
        from .jetstream import LEASES, RESULTS, Consumer, durable_name, publishes

        assert self.jetstream is not None
        missing = publishes(replica.app.source.notification_targets())
        if missing:
            raise ConfigError(
                f"S3_SYNC_EVENTS=jetstream: bucket {replica.settings.source_bucket} publishes nothing to NATS: "
                f"{missing}. Add one for MinIO's NATS target (mc event add ALIAS/{replica.settings.source_bucket} "
                "arn:minio:sqs::<ID>:nats --event put,delete)")
        with self._listeners_lock:
            if not self._jetstream_connected:
                self.jetstream.connect()
                self._jetstream_connected = True
        consumer = Consumer(replica.settings, replica.queue, replica.intake, replica.gap)
        self.jetstream.subscribe(consumer)
        replica.health.jetstream = consumer.status
        replica.workers.locks = self.jetstream.key_locks(consumer.durable)
        # One reconcile of this destination at a time, across every process reading its
        # consumer: the lease's holder's.
        leases = self.jetstream.key_value(LEASES, ttl=lease.TTL)
        results = self.jetstream.key_value(RESULTS)
        key = durable_name(replica.settings.nats_consumer, replica.settings.mirror, replica.settings.destination)
        tasks = self.jetstream.range_tasks(key) if replica.settings.reconcile_ranges > 1 else None
        replica.coordinate(lease.Lease(leases, key, self.jetstream.holder), results, tasks)
        return consumer

    def _watch_failed_events(self, first: Replica) -> None:
        """MinIO's count of events it failed to send, read by the first destination to
        reach its endpoints (all share the one MinIO server), before any consumer is
        subscribed: its first read is the baseline, and losses before it are the
        initial reconciles'."""
        from .failed_events import FailedEvents, Watched

        with self._listeners_lock:
            if self._failed_events_watched:
                return
            self._failed_events_watched = True
        watcher = FailedEvents(first.app.source.metrics, [
            Watched(r.name, r.app.source.notification_targets, r.gap) for r in self.replicas], self.stop_event)
        thread = threading.Thread(target=watcher.run, name="failed-events", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _listener_for(self, first: Replica) -> Listener:
        """The source bucket's listener, started by the first of its destinations to get
        here, feeding every destination of that bucket."""
        bucket = first.settings.source_bucket
        with self._listeners_lock:
            listener = self.listeners.get(bucket)
            if listener is not None:
                return listener
            replicas = [r for r in self.replicas if r.settings.source_bucket == bucket]
            # Events under the prefix every mirror of the bucket shares; each intake's
            # filter then takes its own.
            shared = os.path.commonprefix([r.settings.key_filter.prefix for r in replicas])  # noqa: RUF071 - key prefixes are strings, not paths
            notifications = Notifications(first.app.source, first.settings, prefix=shared)

            def gap(reason: str) -> None:
                for replica in replicas:
                    replica.gap(reason)

            if len(replicas) == 1:
                listener = Listener(notifications, first.queue, self.stop_event, on_gap=gap,
                                    on_dropped=first.workers.waiting_room.keep)
            else:
                listener = Listener(notifications, None, self.stop_event, on_gap=gap,
                                    intakes=[r.intake for r in replicas])
            self.listeners[bucket] = listener
        with context.working_for(context.Scope(bucket)):
            thread = threading.Thread(target=context.inherit(listener.run), name="listener", daemon=True)
        thread.start()
        self._threads.append(thread)
        return listener

    # -- stop ------------------------------------------------------------------------------

    def shutdown(self) -> int:
        timeout = self.settings.shutdown_timeout
        deadline = time.monotonic() + timeout
        self.health.set_state("stopping")
        logger.info("Stopping intake; finishing copies in flight (up to {:g}s)", timeout)
        self.stop_event.set()
        for listener in list(self.listeners.values()):
            listener.stop()
        left = metadata_left = 0
        for replica in self.replicas:
            queued, metadata = replica.close_intake()
            left, metadata_left = left + queued, metadata_left + metadata
        if left:
            logger.info("{} queued events left for the next start's reconcile", left)
        finished = self._join(deadline)
        if self.jetstream is not None:
            for replica in self.replicas:
                if replica.lease is not None:
                    replica.lease.release()  # another process takes the reconcile now, not a TTL later
            self.jetstream.stop()  # after the workers: the acks they asked for go out first
        if not finished and self.replicas:
            logger.warning("Deadline passed: aborting copies in flight (multipart uploads are aborted)")
            for replica in self.replicas:
                replica.app.abort.set()
            finished = self._join(time.monotonic() + ABORT_GRACE)
            if not finished:
                logger.error("Some copies did not stop in time; single-part uploads are atomic, and the "
                             "reconcile at the next start repairs anything unfinished")
        unseen = metadata_left + sum(len(r.workers.waiting_room) for r in self.replicas)
        swept = all(r.sweep is not None for r in self.replicas)
        if unseen and swept:
            logger.warning("{} possible metadata changes (queued, or waiting for a reconcile) are left for the "
                           "metadata sweep after the next start: a reconcile can't see them", unseen)
        elif unseen:
            logger.error("{} possible metadata changes (queued, or waiting for a reconcile) are lost: a reconcile "
                         "can't see them, and S3_SYNC_METADATA_SWEEP_INTERVAL=0 turns the sweep off", unseen)
        for replica in self.replicas:
            replica.app.close()
        if self.http:
            self.http.stop()
        logger.info("Stopped")
        return 0

    def _join(self, deadline: float) -> bool:
        joined = [replica.join(deadline) for replica in self.replicas]  # every one, not up to the first late
        done = all(joined)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return done and not any(t.is_alive() for t in self._threads)
