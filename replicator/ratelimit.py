"""A destination's bandwidth and request-rate limits (``S3_SYNC_MAX_BANDWIDTH``,
``S3_SYNC_MAX_REQUESTS_PER_SECOND``): one token bucket each, shared by every thread
that sends to the destination, events and reconciles alike.

Bytes are taken as they are sent, not per object after the fact: a PUT's or a part's
body goes to urllib3 as chunks of at most 64 KiB (``Limits.paced``), and each chunk
waits for its tokens just before urllib3 writes it, so an 8 MiB part is spread over
its share of the time, and parts and workers in parallel interleave on the one budget.
The bucket holds at most a tenth of a second's worth (``BURST``): whatever the timing,
no second carries more than 1.1 times the limit (docs/benchmarks.md measures it).

A taker reserves its tokens under the lock, going into debt if need be, and sleeps
outside it until the debt is paid: takers are served in the order they came, none
spins, and a large take is as exact as a small one. The stop event (the app's abort:
shutdown past its deadline) cuts every wait short. A body then raises ``Stopped``,
abandoning the transfer; a request goes, unpaced, because the requests that clean up
an abandoned copy (an abort of its multipart upload) must not wait behind the limit.

Why our own and not a library: PyPI's candidates don't fit. pyrate-limiter sleeps
with time.sleep (no stop event to cut it short) and refuses a weight above its
capacity; limits counts and never waits; aiolimiter is asyncio's. The whole thing here
is one reservation under a lock, as sweep.Pacer's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from loguru import logger

from .config import Settings
from .retry import Stopped

BURST = 0.1  # seconds of tokens a bucket holds: what can go at once after a pause
CHUNK = 64 * 1024  # the most a body sends per take
MIN_CHUNK = 1024  # a body's chunks at the lowest limits: a twentieth of a second's worth, not less


class StopEvent(Protocol):
    """What a bucket waits on: ``threading.Event`` (tests pass a fake whose wait moves a fake clock)."""

    def wait(self, timeout: float | None = None) -> bool: ...


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; thread-safe."""

    def __init__(self, rate: float, burst: float, stop: StopEvent, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._stop = stop
        self._clock = clock
        self._tokens = burst
        self._updated = clock()
        self._lock = threading.Lock()

    def reserve(self, n: float) -> float:
        """Take ``n`` tokens, into debt if there aren't enough: the seconds until they're paid for."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate) - n
            self._updated = now
            return -self._tokens / self.rate if self._tokens < 0 else 0.0

    def take(self, n: float) -> bool:
        """Wait until ``n`` tokens are ours. False, at once, if the stop event is or gets set."""
        delay = self.reserve(n)
        return delay <= 0 or not self._stop.wait(delay)


class Limits:
    """One destination's two buckets, either of them None for no limit."""

    def __init__(self, bandwidth: TokenBucket | None, requests: TokenBucket | None):
        self.bandwidth = bandwidth
        self.requests = requests
        # A twentieth of a second's worth, so even the lowest limit sends steadily.
        self.chunk = int(min(CHUNK, max(MIN_CHUNK, bandwidth.rate / 20))) if bandwidth else CHUNK

    def request(self) -> None:
        """Before every request to the destination: one request token."""
        if self.requests is not None:
            self.requests.take(1)  # cut short by the abort: the request goes (module docstring)

    def paced(self, body: bytes) -> bytes | Iterator[memoryview]:
        """``body`` as urllib3 should send it: as it is without a bandwidth limit, else
        chunks that each wait for their tokens as urllib3 asks for them. Raises
        ``Stopped`` from within the send when the abort cuts a wait short."""
        if self.bandwidth is None or not body:
            return body
        return _chunks(memoryview(body), self.chunk, self.bandwidth)

    def hook(self, events: Any) -> None:
        """Pace a boto3 client's calls too (``client.meta.events``): a request token
        before each call, so before it is signed (a signature waiting in line would go
        stale), and its body's bytes (small XML documents) before it is sent."""
        events.register("before-call.s3.*", self._before_call)
        if self.bandwidth is not None:
            events.register("before-send.s3.*", self._before_send)

    def _before_call(self, **kwargs: Any) -> None:
        self.request()

    def _before_send(self, request: Any, **kwargs: Any) -> None:
        body = request.body
        if self.bandwidth is not None and isinstance(body, bytes | bytearray) and body:
            self.bandwidth.take(len(body))


def _chunks(body: memoryview, size: int, bucket: TokenBucket) -> Iterator[memoryview]:
    for start in range(0, len(body), size):
        chunk = body[start:start + size]
        if not bucket.take(len(chunk)):
            raise Stopped()
        yield chunk


def for_destination(settings: Settings, stop: threading.Event) -> Limits | None:
    """The destination's limits, or None when neither is set: then nothing on the copy
    path changes."""
    if settings.max_bandwidth is None and settings.max_requests_per_second is None:
        return None
    bandwidth = requests = None
    if settings.max_bandwidth is not None:
        rate = float(settings.max_bandwidth)
        bandwidth = TokenBucket(rate, rate * BURST, stop)
    if settings.max_requests_per_second is not None:
        rate = settings.max_requests_per_second
        requests = TokenBucket(rate, max(1.0, rate * BURST), stop)
    logger.info("destination limits: {}, {}",
                f"{settings.max_bandwidth / 1024 / 1024:g} MiB/s" if settings.max_bandwidth else "any bandwidth",
                f"{settings.max_requests_per_second:g} requests/s" if settings.max_requests_per_second
                else "any request rate")
    return Limits(bandwidth, requests)
