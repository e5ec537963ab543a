"""The token buckets of ratelimit.py, on a fake clock: nothing here sleeps."""

from __future__ import annotations

import threading

import pytest

from replicator import config, ratelimit
from replicator.ratelimit import Limits, TokenBucket
from replicator.retry import Stopped

KiB, MiB = 1024, 1024 * 1024


class FakeTime:
    """A clock, and a stop event whose wait moves the clock instead of sleeping."""

    def __init__(self, *, advance: bool = True):
        self.now = 0.0
        self.stopped = False
        self.waits: list[float] = []
        self._advance = advance
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def wait(self, timeout: float | None = None) -> bool:
        with self._lock:
            self.waits.append(timeout or 0.0)
            if not self.stopped and self._advance:
                self.now += timeout or 0.0
        return self.stopped


def bucket(rate: float, burst: float, time: FakeTime) -> TokenBucket:
    return TokenBucket(rate, burst, time, time.clock)


@pytest.mark.parametrize(
    ("rate", "burst", "takes", "waits"),
    [
        (100, 10, [10], []),  # the burst goes at once
        (100, 10, [10, 10], [0.1]),  # then at the rate
        (100, 10, [5, 5, 5], [0.05]),
        (100, 10, [1000], [9.9]),  # a take larger than the burst: paid for at the rate, not refused
        (1000, 0, [100, 100, 100], [0.1, 0.1, 0.1]),  # no burst: every take waits
    ],
)
def test_takes_wait_for_their_tokens_at_the_rate(rate, burst, takes, waits):
    time = FakeTime()
    limiter = bucket(rate, burst, time)
    for n in takes:
        assert limiter.take(n)
    assert time.waits == pytest.approx(waits)


def test_an_idle_bucket_saves_up_no_more_than_its_burst():
    time = FakeTime()
    limiter = bucket(100, 10, time)
    time.now = 3600.0  # an hour idle: still only 10 tokens saved
    assert limiter.take(10)
    assert time.waits == []
    assert limiter.take(1)
    assert time.waits == pytest.approx([0.01])


def test_takers_in_parallel_share_one_budget_in_turn():
    # The clock stands still, so each take's wait is exactly where it stands in line: a
    # lost update under concurrency would show as two takes with the same wait.
    time = FakeTime(advance=False)
    limiter = bucket(1000, 0, time)

    def taker():
        for _ in range(50):
            limiter.take(100)

    threads = [threading.Thread(target=taker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(time.waits) == pytest.approx([0.1 * i for i in range(1, 401)])


def test_a_set_stop_event_cuts_a_take_short():
    time = FakeTime()
    limiter = bucket(100, 0, time)
    time.stopped = True
    assert limiter.take(100) is False
    assert time.now == 0.0


def paced_sends(rate: float, body: bytes) -> list[tuple[float, int]]:
    """(time, bytes) of each chunk of ``body`` as urllib3 would take them."""
    time = FakeTime()
    limits = Limits(bucket(rate, rate * ratelimit.BURST, time), None)
    sent = []
    chunks = limits.paced(body)
    assert not isinstance(chunks, bytes)
    for chunk in chunks:
        sent.append((time.now, len(chunk)))
    assert b"".join(bytes(c) for c in limits.paced(body)) == body
    return sent


@pytest.mark.parametrize(("rate", "size"), [(10 * MiB, 8 * MiB), (64 * KiB, 256 * KiB), (100 * MiB, 64 * MiB)])
def test_a_body_is_paced_in_chunks_so_no_second_carries_much_more_than_the_limit(rate, size):
    sent = paced_sends(rate, b"x" * size)
    assert max(n for _, n in sent) <= ratelimit.CHUNK
    assert sum(n for _, n in sent) == size
    # The whole body takes its size over the rate, less the burst it may start with.
    assert sent[-1][0] == pytest.approx((size - rate * ratelimit.BURST) / rate, abs=1 / 20)
    # Any one-second window, wherever it starts: at most the rate plus the burst.
    for start, _ in sent:
        window = sum(n for t, n in sent if start <= t < start + 1)
        assert window <= rate * (1 + ratelimit.BURST) + ratelimit.CHUNK


def test_a_body_without_a_bandwidth_limit_is_sent_as_it_is():
    body = b"x" * MiB
    assert Limits(None, bucket(10, 1, FakeTime())).paced(body) is body
    assert Limits(bucket(MiB, 0, FakeTime()), None).paced(b"") == b""


def test_a_body_stops_mid_send_when_the_abort_is_set():
    time = FakeTime()
    limits = Limits(bucket(MiB, 0, time), None)
    chunks = limits.paced(b"x" * MiB)
    next(iter(chunks))  # type: ignore[call-overload]
    time.stopped = True
    with pytest.raises(Stopped):
        list(chunks)  # type: ignore[call-overload]


def test_a_request_goes_unpaced_once_the_abort_is_set():
    # An abandoned copy's clean-up (aborting its multipart upload) must not wait in line.
    time = FakeTime()
    limits = Limits(None, bucket(1, 0, time))
    time.stopped = True
    limits.request()
    assert time.now == 0.0


class Events:
    def __init__(self):
        self.handlers: dict[str, object] = {}

    def register(self, name, handler):
        self.handlers[name] = handler


class Request:
    def __init__(self, body):
        self.body = body


def test_a_boto3_call_takes_a_request_token_before_it_is_signed_and_its_bytes_before_it_is_sent():
    time = FakeTime()
    limits = Limits(bucket(1000, 0, time), bucket(10, 0, time))
    events = Events()
    limits.hook(events)
    events.handlers["before-call.s3.*"](model=None, params={})
    assert time.waits == pytest.approx([0.1])
    events.handlers["before-send.s3.*"](request=Request(b"x" * 500))
    events.handlers["before-send.s3.*"](request=Request(None))
    assert time.waits == pytest.approx([0.1, 0.5])


def test_a_boto3_client_without_a_bandwidth_limit_gets_no_send_hook():
    events = Events()
    Limits(None, bucket(10, 1, FakeTime())).hook(events)
    assert set(events.handlers) == {"before-call.s3.*"}


REQUIRED = {"S3_SYNC_ACCESS_KEY": "k", "S3_SYNC_SECRET_KEY": "s", "S3_SYNC_BUCKET": "mirror"}


@pytest.mark.parametrize(
    ("env", "bandwidth", "requests"),
    [
        ({"S3_SYNC_MAX_BANDWIDTH": "10MiB"}, (10 * MiB, MiB), None),
        ({"S3_SYNC_MAX_REQUESTS_PER_SECOND": "5"}, None, (5.0, 1.0)),  # at least one request at once
        ({"S3_SYNC_MAX_BANDWIDTH": "1GiB", "S3_SYNC_MAX_REQUESTS_PER_SECOND": "3500"}, (1024 * MiB, 102.4 * MiB),
         (3500.0, 350.0)),
    ],
)
def test_the_buckets_built_from_the_settings(env, bandwidth, requests):
    limits = ratelimit.for_destination(config.load({**REQUIRED, **env}), threading.Event())
    assert limits is not None
    for built, expected in ((limits.bandwidth, bandwidth), (limits.requests, requests)):
        if expected is None:
            assert built is None
        else:
            assert (built.rate, built.burst) == pytest.approx(expected)


def test_no_limits_set_means_nothing_on_the_copy_path():
    assert ratelimit.for_destination(config.load(REQUIRED), threading.Event()) is None


@pytest.mark.parametrize(("rate", "chunk"), [(10 * MiB, 64 * KiB), (640 * KiB, 32 * KiB), (64 * KiB, 3276),
                                             (1, 1024)])
def test_chunks_are_a_twentieth_of_a_second_within_bounds(rate, chunk):
    assert Limits(bucket(rate, 0, FakeTime()), None).chunk == chunk
