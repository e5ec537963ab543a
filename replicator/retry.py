"""The retry policy: the one home of tenacity.

Retry levels, one owner each (attempts would multiply otherwise):
- the SDKs: none (configured off in stores/);
- a unit of transfer (one object's PUT, one multipart part, one listing page, one
  delete batch): this module, ``S3_SYNC_MAX_RETRIES`` attempts with exponential
  backoff from ``S3_SYNC_RETRY_DELAY``, full jitter, and a server's Retry-After
  honoured as a floor;
- a whole run: the next reconcile.

Only ``TransientError`` is retried. The stop event cuts a backoff short, so a
shutdown never waits out a sleep.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from loguru import logger
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from .errors import SourceChanged, TransientError, log_fields

T = TypeVar("T")

MAX_BACKOFF = 600.0


def _retryable(error: BaseException) -> bool:
    # SourceChanged is transient for the object but not for the request: the same
    # pinned GET would fail again. The copier restarts the whole object instead.
    return isinstance(error, TransientError) and not isinstance(error, SourceChanged)


class Stopped(Exception):
    """The stop event was set while waiting to retry."""


class RetryPolicy:
    def __init__(self, attempts: int, base_delay: float, *, stop: threading.Event | None = None,
                 rng: random.Random | None = None, on_retry: Callable[[TransientError], None] | None = None):
        self.attempts = max(1, attempts)
        self.base_delay = base_delay
        self.stop = stop or threading.Event()
        self._rng = rng or random.Random()
        self._on_retry = on_retry

    def delay(self, attempt: int, error: BaseException | None) -> float:
        """Backoff before attempt ``attempt + 1``: full jitter over an exponential
        ceiling (many workers hitting one SlowDown mustn't retry in lockstep),
        never shorter than the server's Retry-After."""
        ceiling = min(MAX_BACKOFF, self.base_delay * (2.0 ** (attempt - 1)))  # int ** int is Any to mypy
        wait = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        retry_after = error.retry_after if isinstance(error, TransientError) else None
        if retry_after:
            wait = max(wait, min(retry_after, MAX_BACKOFF))
        return wait

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return self.delay(state.attempt_number, error)

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Stopped()

    def _before_sleep(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if self._on_retry and isinstance(error, TransientError):
            self._on_retry(error)
        seconds = state.next_action.sleep if state.next_action else 0
        fields = log_fields(error) if error is not None else {}
        logger.warning("{} (attempt {}/{}); retrying in {:.1f}s", error, state.attempt_number, self.attempts, seconds,
                       event="retry", attempt=state.attempt_number, **fields)

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn, retrying TransientError. The last error propagates unchanged."""
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=retry_if_exception(_retryable),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        return retrying(fn)

    def resumable(self, list_from: Callable[[str | None], Iterator[T]], key_of: Callable[[T], str]) -> Iterator[T]:
        """A listing that survives transient failures by resuming after the last key it
        yielded, so a blip on page 90 of 100 costs one page, not the whole listing.
        The attempt budget applies per failure streak and resets after progress."""
        last: str | None = None
        failures = 0
        while True:
            try:
                for item in list_from(last):
                    yield item
                    last = key_of(item)
                    failures = 0
                return
            except TransientError as error:
                failures += 1
                if failures >= self.attempts:
                    raise
                if self._on_retry:
                    self._on_retry(error)
                seconds = self.delay(failures, error)
                logger.warning("{} (attempt {}/{}); resuming the listing in {:.1f}s",
                               error, failures, self.attempts, seconds, event="retry", attempt=failures,
                               **log_fields(error))
                self._sleep(seconds)
