"""retry.RetryPolicy with a fake stop event: the waits are recorded, never slept."""

from __future__ import annotations

import pytest

from replicator.errors import FatalError, NotFound, PermanentError, SourceChanged, TransientError
from replicator.retry import MAX_BACKOFF, RetryPolicy, Stopped


class FakeStop:
    """Stands in for threading.Event: records each backoff instead of waiting it out."""

    def __init__(self, set_after: int | None = None):
        self.waits: list[float] = []
        self._set_after = set_after

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return self.is_set()

    def is_set(self) -> bool:
        return self._set_after is not None and len(self.waits) >= self._set_after


class FixedRng:
    """uniform(a, b) always returns a + share·(b − a)."""

    def __init__(self, share: float):
        self.share = share

    def uniform(self, a: float, b: float) -> float:
        return a + self.share * (b - a)


def policy(attempts: int = 3, base: float = 1.0, *, share: float = 1.0, stop: FakeStop | None = None,
           on_retry=None) -> RetryPolicy:
    return RetryPolicy(attempts, base, stop=stop or FakeStop(), rng=FixedRng(share), on_retry=on_retry)


def transient(detail: str = "SlowDown (HTTP 503)", retry_after: float | None = None) -> TransientError:
    return TransientError("destination", "put", "k", detail, code="SlowDown", retry_after=retry_after)


class Flaky:
    """Fails with the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


# --- delays ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("base", "share", "expected"),
    [
        (1.0, 1.0, [1.0, 2.0, 4.0, 8.0, 16.0]),  # ceiling doubles each attempt
        (1.0, 0.0, [0.5, 1.0, 2.0, 4.0, 8.0]),  # full jitter never goes below half the ceiling
        (60.0, 1.0, [60.0, 120.0, 240.0, 480.0, MAX_BACKOFF]),  # capped
        (0.0, 1.0, [0.0] * 5),
    ],
)
def test_delay_grows_exponentially(base, share, expected):
    p = policy(base=base, share=share)
    assert [p.delay(attempt, None) for attempt in range(1, 6)] == expected


def test_jitter_stays_within_half_to_full_ceiling():
    import random

    p = RetryPolicy(5, 4.0, stop=FakeStop(), rng=random.Random(7))
    for attempt in range(1, 5):
        ceiling = 4.0 * 2 ** (attempt - 1)
        for _ in range(50):
            assert ceiling / 2 <= p.delay(attempt, None) <= ceiling


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(None, 1.0), (0.0, 1.0), (0.5, 1.0), (30.0, 30.0), (10_000.0, MAX_BACKOFF)],
)
def test_retry_after_is_a_floor(retry_after, expected):
    assert policy(base=1.0).delay(1, transient(retry_after=retry_after)) == expected


# --- call ----------------------------------------------------------------------------

def test_transient_errors_are_retried_until_success():
    stop = FakeStop()
    fn = Flaky(transient(), transient())
    assert policy(attempts=3, base=2.0, stop=stop).call(fn) == "ok"
    assert fn.calls == 3
    assert stop.waits == [2.0, 4.0]


def test_retry_after_governs_the_actual_wait():
    stop = FakeStop()
    policy(attempts=2, base=1.0, stop=stop).call(Flaky(transient(retry_after=12.0)))
    assert stop.waits == [12.0]


def test_attempts_are_bounded_and_the_last_error_propagates_unchanged():
    stop = FakeStop()
    errors = [transient("first"), transient("second"), transient("third"), transient("never reached")]
    fn = Flaky(*errors)
    with pytest.raises(TransientError) as caught:
        policy(attempts=3, stop=stop).call(fn)
    assert caught.value is errors[2]
    assert fn.calls == 3
    assert len(stop.waits) == 2


def test_one_attempt_means_no_retry():
    stop = FakeStop()
    fn = Flaky(transient())
    with pytest.raises(TransientError):
        policy(attempts=1, stop=stop).call(fn)
    assert (fn.calls, stop.waits) == (1, [])


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("destination", "put", "k", "InvalidArgument"),
        NotFound("source", "get", "k", "NoSuchKey"),
        FatalError("destination", "put", "k", "InvalidAccessKeyId"),
        # The same pinned GET would fail again: the copier restarts the object instead.
        SourceChanged("source", "get", "k", "PreconditionFailed"),
        ValueError("a bug, not an S3 error"),
    ],
    ids=type,
)
def test_only_transient_errors_are_retried(error):
    stop = FakeStop()
    fn = Flaky(error)
    with pytest.raises(type(error)):
        policy(attempts=5, stop=stop).call(fn)
    assert (fn.calls, stop.waits) == (1, [])


def test_stop_event_cuts_the_backoff_short():
    stop = FakeStop(set_after=1)
    fn = Flaky(transient(), transient(), transient())
    with pytest.raises(Stopped):
        policy(attempts=5, stop=stop).call(fn)
    assert fn.calls == 1


def test_on_retry_sees_each_retried_error():
    seen: list[BaseException] = []
    errors = [transient("a"), transient("b")]
    policy(attempts=3, on_retry=seen.append).call(Flaky(*errors))
    assert seen == errors


# --- resumable listings ------------------------------------------------------------------

class FlakyListing:
    """list_from over keys; raises TransientError after yielding the items listed in
    ``fail_after`` (one failure per entry, in order)."""

    def __init__(self, keys: list[str], fail_after: list[int]):
        self.keys = keys
        self.fail_after = list(fail_after)
        self.starts: list[str | None] = []

    def __call__(self, start_after: str | None):
        self.starts.append(start_after)
        remaining = [k for k in self.keys if start_after is None or k > start_after]
        budget = self.fail_after.pop(0) if self.fail_after else None
        for count, key in enumerate(remaining):
            if budget is not None and count == budget:
                raise TransientError("source", "list", start_after, "InternalError (HTTP 500)")
            yield key
        if budget is not None and budget >= len(remaining):
            raise TransientError("source", "list", start_after, "connection reset")


KEYS = [f"k{i:02d}" for i in range(10)]


def test_resumable_listing_resumes_after_the_last_key():
    listing = FlakyListing(KEYS, fail_after=[4, 3])
    stop = FakeStop()
    got = list(policy(attempts=3, stop=stop).resumable(listing, lambda k: k))
    assert got == KEYS  # nothing lost, nothing twice
    assert listing.starts == [None, "k03", "k06"]
    assert len(stop.waits) == 2


def test_resumable_listing_budget_resets_after_progress():
    # Four failures in a run of 3 attempts: fine, because each came after progress.
    listing = FlakyListing(KEYS, fail_after=[2, 2, 2, 2])
    assert list(policy(attempts=2).resumable(listing, lambda k: k)) == KEYS


def test_resumable_listing_gives_up_after_consecutive_failures():
    listing = FlakyListing(KEYS, fail_after=[3, 0, 0])
    got: list[str] = []
    with pytest.raises(TransientError):
        for key in policy(attempts=3).resumable(listing, lambda k: k):
            got.append(key)
    assert got == KEYS[:3]
    assert listing.starts == [None, "k02", "k02"]


def test_resumable_listing_does_not_retry_permanent_errors():
    def list_from(start_after):
        yield "a"
        raise FatalError("source", "list", None, "NoSuchBucket")

    stop = FakeStop()
    with pytest.raises(FatalError):
        list(policy(attempts=5, stop=stop).resumable(list_from, lambda k: k))
    assert stop.waits == []


def test_resumable_listing_stops_when_asked():
    listing = FlakyListing(KEYS, fail_after=[1])
    with pytest.raises(Stopped):
        list(policy(attempts=5, stop=FakeStop(set_after=1)).resumable(listing, lambda k: k))
