"""Prometheus metrics, named by the client library's conventions (``_total`` on
counters, base units: seconds and bytes). Module-level, like the library intends:
the code that knows an event happened counts it, with no plumbing in between."""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, write_to_textfile
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ..errors import code_of

# The *_created series double every counter's output and no dashboard uses them.
disable_created_metrics()

PREFIX = "replicator"


class AbsentUntilSetGauge(Collector):
    """A gauge with no sample until its first ``set``, where a plain Gauge shows 0.

    For a timestamp, 0 means 1970: a last-success time of 0 before the first success
    made every "last success older than N" alert fire at each start (issue 12)."""

    def __init__(self, name: str, documentation: str, *, registry: CollectorRegistry = REGISTRY):
        self._name, self._documentation = name, documentation
        self._value: float | None = None
        registry.register(self)

    def set(self, value: float) -> None:
        self._value = value

    def set_to_current_time(self) -> None:
        self.set(time.time())

    def describe(self) -> list[GaugeMetricFamily]:
        # Names the metric to the registry without a value: duplicates are still caught.
        return [GaugeMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        value = self._value  # one read: a set() meanwhile can't make it None
        if value is not None:
            yield GaugeMetricFamily(self._name, self._documentation, value=value)


def _version() -> str:
    try:
        return importlib.metadata.version("replicator")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


build_info = Gauge(f"{PREFIX}_build_info", "Always 1; the version label is the running replicator's", ["version"])
build_info.labels(_version()).set(1)

events_received = Counter(f"{PREFIX}_events_received", "Bucket notification records received", ["kind"])
objects_copied = Counter(f"{PREFIX}_objects_copied", "Objects written to the destination", ["trigger"])
objects_deleted = Counter(f"{PREFIX}_objects_deleted", "Objects deleted from the destination")
bytes_copied = Counter(f"{PREFIX}_bytes_copied", "Bytes written to the destination")
orphaned_uploads_aborted = Counter(f"{PREFIX}_orphaned_uploads_aborted",
                                   "Multipart uploads a stopped replicator process left unfinished, aborted later")
failures = Counter(f"{PREFIX}_failures", "Operations that failed after their retries", ["reason"])
retries = Counter(f"{PREFIX}_retries", "Retried operations", ["reason"])
queue_depth = Gauge(f"{PREFIX}_queue_depth", "Keys waiting in the work queue")
in_flight = Gauge(f"{PREFIX}_in_flight", "Keys being worked on")
replication_lag = Histogram(
    f"{PREFIX}_replication_lag_seconds", "From the source event's time to the destination write",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
reconcile_duration = Histogram(
    f"{PREFIX}_reconcile_duration_seconds", "Duration of full reconcile runs",
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600),
)
reconcile_last_success = AbsentUntilSetGauge(f"{PREFIX}_reconcile_last_success_timestamp_seconds",
                                             "Unix time of the last successful reconcile; absent until the first")
reconcile_interval = AbsentUntilSetGauge(f"{PREFIX}_reconcile_interval_seconds",
                                         "S3_SYNC_INTERVAL: seconds between scheduled reconciles; absent unless "
                                         "the sidecar replicates (S3_SYNC_ENABLED=true)")
reconcile_repaired = Counter(f"{PREFIX}_reconcile_repaired_objects",
                             "Objects a scheduled reconcile copied, updated or deleted that the events should have "
                             "brought: changes the events missed. Not counted: the initial reconcile after start "
                             "(and those after it until one succeeds), a reconcile during which the notification "
                             "listener was not connected throughout, and reconciles by hand")
RECONCILE_RESULTS = ("success", "failed", "refused_by_guard")
reconciles = Counter(f"{PREFIX}_reconciles", "Reconciles finished, by result (dry runs not counted)", ["result"])
for _result in RECONCILE_RESULTS:
    reconciles.labels(_result)  # at 0 from the start: an increase() from nothing is not seen
reconcile_in_progress = Gauge(f"{PREFIX}_reconcile_in_progress", "1 while a reconcile runs")
delete_guard_refusals = Counter(f"{PREFIX}_delete_guard_refusals",
                                "Reconciles whose deletions a delete guard refused (empty source, or more than "
                                "S3_SYNC_DELETE_MAX_PERCENT of the destination)")
sweep_objects = Counter(f"{PREFIX}_metadata_sweep_objects", "Objects the metadata sweep compared on both sides")
sweep_repairs = Counter(f"{PREFIX}_metadata_sweep_repairs",
                        "Objects the metadata sweep found differing from the source and queued for repair, by what "
                        "differed (tags, attributes, retention, legal_hold)", ["kind"])
listener_reconnects = Counter(f"{PREFIX}_listener_reconnects", "Times the notification listener reconnected")
listener_connected = Gauge(f"{PREFIX}_listener_connected", "1 while the notification listener is connected")
ready = Gauge(f"{PREFIX}_ready", "1 while /readyz answers 200: running, listener connected, and a reconcile "
                                 "succeeded within 2 x S3_SYNC_INTERVAL")


failure_reason = code_of  # the ``reason`` label of failures and retries

# ``replicator verify`` is a command, never part of the sidecar: its gauges live in a
# registry of their own, which ``verify --metrics-file`` writes out (for node_exporter's
# textfile collector, or a Pushgateway). On the sidecar's /metrics they would read 0, as
# though a verify had run and found nothing.
verify_registry = CollectorRegistry(auto_describe=True)
verify_objects_checked = Gauge(f"{PREFIX}_verify_objects_checked",
                               "Keys the last complete verify compared, both listings merged",
                               registry=verify_registry)
verify_differences = Gauge(f"{PREFIX}_verify_differences",
                           "Differences the last complete verify found, by kind: missing (only at the source), extra "
                           "(only at the destination, kept or not), different", ["kind"], registry=verify_registry)
verify_last_run = Gauge(f"{PREFIX}_verify_last_run_timestamp_seconds",
                        "Unix time the last complete verify ended (one that compared every key; a verify that failed "
                        "or was stopped sets none of these gauges)", registry=verify_registry)


def write_verify_metrics(path: str) -> None:
    """The verify gauges, in Prometheus' text format, to ``path``: written beside it and
    renamed over it, so a collector never reads half a file."""
    write_to_textfile(path, verify_registry)
