"""MinIO's own count of the notification events it failed to send, watched as a gap
(``S3_SYNC_EVENTS=jetstream``).

Why: once in the stream an event is durable, but MinIO can lose it before that, and the
upload still succeeds: a NATS target without a queue_dir while NATS is down, a queue_dir
at its limit, MinIO's in-memory queue full. It counts each of those in its Prometheus
metrics, so a rise means changes no event will bring: the replicas of the buckets that
send to that target are asked for a reconcile (``Replica.gap``), instead of waiting for
the scheduled one, which in this mode may be a week away.

The counters, of MinIO's cluster metrics (every node's, labelled by server):

- ``minio_notify_target_failed_events{target_id, target_name}``: events a target failed
  to send, or to queue. Only NATS targets a bucket's rules name count for its replicas:
  a webhook that keeps failing is no gap of ours.
- ``minio_notify_events_skipped_total``: events skipped for every target at once, the
  in-memory queue being full. Every replica is asked.

Not in listen mode: the listen stream is no notification target, and MinIO drops its
events for a slow reader without counting them; the listener tells its own gaps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

from .errors import ReplicatorError

CHECK = 30.0  # seconds between reads: MinIO itself refreshes these counters every 10 s
FAILED = "minio_notify_target_failed_events"
SKIPPED = "minio_notify_events_skipped_total"
# prometheus_client names a counter's family without its _total suffix.
_FAMILIES = {FAILED: FAILED, SKIPPED.removesuffix("_total"): SKIPPED}

Series = tuple[str, str, str]  # (counter, server, target as "ID:name"; "" for the skipped count)


def counts(text: str) -> dict[Series, float]:
    """PURE: the failed and skipped counts of MinIO's metrics (Prometheus' text format),
    by series. ValueError for an answer that holds no skipped count, which every MinIO
    with event notifications reports: it isn't MinIO's metrics (a proxy's page, say)."""
    found: dict[Series, float] = {}
    # Only the notification lines: the cluster's metrics run to thousands of lines.
    wanted = "\n".join(line for line in text.splitlines() if "minio_notify_" in line)
    for family in text_string_to_metric_families(wanted + "\n"):
        counter = _FAMILIES.get(family.name)
        if counter is None:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue  # a counter's _created sample, were there one
            labels = sample.labels
            if counter == FAILED and labels.get("target_name") != "nats":
                continue
            target = f"{labels.get('target_id', '')}:nats" if counter == FAILED else ""
            found[(counter, labels.get("server", ""), target)] = sample.value
    if not any(series[0] == SKIPPED for series in found):
        raise ValueError(f"the answer has no {SKIPPED}: not MinIO's metrics")
    return found


def rises(before: Mapping[Series, float], now: Mapping[Series, float]) -> dict[tuple[str, str], float]:
    """PURE: how much each counter rose, by (counter, target), summed over the servers.
    A count that fell was reset (its server restarted) and counts from 0, as Prometheus
    counts it; so does a series new since ``before`` (a node added, or back)."""
    risen: dict[tuple[str, str], float] = {}
    for series, value in now.items():
        previous = before.get(series, 0.0)
        rise = value if value < previous else value - previous
        if rise > 0:
            counter, _, target = series
            risen[(counter, target)] = risen.get((counter, target), 0.0) + rise
    return risen


def sends_to(rules: Iterable[tuple[str, list[str]]], target: str) -> bool:
    """PURE: whether a bucket's queue notification rules (ARN, events) send to ``target``
    ("ID:name", as the metrics label it; the ARN ends with it: arn:minio:sqs::ID:name)."""
    return any(arn.endswith(f":{target}") for arn, _ in rules)


@dataclass(frozen=True)
class Watched:
    """A replica, as the watcher needs it: its name for the log, its bucket's rules, and
    how to ask it for a reconcile."""

    name: str
    rules: Callable[[], list[tuple[str, list[str]]]]
    gap: Callable[[str], None]


class FailedEvents:
    """Reads MinIO's counts every ``every`` seconds until ``stop``; a rise is a gap of the
    replicas it concerns. Unreadable counts (unreachable, forbidden) are logged once, at
    warning, until they are read again, and stop nothing."""

    def __init__(self, read: Callable[[], str], replicas: list[Watched], stop: threading.Event, *,
                 every: float = CHECK):
        self.read, self.replicas, self.stop, self.every = read, replicas, stop, every

    def run(self) -> None:
        # The first read is the baseline: what MinIO lost before is the initial reconcile's.
        before: dict[Series, float] | None = None
        unreadable = False
        while True:
            try:
                now = counts(self.read())
            except (ReplicatorError, ValueError) as error:
                if not unreadable:
                    unreadable = True
                    logger.warning("{}", unreadable_message(error))
                else:
                    logger.debug("MinIO's count of failed events still unreadable: {}", _cause(error))
            else:
                if unreadable:
                    unreadable = False
                    logger.info("✓ MinIO's count of failed events readable again")
                if before is not None:
                    self._report(rises(before, now))
                before = now  # kept across unreadable reads: a rise meanwhile is seen at the next
            if self.stop.wait(self.every):
                return

    def _report(self, risen: dict[tuple[str, str], float]) -> None:
        for (counter, target), rise in sorted(risen.items()):
            concerned = [r for r in self.replicas if not target or self._sends(r, target)]
            series = f"{counter}{{target={target}}}" if target else counter
            logger.warning("MinIO's {} rose by {:g}: events MinIO failed to send are lost; reconciling {}", series,
                           rise, ", ".join(r.name for r in concerned) or "nothing (no bucket here sends to it)")
            for replica in concerned:
                replica.gap(f"MinIO's {series} rose by {rise:g}")

    @staticmethod
    def _sends(replica: Watched, target: str) -> bool:
        try:
            return sends_to(replica.rules(), target)
        except ReplicatorError as error:
            logger.debug("{}: its notification rules unreadable ({}); reconciling it anyway", replica.name, error)
            return True  # a needless reconcile costs less than a miss left for a week


def unreadable_message(error: Exception) -> str:
    """What a failed read of the counts means, with MinIO's reason and the fix."""
    return (f"MinIO's count of failed events unreadable ({_cause(error)}); events MinIO fails to publish wait for "
            "the scheduled reconcile. The source's user needs admin:Prometheus, or MinIO "
            "MINIO_PROMETHEUS_AUTH_TYPE=public")


def _cause(error: Exception) -> str:
    server = getattr(error, "server_message", None)
    return f"{error}: {server}" if server else str(error)
