"""scheduler.Scheduler on a fake clock: when reconciles start, never how long they take.

The scheduler sleeps on an internal wake event; the harness swaps it for one whose
``wait`` advances the fake clock instead of sleeping, so a day of schedule runs in
milliseconds, in the test's own thread, deterministically."""

from __future__ import annotations

import threading
from collections.abc import Callable
from itertools import pairwise

import pytest

from replicator.errors import FatalError, TransientError
from replicator.model import RunStats
from replicator.retry import Stopped
from replicator.scheduler import Scheduler


class FakeClock:
    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


class FakeWake:
    """Stands in for the scheduler's ``threading.Event``: waiting moves the clock.
    ``at`` holds actions to fire when the clock reaches their time (a request from
    the listener, say); ``until`` is when the test ends (the stop event is set)."""

    def __init__(self, clock: FakeClock, stop: threading.Event, until: float):
        self.clock = clock
        self.stop = stop
        self.until = until
        self.at: list[tuple[float, Callable[[], None]]] = []
        self.flag = False
        self.waits: list[float] = []

    def set(self) -> None:
        self.flag = True

    def clear(self) -> None:
        self.flag = False

    def is_set(self) -> bool:
        return self.flag

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None and timeout > 0, "the scheduler must never wait forever or spin"
        self.waits.append(timeout)
        if self.flag:
            return True
        target = self.clock.now + timeout
        due = sorted((t, action) for t, action in self.at if t <= target)
        if due:
            when, action = due[0]
            self.at.remove((when, action))
            self.clock.now = max(self.clock.now, when)
            action()
            return self.flag
        self.clock.now = target
        if self.clock.now >= self.until:
            self.stop.set()
        return False


class Harness:
    def __init__(self, outcomes: Callable[[int], RunStats | BaseException] | None = None, *,
                 interval: float = 3600.0, retry_delay: float = 60.0, max_retries: int = 3,
                 min_gap: float = 30.0, duration: float = 0.0, until: float = 4 * 3600.0):
        self.clock = FakeClock()
        self.stop = threading.Event()
        self.starts: list[float] = []
        self.results: list[tuple[RunStats | None, BaseException | None]] = []
        self.outcomes = outcomes or (lambda n: RunStats())
        self.duration = duration
        self.scheduler = Scheduler(self._reconcile, interval=interval, max_retries=max_retries,
                                   retry_delay=retry_delay, stop=self.stop, min_gap=min_gap,
                                   on_result=lambda s, e: self.results.append((s, e)), clock=self.clock)
        self.wake = FakeWake(self.clock, self.stop, self.clock.now + until)
        self.scheduler.trigger._wake = self.wake  # noqa: SLF001 - the one seam: sleeping

    def _reconcile(self) -> RunStats:
        self.starts.append(self.clock.now)
        outcome = self.outcomes(len(self.starts))
        self.clock.now += self.duration
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def at(self, offset: float, action: Callable[[], None]) -> None:
        self.wake.at.append((self.clock.now + offset, action))

    def run(self) -> list[float]:
        """Run the schedule to the end; start times relative to the start."""
        t0 = self.clock.now
        self.scheduler.run()
        return [round(t - t0, 6) for t in self.starts]


def failing(n: int) -> RunStats:
    return RunStats(failed=1)


def test_initial_run_at_once_then_every_interval():
    h = Harness(interval=3600.0, until=3 * 3600.0 + 1)
    assert h.run() == [0, 3600, 7200, 10800]
    assert h.scheduler.runs == 4


def test_the_interval_counts_from_the_end_of_a_run():
    h = Harness(interval=100.0, duration=10.0, until=250.0)
    assert h.run() == [0, 110, 220]


def test_a_request_starts_a_run_early_but_not_within_min_gap_of_the_last_start():
    h = Harness(interval=3600.0, min_gap=30.0, until=200.0)
    h.at(5.0, lambda: h.scheduler.request("listener reconnected"))  # too soon after the initial run
    h.at(100.0, lambda: h.scheduler.request("work queue overflowed"))  # long after: at once
    assert h.run() == [0, 30, 100]


def test_requests_while_one_is_pending_fold_into_one_run():
    h = Harness(interval=3600.0, min_gap=30.0, until=200.0)
    for offset in (1.0, 2.0, 3.0, 20.0):
        h.at(offset, lambda: h.scheduler.request("event copies failed"))
    assert h.run() == [0, 30]


def test_a_request_made_during_a_run_gets_its_own_run_after_min_gap():
    def outcome(n: int) -> RunStats:
        if n == 1:
            h.scheduler.request("listener reconnected")  # e.g. the stream broke mid-reconcile
        return RunStats()

    h = Harness(outcome, interval=3600.0, min_gap=30.0, duration=5.0, until=200.0)
    assert h.run() == [0, 30]


def test_min_gap_never_exceeds_the_interval():
    h = Harness(interval=10.0, min_gap=30.0, until=25.0)
    h.at(1.0, lambda: h.scheduler.request("listener reconnected"))
    assert h.run() == [0, 10, 20]


def test_failures_back_off_exponentially_capped_at_the_interval():
    h = Harness(failing, interval=1000.0, retry_delay=60.0, until=3000.0)
    starts = h.run()
    gaps = [b - a for a, b in pairwise(starts)]
    assert gaps[:6] == [60, 120, 240, 480, 960, 1000]
    assert set(gaps[5:]) == {1000}


def test_a_raised_error_backs_off_like_a_failed_run():
    errors = [TransientError("source", "list", None, "connection refused"),
              FatalError("source", "check", None, "InvalidAccessKeyId (HTTP 403)"), RuntimeError("a bug")]

    def outcome(n: int):
        return errors[n - 1] if n <= len(errors) else RunStats()

    h = Harness(outcome, interval=3600.0, retry_delay=10.0, until=3600.0)
    assert h.run() == [0, 10, 30, 70]
    assert [type(e) for _, e in h.results] == [TransientError, FatalError, RuntimeError, type(None)]


def test_a_success_resets_the_backoff():
    outcomes = {1: RunStats(failed=1), 2: RunStats(failed=1), 3: RunStats(), 4: RunStats(failed=2)}
    h = Harness(lambda n: outcomes.get(n, RunStats()), interval=1000.0, retry_delay=10.0, until=1041.0)
    # Fails at 0 and 10, succeeds at 30; the next run, an interval later, fails and
    # retries after retry_delay again, not after the 40 s the backoff had reached.
    assert h.run() == [0, 10, 30, 1030, 1040]


def test_a_guard_refusal_waits_a_full_interval():
    h = Harness(lambda n: RunStats(guard="5 deletions exceed 50%"), interval=600.0, retry_delay=1.0,
                until=1300.0)
    assert h.run() == [0, 600, 1200]


def test_a_guard_refusal_still_answers_a_request():
    # A guard needs a person, but a listener gap is new information: min_gap still applies.
    h = Harness(lambda n: RunStats(guard="refused"), interval=600.0, min_gap=30.0, until=100.0)
    h.at(50.0, lambda: h.scheduler.request("listener reconnected"))
    assert h.run() == [0, 50]


def test_every_result_is_reported():
    outcomes = {1: RunStats(copied=3), 2: TransientError("destination", "put", "k", "SlowDown")}
    h = Harness(lambda n: outcomes.get(n, RunStats(copied=0)), interval=100.0, retry_delay=5.0, until=100.0)
    h.at(40.0, lambda: h.scheduler.request("x"))
    h.run()
    assert h.results[0][0].copied == 3 and h.results[0][1] is None
    assert h.results[1][0] is None and isinstance(h.results[1][1], TransientError)


def test_no_wait_is_longer_than_a_second():
    # The stop event is only looked at between waits: long waits would delay a shutdown.
    h = Harness(interval=3600.0, until=2 * 3600.0)
    h.run()
    assert max(h.wake.waits) <= 1.0


def test_stop_while_waiting_ends_the_loop():
    h = Harness(interval=3600.0, until=10.0)
    assert h.run() == [0]
    assert h.stop.is_set()


def test_stop_during_a_run_ends_the_loop_without_another_run():
    def outcome(n: int):
        h.stop.set()
        return Stopped()  # the reconcile saw the stop event

    h = Harness(outcome, interval=1.0, until=1e9)
    assert h.run() == [0]
    assert h.results == []  # an interrupted run is neither a success nor a failure


@pytest.mark.parametrize("outcome", [RunStats(), RunStats(failed=1), RuntimeError("boom")])
def test_stop_from_another_thread_ends_a_real_scheduler(outcome):
    """Real clock and real event, tiny numbers: assert what happens, not when."""
    stop = threading.Event()
    ran = threading.Event()

    def reconcile() -> RunStats:
        ran.set()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    scheduler = Scheduler(reconcile, interval=0.05, max_retries=3, retry_delay=0.01, stop=stop, min_gap=0.01)
    thread = threading.Thread(target=scheduler.run, daemon=True)
    thread.start()
    assert ran.wait(10)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert scheduler.runs >= 1
