"""observability.health.Health: what /readyz and /status say, on a fake clock."""

from __future__ import annotations

import json

import pytest

from replicator.errors import TransientError
from replicator.model import RunStats
from replicator.observability.health import Health

INTERVAL = 600.0
T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> Health:
    return Health(INTERVAL, clock=clock)


def running(health: Health, *, connected: bool = True) -> Health:
    health.set_state("running")
    health.listener_connected = lambda: connected
    return health


def test_not_ready_while_starting(health):
    assert health.ready() == (False, "state is starting")


@pytest.mark.parametrize("state", ["starting", "waiting-for-endpoints", "disabled", "stopping"])
def test_only_the_running_state_can_be_ready(health, state):
    running(health)
    health.record_reconcile(RunStats(), None)
    health.set_state(state, "detail")
    ready, why = health.ready()
    assert not ready
    assert state in why


def test_not_ready_without_the_listener(health):
    running(health, connected=False)
    health.record_reconcile(RunStats(), None)
    assert health.ready() == (False, "notification listener not connected")


def test_not_ready_before_the_first_successful_reconcile(health):
    running(health)
    assert health.ready() == (False, "no successful reconcile yet")


def test_ready_when_running_connected_and_recently_reconciled(health):
    running(health)
    health.record_reconcile(RunStats(copied=2), None)
    assert health.ready() == (True, "ok")


def test_readiness_lapses_after_twice_the_interval_without_a_success(health, clock):
    running(health)
    health.record_reconcile(RunStats(), None)
    clock.now += 2 * INTERVAL
    assert health.ready()[0]  # exactly 2 x interval: still ready
    clock.now += 1
    ready, why = health.ready()
    assert not ready
    assert "S3_SYNC_INTERVAL" in why
    health.record_reconcile(RunStats(), None)  # a success brings it back
    assert health.ready() == (True, "ok")


@pytest.mark.parametrize(
    ("stats", "error"),
    [
        (RunStats(failed=1), None),
        (RunStats(guard="refused"), None),
        (None, TransientError("source", "list", None, "connection refused")),
    ],
    ids=["failed-objects", "guard", "raised"],
)
def test_an_unsuccessful_reconcile_does_not_refresh_readiness(health, clock, stats, error):
    running(health)
    health.record_reconcile(RunStats(), None)
    success_at = clock.now
    clock.now += INTERVAL
    health.record_reconcile(stats, error)
    assert health.last_success == success_at
    assert health.last_reconcile["ok"] is False
    assert health.ready()[0]  # the earlier success is still within 2 x interval
    clock.now += INTERVAL + 1
    assert not health.ready()[0]


def test_transitions_of_a_service_start(health, clock):
    connected = [False]
    health.listener_connected = lambda: connected[0]
    seen = [health.ready()[0]]
    health.set_state("waiting-for-endpoints", "source: check: connection refused")
    seen.append(health.ready()[0])
    health.set_state("running")
    seen.append(health.ready()[0])
    connected[0] = True
    seen.append(health.ready()[0])
    clock.now += 5
    health.record_reconcile(RunStats(copied=10), None)
    seen.append(health.ready()[0])
    connected[0] = False  # the stream broke
    seen.append(health.ready()[0])
    connected[0] = True  # reconnected
    seen.append(health.ready()[0])
    health.set_state("stopping")
    seen.append(health.ready()[0])
    assert seen == [False, False, False, False, True, False, True, False]


def test_status_shape(health, clock):
    running(health)
    health.queue_depth = lambda: 7
    health.in_flight = lambda: 2
    health.listener_reconnects = lambda: 3
    health.oldest_event = lambda: clock.now - 1.5
    clock.now += 10
    health.record_reconcile(RunStats(copied=4, bytes_copied=4096, duration=1.25), None)
    status = health.status()
    assert set(status) == {"state", "detail", "ready", "ready_reason", "uptime_seconds", "listener", "queue",
                           "reconcile", "metadata_sweep"}
    assert status["metadata_sweep"] is None  # no sweep wired: off
    assert status["state"] == "running"
    assert status["ready"] is True and status["ready_reason"] == "ok"
    assert status["uptime_seconds"] == 10
    assert status["listener"] == {"connected": True, "reconnects": 3}
    assert status["queue"] == {"depth": 7, "in_flight": 2, "lag_seconds": 1.5, "metadata_waiting": 0}
    assert status["reconcile"]["last_success"] == "2023-11-14T22:13:30.000Z"  # T0 + 10, as ISO-8601 UTC
    assert status["reconcile"]["in_progress"] is None  # none runs now
    last = status["reconcile"]["last"]
    assert last["ok"] is True and last["error"] is None
    assert last["copied"] == 4 and last["bytes_copied"] == 4096 and last["finished_at"] == "2023-11-14T22:13:30.000Z"
    json.dumps(status)  # /status serves it as JSON


def test_jetstream_mode_adds_its_section_and_changes_nothing_else(health):
    listening = set(health.status())
    health.jetstream = lambda: {"consumer": "replicator-relics-mirror", "dead_lettered": 2}
    status = health.status()
    assert set(status) == listening | {"jetstream"}
    assert status["jetstream"] == {"consumer": "replicator-relics-mirror", "dead_lettered": 2}


def test_status_before_anything_happened(health):
    status = health.status()
    assert status["state"] == "starting"
    assert status["ready"] is False
    assert status["queue"] == {"depth": 0, "in_flight": 0, "lag_seconds": 0.0, "metadata_waiting": 0}
    assert status["reconcile"] == {"in_progress": None, "last": None, "last_success": None}
    json.dumps(status)


def test_status_reports_a_failed_reconcile_with_its_error(health):
    health.record_reconcile(None, TransientError("destination", "put", "a.jpg", "SlowDown (HTTP 503)"))
    last = health.status()["reconcile"]["last"]
    assert last["ok"] is False
    assert last["error"] == "destination: put a.jpg: SlowDown (HTTP 503)"


def test_status_detail_carries_the_reason_for_the_state(health):
    health.set_state("disabled", "S3_SYNC_ENABLED=false")
    status = health.status()
    assert (status["state"], status["detail"]) == ("disabled", "S3_SYNC_ENABLED=false")
    assert status["ready_reason"] == "state is disabled"
