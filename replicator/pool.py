"""Bounded concurrency helpers: the reason memory stays flat however big the bucket.

- ``BoundedExecutor``: a thread pool whose ``submit`` blocks once ``limit`` tasks
  are queued or running, so a producer (a listing) can't race ahead of the workers
  and pile up work in memory (s3transfer's pattern).
- ``prefetch``: runs an iterator in a thread, a bounded number of items ahead, so
  the two listings' network round trips overlap each other and the diff.
- ``ordered_chain``: concatenates iterators in order while running the next few of
  them ahead in threads, so a listing split by prefix pays its servers' page latency
  a few prefixes at a time and still comes out in key order.
- ``ByteBudget``: bytes held at once between threads, so the memory of copies in
  flight is bounded by their sizes, not by how many threads copy.
- ``Every``: something to do every so many seconds while a block runs (a lease's
  renewals, a range task's heartbeats).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from .observability.context import inherit
from .retry import Stopped

T = TypeVar("T")


class BoundedExecutor:
    def __init__(self, workers: int, limit: int | None = None, name: str = "worker"):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._slots = threading.BoundedSemaphore(limit or workers * 2)

    def submit(self, fn: Callable[..., T], *args) -> Future[T]:
        self._slots.acquire()
        try:
            future = self._pool.submit(inherit(fn), *args)
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


def _put_unless_closed(chunks: queue.Queue, chunk, closed: threading.Event) -> bool:
    """Put ``chunk`` on the bounded queue, waiting for room; False (and nothing put)
    once the consumer has gone (``closed``)."""
    while not closed.is_set():
        try:
            chunks.put(chunk, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _close(iterator) -> None:
    """Close a generator (or anything with close()): a listing stops its threads."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def prefetch(source: Iterator[T], depth: int = 2000, name: str = "prefetch", batch: int = 500) -> Iterator[T]:
    """Yield source's items, produced by a background thread at most ``depth`` ahead.
    Items cross between the threads in lists of up to ``batch``: one queue hand-off per
    item was the largest CPU cost of a no-op reconcile once listings were parsed lean.
    An exception in the producer is re-raised in the consumer at the same position.
    Closing the generator early stops the producer, which closes ``source`` (a listing
    that lists in threads of its own stops them)."""
    batch = max(1, min(batch, depth))
    chunks: queue.Queue = queue.Queue(maxsize=max(1, depth // batch))
    closed = threading.Event()

    def put(chunk) -> bool:
        return _put_unless_closed(chunks, chunk, closed)

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
        except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer, which decides
            put(pending)
            put((_DONE, exc))
        finally:
            _close(source)

    thread = threading.Thread(target=inherit(produce), name=name, daemon=True)
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


class _Ahead:
    """One part of an ``ordered_chain`` running in a worker: its lists go through a
    queue of at most ``buffer`` lists; its end, or its error, follows them."""

    def __init__(self, open_part: Callable[[], Iterable[list]], buffer: int, closed: threading.Event):
        self._open = open_part
        self._lists: queue.Queue = queue.Queue(maxsize=buffer)
        self._closed = closed
        self.future: Future | None = None

    def _put(self, entry) -> bool:
        return _put_unless_closed(self._lists, entry, self._closed)

    def run(self) -> None:
        lists = None
        try:
            lists = iter(self._open())
            for chunk in lists:
                if not self._put(chunk):
                    return
            self._put((_DONE, None))
        except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer, at this part's turn
            self._put((_DONE, exc))
        finally:
            _close(lists)

    def lists(self) -> Iterator[list]:
        while True:
            try:
                chunk = self._lists.get(timeout=0.5)
            except queue.Empty:
                if self.future is not None and self.future.done() and self._lists.empty():
                    self.future.result()  # the worker died outside run()'s handler
                    raise RuntimeError("an ordered_chain worker ended without its result") from None
                continue
            if type(chunk) is tuple:
                if chunk[1] is not None:
                    raise chunk[1]
                return
            yield chunk


Part = list[T] | Callable[[], Iterable[list[T]]]


def ordered_chain(parts: Iterable[Part[T]], workers: int, *, buffer: int = 2,
                  name: str = "chain") -> Generator[T, None, None]:
    """Yield every item of ``parts``, in order. A part is a list of items, or a callable
    that returns an iterable of lists. Callables run in up to ``workers`` threads,
    started ahead of their turn, each at most ``buffer`` lists ahead of the consumer.
    At most ``2 * workers`` parts are pulled from ``parts`` ahead, so memory is bounded
    by the settings, never by how many parts there are.

    A part's error is raised at its turn, after every item before it: a consumer that
    resumes after the last item it got misses nothing. Closing the generator (or an
    error) stops the workers and waits for them: no thread outlives the chain."""
    workers = max(1, workers)
    closed = threading.Event()
    pending: deque = deque()
    running = 0
    source = iter(parts)
    exhausted = False
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    try:
        while True:
            while not exhausted and running < workers and len(pending) < 2 * workers:
                part = next(source, _DONE)
                if part is _DONE:
                    exhausted = True
                elif callable(part):
                    ahead = _Ahead(part, max(1, buffer), closed)
                    ahead.future = executor.submit(inherit(ahead.run))
                    pending.append(ahead)
                    running += 1
                else:
                    pending.append(part)
            if not pending:
                return
            head = pending.popleft()
            if type(head) is _Ahead:
                for chunk in head.lists():
                    yield from chunk
                running -= 1
            else:
                yield from head
    finally:
        closed.set()
        executor.shutdown(wait=True, cancel_futures=True)
        _close(source)


class ByteBudget:
    """At most ``limit`` bytes held at once between all holders, granted in arrival
    order, so a large request isn't starved by a stream of small ones."""

    def __init__(self, limit: int):
        self.limit = limit
        self._held = 0
        self._waiting: deque[object] = deque()  # a token per waiting holder, oldest first
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, size: int, abort: threading.Event) -> Iterator[None]:
        """Hold ``size`` bytes (at most the whole budget) for the block. Raises
        ``Stopped`` if ``abort`` is set while waiting."""
        size = min(size, self.limit)
        with self._cond:
            if self._waiting or self._held + size > self.limit:
                token = object()
                self._waiting.append(token)
                try:
                    while self._waiting[0] is not token or self._held + size > self.limit:
                        if abort.is_set():
                            raise Stopped()
                        self._cond.wait(0.5)
                finally:
                    self._waiting.remove(token)
                    self._cond.notify_all()  # the next in line may fit too
            self._held += size
        try:
            yield
        finally:
            with self._cond:
                self._held -= size
                if self._waiting:
                    self._cond.notify_all()

    def held(self) -> int:
        with self._cond:
            return self._held


class Every:
    """Calls ``tick`` every ``seconds``, on a thread of its own (in the caller's log
    context), from the block's start until its end or until ``tick`` returns False."""

    def __init__(self, seconds: float, tick: Callable[[], bool], name: str):
        self._seconds, self._tick = seconds, tick
        self._done = threading.Event()
        self._thread = threading.Thread(target=inherit(self._run), name=name, daemon=True)

    def __enter__(self) -> Every:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self._seconds):
            if not self._tick():
                return
