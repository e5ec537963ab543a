"""Bounded concurrency helpers: the reason memory stays flat however big the bucket.

- ``BoundedExecutor``: a thread pool whose ``submit`` blocks once ``limit`` tasks
  are queued or running, so a producer (a listing) can't race ahead of the workers
  and pile up work in memory (s3transfer's pattern).
- ``prefetch``: runs an iterator in a thread, a bounded number of items ahead, so
  the two listings' network round trips overlap each other and the diff.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class BoundedExecutor:
    def __init__(self, workers: int, limit: int | None = None, name: str = "worker"):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._slots = threading.BoundedSemaphore(limit or workers * 2)

    def submit(self, fn: Callable[..., T], *args) -> Future[T]:
        self._slots.acquire()
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def shutdown(self, wait: bool = True, cancel: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel)

    def __enter__(self) -> BoundedExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown(wait=True, cancel=exc[0] is not None)


_DONE = object()


def prefetch(source: Iterator[T], depth: int = 2000, name: str = "prefetch", batch: int = 500) -> Iterator[T]:
    """Yield source's items, produced by a background thread at most ``depth`` ahead.
    Items cross between the threads in lists of up to ``batch``: one queue hand-off per
    item was the largest CPU cost of a no-op reconcile once listings were parsed lean.
    An exception in the producer is re-raised in the consumer at the same position.
    Closing the generator early stops the producer."""
    batch = max(1, min(batch, depth))
    chunks: queue.Queue = queue.Queue(maxsize=max(1, depth // batch))
    closed = threading.Event()

    def put(chunk) -> bool:
        while not closed.is_set():
            try:
                chunks.put(chunk, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        pending: list = []
        try:
            for item in source:
                pending.append(item)
                if len(pending) >= batch:
                    if not put(pending):
                        return
                    pending = []
            put(pending)
            put((_DONE, None))
        except BaseException as exc:  # forwarded to the consumer, which decides
            put(pending)
            put((_DONE, exc))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            chunk = chunks.get()
            if type(chunk) is tuple:
                if chunk[1] is not None:
                    raise chunk[1]
                return
            yield from chunk
    finally:
        closed.set()
