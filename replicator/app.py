"""Builds the object graph from settings: stores, retry policy, copier, reconciler.

The SDK clients are built once here and shared by every thread (minio and boto3
clients are thread-safe; boto3 sessions are not, so the session never leaves
``S3Destination.__init__``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from . import ratelimit
from .config import Settings
from .converge import Converger
from .copier import Copier
from .observability import metrics
from .reconcile import KeyLock, Reconciler, _no_lock
from .retry import RetryPolicy
from .stores.destination import S3Destination
from .stores.source import MinioSource
from .uploads import Registry
from .workers import Workers
from .workqueue import KeyedQueue


@dataclass
class App:
    settings: Settings
    source: MinioSource
    dest: S3Destination
    policy: RetryPolicy
    copier: Copier
    converger: Converger  # one operation per key, for the reconcile and the event workers
    reconciler: Reconciler
    stop: threading.Event  # stop waiting and taking new work
    abort: threading.Event  # abandon work in flight (shutdown deadline passed)

    def workers(self, queue: KeyedQueue, **kwargs) -> Workers:
        """Event workers over this graph's converger."""
        return Workers(self.converger, queue, threads=self.settings.workers, delete=self.settings.delete, **kwargs)

    def close(self) -> None:
        self.copier.close()


def build(settings: Settings, *, key_lock: KeyLock = _no_lock, stop: threading.Event | None = None) -> App:
    stop = stop or threading.Event()
    abort = threading.Event()
    policy = RetryPolicy(settings.max_retries, settings.retry_delay, stop=stop,
                         on_retry=lambda error: metrics.retries.labels(metrics.failure_reason(error)).inc())
    source = MinioSource(settings)
    # One budget per destination, whichever path sends: events and reconciles alike.
    dest = S3Destination(settings, ratelimit.for_destination(settings, abort))
    # The endpoint and bucket as configured: a record names where its upload lives.
    uploads = Registry(Path(settings.state_dir) / "uploads", f"{settings.dest_endpoint.url}/{settings.dest_bucket}")
    copier = Copier(source, dest, settings, policy, abort=abort, uploads=uploads)
    converger = Converger(source, dest, copier, policy, threshold=settings.multipart_threshold,
                          key_filter=settings.key_filter, recheck=settings.events == "jetstream")
    reconciler = Reconciler(source, dest, copier, converger, settings, policy, key_lock=key_lock)
    return App(settings, source, dest, policy, copier, converger, reconciler, stop, abort)
