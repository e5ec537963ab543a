"""MinIO's count of failed events as a gap: the counts read from its metrics, their
rises (resets and new servers included), which replicas a rise concerns, and the
watcher's loop: a rise asks for reconciles, an unreadable count is told once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading

import pytest
from botocore.credentials import ReadOnlyCredentials
from loguru import logger

from replicator.errors import PermanentError
from replicator.failed_events import FAILED, SKIPPED, FailedEvents, Watched, counts, rises, sends_to
from replicator.stores.source import prometheus_token

# As MinIO's /minio/v2/metrics/cluster writes them (a real answer's notification lines,
# with a webhook target beside the NATS one, and another family around them).
ANSWER = """\
# HELP minio_node_process_uptime_seconds Uptime for MinIO process per node in seconds.
# TYPE minio_node_process_uptime_seconds gauge
minio_node_process_uptime_seconds{server="10.0.0.1:9000"} 812.5
# HELP minio_notify_events_skipped_total Events that were skipped to be sent to the targets
# TYPE minio_notify_events_skipped_total counter
minio_notify_events_skipped_total{server="10.0.0.1:9000"} %(skipped)s
# HELP minio_notify_target_failed_events Number of events failed to be sent (or) queued to the target
# TYPE minio_notify_target_failed_events counter
minio_notify_target_failed_events{server="10.0.0.1:9000",target_id="PRIMARY",target_name="nats"} %(nats)s
minio_notify_target_failed_events{server="10.0.0.2:9000",target_id="PRIMARY",target_name="nats"} %(other_node)s
minio_notify_target_failed_events{server="10.0.0.1:9000",target_id="HOOK",target_name="webhook"} %(webhook)s
"""


def answer(skipped=0, nats=0, other_node=0, webhook=0) -> str:
    return ANSWER % {"skipped": skipped, "nats": nats, "other_node": other_node, "webhook": webhook}


def test_counts_are_the_nats_targets_failures_and_the_skipped_events_by_server():
    assert counts(answer(skipped=1, nats=3, other_node=2, webhook=9)) == {
        (SKIPPED, "10.0.0.1:9000", ""): 1,
        (FAILED, "10.0.0.1:9000", "PRIMARY:nats"): 3,
        (FAILED, "10.0.0.2:9000", "PRIMARY:nats"): 2,
    }


@pytest.mark.parametrize("text", ["<html><body>Proxy login</body></html>", "", "minio_node_up 1\n"])
def test_an_answer_without_the_skipped_count_is_not_minios_metrics(text):
    with pytest.raises(ValueError, match="not MinIO's metrics"):
        counts(text)


@pytest.mark.parametrize(("before", "now", "risen"), [
    (answer(nats=3), answer(nats=3), {}),
    (answer(nats=3), answer(nats=5, other_node=1), {(FAILED, "PRIMARY:nats"): 3}),
    (answer(skipped=2), answer(skipped=7), {(SKIPPED, ""): 5}),
    # The node restarted: its count began again from 0, and the 2 are new failures.
    (answer(nats=9), answer(nats=2), {(FAILED, "PRIMARY:nats"): 2}),
    # A webhook failing is no gap of ours.
    (answer(webhook=1), answer(webhook=50), {}),
])
def test_a_rise_is_summed_over_the_servers_and_a_reset_counts_from_zero(before, now, risen):
    assert rises(counts(before), counts(now)) == risen


def test_a_server_new_since_the_last_read_counts_from_zero():
    before = {(SKIPPED, "a", ""): 0.0}
    assert rises(before, {**before, (FAILED, "b", "PRIMARY:nats"): 4.0}) == {(FAILED, "PRIMARY:nats"): 4.0}


@pytest.mark.parametrize(("arn", "sends"), [
    ("arn:minio:sqs::PRIMARY:nats", True),
    ("arn:minio:sqs:us-east-1:PRIMARY:nats", True),
    ("arn:minio:sqs::SECONDARY:nats", False),
    ("arn:minio:sqs::PRIMARY:webhook", False),
    ("arn:minio:sqs::XPRIMARY:nats", False),
])
def test_a_bucket_sends_to_the_target_its_rules_arn_names(arn, sends):
    assert sends_to([(arn, ["s3:ObjectCreated:*"])], "PRIMARY:nats") is sends


def test_the_token_is_the_jwt_mc_admin_prometheus_generate_makes():
    token = prometheus_token(ReadOnlyCredentials("reader", "s3cr3t", None), now=1_000_000)
    header, claims, signature = token.split(".")

    def decoded(part: str) -> dict:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))

    assert decoded(header) == {"alg": "HS512", "typ": "JWT"}
    assert decoded(claims) == {"iss": "prometheus", "sub": "reader", "exp": 1_003_600}
    expected = hmac.new(b"s3cr3t", f"{header}.{claims}".encode(), hashlib.sha512).digest()
    assert base64.urlsafe_b64decode(signature + "==") == expected
    assert "s3cr3t" not in token


class Reads:
    """MinIO's answers in turn; the stop event is set after the last, so the loop ends."""

    def __init__(self, stop: threading.Event, *answers):
        self.stop, self.answers = stop, list(answers)

    def __call__(self) -> str:
        item = self.answers.pop(0)
        if not self.answers:
            self.stop.set()
        if isinstance(item, Exception):
            raise item
        return item


@pytest.fixture
def logged():
    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="DEBUG")
    yield lines
    logger.remove(sink)


def watched(name: str, arn: str, gaps: list[str]) -> Watched:
    return Watched(name, lambda: [(arn, ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"])],
                   lambda reason: gaps.append(f"{name}: {reason}"))


def test_a_rise_asks_the_replicas_whose_bucket_sends_to_that_target(logged):
    stop, gaps = threading.Event(), []
    replicas = [watched("photos/s3", "arn:minio:sqs::PRIMARY:nats", gaps),
                watched("logs/s3", "arn:minio:sqs::OTHER:nats", gaps)]
    FailedEvents(Reads(stop, answer(nats=3), answer(nats=3), answer(nats=5)), replicas, stop, every=0).run()
    assert gaps == [f"photos/s3: MinIO's {FAILED}{{target=PRIMARY:nats}} rose by 2"]
    warnings = [m for level, m in logged if level == "WARNING"]
    assert warnings == [f"MinIO's {FAILED}{{target=PRIMARY:nats}} rose by 2: events MinIO failed to send are lost; "
                        "reconciling photos/s3"]


def test_skipped_events_ask_every_replica(logged):
    stop, gaps = threading.Event(), []
    replicas = [watched("photos/s3", "arn:minio:sqs::PRIMARY:nats", gaps),
                watched("logs/s3", "arn:minio:sqs::OTHER:nats", gaps)]
    FailedEvents(Reads(stop, answer(), answer(skipped=1)), replicas, stop, every=0).run()
    assert [gap.split(":")[0] for gap in gaps] == ["photos/s3", "logs/s3"]


def test_an_unreadable_count_is_told_once_and_the_rise_meanwhile_is_seen_after(logged):
    stop, gaps = threading.Event(), []
    forbidden = PermanentError("source", "read metrics", None, "AccessDenied (HTTP 403)",
                               server_message="Access Denied.")
    FailedEvents(Reads(stop, answer(nats=1), forbidden, forbidden, forbidden, answer(nats=4)),
                 [watched("photos/s3", "arn:minio:sqs::PRIMARY:nats", gaps)], stop, every=0).run()
    warnings = [m for level, m in logged if level == "WARNING"]
    assert len(warnings) == 2
    assert warnings[0].startswith("MinIO's count of failed events unreadable (source: read metrics: AccessDenied "
                                  "(HTTP 403): Access Denied.)")
    assert "admin:Prometheus" in warnings[0] and "MINIO_PROMETHEUS_AUTH_TYPE=public" in warnings[0]
    assert ("INFO", "✓ MinIO's count of failed events readable again") in logged
    assert gaps == [f"photos/s3: MinIO's {FAILED}{{target=PRIMARY:nats}} rose by 3"]


def test_a_replica_whose_rules_are_unreadable_is_reconciled_anyway(logged):
    stop, gaps = threading.Event(), []

    def unreadable():
        raise PermanentError("source", "get notification", "photos", "AccessDenied (HTTP 403)")

    replica = Watched("photos/s3", unreadable, gaps.append)
    FailedEvents(Reads(stop, answer(), answer(nats=1)), [replica], stop, every=0).run()
    assert len(gaps) == 1
