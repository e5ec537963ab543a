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
from . import context

# The *_created series double every counter's output and no dashboard uses them.
disable_created_metrics()

PREFIX = "replicator"


PAIR, SOURCE = ("mirror", "destination"), ("source_bucket",)


def _scope_labels(scope_names: tuple[str, ...]) -> tuple[str, ...]:
    """This thread's mirror and destination (or source bucket), as label values."""
    scope = context.current()
    if scope is None:
        return ("",) * len(scope_names)
    return (scope.source_bucket,) if scope_names == SOURCE else (scope.mirror, scope.destination)


class Scoped:
    """A metric of one destination, or of one source bucket's listener.

    With the configuration file's mirrors, each series is labelled by the mirror and
    destination the counting thread works for (observability/context.py), before its
    own labels; so the code that counts needs no name passed to it. A single pair from
    the environment keeps its series unlabelled, as they always were. The metric is
    built anew (empty) by :func:`name_pairs`, which the process calls once at start."""

    def __init__(self, kind: type, name: str, documentation: str, labelnames: tuple[str, ...] = (), *,
                 scope: tuple[str, ...] = PAIR, **options):
        self._spec = (kind, name, documentation, labelnames, options)
        self._scope: tuple[str, ...] = ()
        self._scope_names = scope
        self._metric = self._build()
        _SCOPED.append(self)

    def _build(self):
        kind, name, documentation, labelnames, options = self._spec
        return kind(name, documentation, (*self._scope, *labelnames), **options)

    def rebuild(self, named: bool) -> None:
        REGISTRY.unregister(self._metric)
        self._scope = self._scope_names if named else ()
        self._metric = self._build()

    def labels(self, *values: str):
        if not self._scope and not values:
            return self._metric
        return self._metric.labels(*_scope_labels(self._scope_names)[:len(self._scope)], *values)

    def inc(self, amount: float = 1) -> None:
        self.labels().inc(amount)

    def set(self, value: float) -> None:
        self.labels().set(value)

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def set_function(self, function) -> None:
        self.labels().set_function(function)

    def track_inprogress(self):
        return self.labels().track_inprogress()


class AbsentUntilSetGauge(Collector):
    """A gauge with no sample until its first ``set``, where a plain Gauge shows 0.

    For a timestamp, 0 means 1970: a last-success time of 0 before the first success
    made every "last success older than N" alert fire at each start (issue 12). Labelled
    like :class:`Scoped`: one value per destination, each absent until set."""

    def __init__(self, name: str, documentation: str, *, registry: CollectorRegistry = REGISTRY):
        self._name, self._documentation = name, documentation
        self._labelnames: tuple[str, ...] = ()
        self._values: dict[tuple[str, ...], float] = {}
        if registry is REGISTRY:
            _SCOPED.append(self)
        registry.register(self)

    def rebuild(self, named: bool) -> None:
        self._labelnames = PAIR if named else ()
        self._values = {}

    def set(self, value: float) -> None:
        self._values[_scope_labels(PAIR)[:len(self._labelnames)]] = value

    def set_to_current_time(self) -> None:
        self.set(time.time())

    def describe(self) -> list[GaugeMetricFamily]:
        # Names the metric to the registry without a value: duplicates are still caught.
        return [GaugeMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        values = dict(self._values)  # one read: a set() meanwhile can't change it under us
        if not values:
            return
        family = GaugeMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for labels, value in values.items():
            family.add_metric(list(labels), value)
        yield family


_SCOPED: list[Scoped | AbsentUntilSetGauge] = []


def name_pairs(named: bool) -> None:
    """Label every destination's series by mirror and destination (the configuration
    file's mirrors), or not (one pair from the environment). Called once at start,
    before anything is counted; the series start empty."""
    context.name_pairs(named)
    for metric in _SCOPED:
        metric.rebuild(named)
    if not named:
        _zero_results()


def start_pair() -> None:
    """Series a dashboard must see at 0 from the start, for the pair this thread works
    for: an increase() from nothing is not seen."""
    for result in RECONCILE_RESULTS:
        reconciles.labels(result)


def _zero_results() -> None:
    with context.working_for(context.Scope("")):
        start_pair()


def _version() -> str:
    try:
        return importlib.metadata.version("replicator")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


build_info = Gauge(f"{PREFIX}_build_info", "Always 1; the version label is the running replicator's", ["version"])
build_info.labels(_version()).set(1)

events_received = Scoped(Counter, f"{PREFIX}_events_received", "Bucket notification records received", ("kind",),
                         scope=SOURCE)
objects_copied = Scoped(Counter, f"{PREFIX}_objects_copied", "Objects written to the destination", ("trigger",))
objects_deleted = Scoped(Counter, f"{PREFIX}_objects_deleted", "Objects deleted from the destination")
bytes_copied = Scoped(Counter, f"{PREFIX}_bytes_copied", "Bytes written to the destination")
orphaned_uploads_aborted = Scoped(Counter, f"{PREFIX}_orphaned_uploads_aborted",
                                  "Multipart uploads a stopped replicator process left unfinished, aborted later")
failures = Scoped(Counter, f"{PREFIX}_failures", "Operations that failed after their retries", ("reason",))
retries = Scoped(Counter, f"{PREFIX}_retries", "Retried operations", ("reason",))
queue_depth = Scoped(Gauge, f"{PREFIX}_queue_depth", "Keys waiting in the work queue")
in_flight = Scoped(Gauge, f"{PREFIX}_in_flight", "Keys being worked on")
replication_lag = Scoped(
    Histogram, f"{PREFIX}_replication_lag_seconds", "From the source event's time to the destination write",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
reconcile_duration = Scoped(
    Histogram, f"{PREFIX}_reconcile_duration_seconds", "Duration of full reconcile runs",
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600),
)
reconcile_last_success = AbsentUntilSetGauge(f"{PREFIX}_reconcile_last_success_timestamp_seconds",
                                             "Unix time of the last successful reconcile; absent until the first")
reconcile_interval = AbsentUntilSetGauge(f"{PREFIX}_reconcile_interval_seconds",
                                         "S3_SYNC_INTERVAL: seconds between scheduled reconciles; absent unless "
                                         "the sidecar replicates (S3_SYNC_ENABLED=true)")
reconcile_repaired = Scoped(Counter, f"{PREFIX}_reconcile_repaired_objects",
                            "Objects a scheduled reconcile copied, updated or deleted that the events should have "
                            "brought: changes the events missed. Not counted: the initial reconcile after start "
                            "(and those after it until one succeeds), a reconcile during which the notification "
                            "listener was not connected throughout, and reconciles by hand")
RECONCILE_RESULTS = ("success", "failed", "refused_by_guard")
reconciles = Scoped(Counter, f"{PREFIX}_reconciles", "Reconciles finished, by result (dry runs not counted)",
                    ("result",))
reconcile_in_progress = Scoped(Gauge, f"{PREFIX}_reconcile_in_progress", "1 while a reconcile runs")
delete_guard_refusals = Scoped(Counter, f"{PREFIX}_delete_guard_refusals",
                               "Reconciles whose deletions a delete guard refused (empty source, or more than "
                               "S3_SYNC_DELETE_MAX_PERCENT of the destination)")
sweep_objects = Scoped(Counter, f"{PREFIX}_metadata_sweep_objects",
                       "Objects the metadata sweep compared on both sides")
sweep_repairs = Scoped(Counter, f"{PREFIX}_metadata_sweep_repairs",
                       "Objects the metadata sweep found differing from the source and queued for repair, by what "
                       "differed (tags, attributes, retention, legal_hold)", ("kind",))
listener_reconnects = Scoped(Counter, f"{PREFIX}_listener_reconnects", "Times the notification listener reconnected",
                             scope=SOURCE)
listener_connected = Scoped(Gauge, f"{PREFIX}_listener_connected", "1 while the notification listener is connected",
                            scope=SOURCE)
events_pending = Scoped(Gauge, f"{PREFIX}_events_pending",
                        "S3_SYNC_EVENTS=jetstream: messages in the stream this destination's consumer has not "
                        "acknowledged yet (not delivered, or delivered and held); 0 or absent in listen mode")
events_dead_lettered = Scoped(Counter, f"{PREFIX}_events_dead_lettered",
                              "S3_SYNC_EVENTS=jetstream: messages that kept failing past S3_SYNC_NATS_DEAD_LETTER_AGE, "
                              "moved to the dead-letter stream; their keys are left to the reconcile")
events_deferred = Scoped(Counter, f"{PREFIX}_events_deferred",
                         "S3_SYNC_EVENTS=jetstream: messages handed back for a moment because another replicator "
                         "process held their key's lock")
ready = Scoped(Gauge, f"{PREFIX}_ready", "1 while /readyz answers 200: running, listener connected, and a "
                                         "reconcile succeeded within 2 x S3_SYNC_INTERVAL (per destination, "
                                         "with the configuration file's mirrors)")
_zero_results()


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
