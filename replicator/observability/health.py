"""What the service reports about itself: one thread-safe snapshot source behind
``/healthz``, ``/readyz`` and ``/status``.

Every string in ``/status`` is passed through ``printable``, as log lines are: an error
naming a key shows it as the log does, and no key can put a raw newline or control
character into what a dashboard or ``jq -r`` prints."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from ..model import RunStats
from ..printable import printable
from ..progress import Snapshot, iso


class Health:
    def __init__(self, interval: float, *, clock: Callable[[], float] = time.time):
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self.state = "starting"  # starting | waiting-for-endpoints | running | disabled | stopping
        self.detail = ""
        self.last_reconcile: dict | None = None
        self.last_success: float | None = None
        self.started = clock()
        # Filled in by the service once its parts exist.
        self.listener_connected: Callable[[], bool] = lambda: False
        self.queue_depth: Callable[[], int] = lambda: 0
        self.in_flight: Callable[[], int] = lambda: 0
        self.oldest_event: Callable[[], float | None] = lambda: None
        self.metadata_waiting: Callable[[], int] = lambda: 0
        self.listener_reconnects: Callable[[], int] = lambda: 0
        self.sweep: Callable[[], dict | None] = lambda: None  # the metadata sweep's state; None: off
        self.reconcile_progress: Callable[[], Snapshot | None] = lambda: None  # None: no reconcile runs
        # S3_SYNC_EVENTS=jetstream: its consumer's state (jetstream.Consumer.status); the
        # listen mode's /status has no such section at all.
        self.jetstream: Callable[[], dict] | None = None

    def set_state(self, state: str, detail: str = "") -> None:
        with self._lock:
            self.state, self.detail = state, detail

    def record_reconcile(self, stats: RunStats | None, error: BaseException | None, *,
                         finished_at: float | None = None) -> None:
        """A reconcile's result; ``finished_at`` when it ended elsewhere (another process's)."""
        now = self.clock() if finished_at is None else finished_at
        ok = error is None and stats is not None and not stats.failed and not stats.guard
        summary = dataclasses.asdict(stats) if stats is not None else {}
        summary.update(finished_at=iso(now), ok=ok, error=str(error) if error else None)
        with self._lock:
            self.last_reconcile = summary
            if ok:
                self.last_success = now

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            state, last_success = self.state, self.last_success
        if state != "running":
            return False, f"state is {state}"
        if not self.listener_connected():
            return False, "notification listener not connected"
        if last_success is None:
            return False, "no successful reconcile yet"
        age = self.clock() - last_success
        if age > 2 * self.interval:
            return False, f"last successful reconcile {age:.0f}s ago (over 2 x S3_SYNC_INTERVAL)"
        return True, "ok"

    def status(self) -> dict:
        ready, why = self.ready()
        oldest = self.oldest_event()
        progress = self.reconcile_progress()
        jetstream = {} if self.jetstream is None else {"jetstream": self.jetstream()}
        now = self.clock()
        with self._lock:
            return _printable({
                "state": self.state,
                "detail": self.detail,
                "ready": ready,
                "ready_reason": why,
                "uptime_seconds": round(now - self.started, 3),
                "listener": {"connected": self.listener_connected(), "reconnects": self.listener_reconnects()},
                "queue": {
                    "depth": self.queue_depth(),
                    "in_flight": self.in_flight(),
                    # Lag: how long the oldest waiting event has waited.
                    "lag_seconds": round(max(0.0, now - oldest), 3) if oldest else 0.0,
                    # Tag, retention and legal-hold refreshes that failed, waiting for a reconcile.
                    "metadata_waiting": self.metadata_waiting(),
                },
                "reconcile": {
                    "in_progress": progress.as_status() if progress is not None else None,
                    "last": self.last_reconcile,
                    "last_success": iso(self.last_success),
                },
                "metadata_sweep": self.sweep(),
                **jetstream,
            })


def _printable(value):
    """A copy of ``value`` with every string in it printable (the keys of dicts are ours)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {name: _printable(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(item) for item in value]
    return value


class Board:
    """``/healthz``, ``/readyz`` and ``/status`` over every destination's Health: ready
    when every one is. One destination (a single pair) reports exactly as its Health
    does; several are listed under ``mirrors``, each with its names."""

    def __init__(self, healths: list[tuple[str, str, Health]], *, clock: Callable[[], float] = time.time):
        self.healths = healths  # (mirror, destination, health), in configuration order
        self.clock = clock
        self.started = clock()

    def set_state(self, state: str, detail: str = "") -> None:
        for _, _, health in self.healths:
            health.set_state(state, detail)

    @property
    def state(self) -> str:
        states = [health.state for _, _, health in self.healths]
        if len(set(states)) == 1:
            return states[0]
        return next(state for state in states if state != "running")  # the one holding the others back

    def ready(self) -> tuple[bool, str]:
        if len(self.healths) == 1:
            return self.healths[0][2].ready()
        reasons = []
        for mirror, destination, health in self.healths:
            ready, why = health.ready()
            if not ready:
                reasons.append(f"{mirror}/{destination}: {why}")
        return (False, "; ".join(reasons)) if reasons else (True, "ok")

    def status(self) -> dict:
        if len(self.healths) == 1:
            return self.healths[0][2].status()
        ready, why = self.ready()
        return _printable({
            "state": self.state,
            "ready": ready,
            "ready_reason": why,
            "uptime_seconds": round(self.clock() - self.started, 3),
            "mirrors": [{"mirror": mirror, "destination": destination, **health.status()}
                        for mirror, destination, health in self.healths],
        })
