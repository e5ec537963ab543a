"""One holder at a time: a lease on a key of a JetStream key-value bucket.

Several replicator processes read one durable consumer per destination and share its
events; the full reconcile of a destination must run in one of them at a time, or
they would list the buckets N times over and race each other's deletes. The lease
decides which.

- **Acquire**: create the key (it must not exist). The bucket's TTL is the lease's: a
  holder that stops renewing (killed, partitioned, paused) loses it when its last
  write ages out, and another can create the key again.
- **Renew**: update the key *at the revision the holder last wrote*. Any write in
  between (another holder, after an expiry) moves the revision, and the renewal is
  refused: the holder has lost the lease and must stop.
- **Fencing**: the revision a holder holds is its token. Before each step with effects
  outside (a batch of deletes), the holder renews; a holder whose renewal is refused
  makes no more writes. A stale holder can't delete what the new one decided to keep.

The KV operations are passed in (:class:`Store`): the rules here are pure, and tested
against a real nats-server in tests/integration/test_jetstream.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .errors import ReplicatorError

TTL = 30.0  # seconds a lease outlives its holder's last renewal; renewed every third of it


class Conflict(Exception):
    """The key exists (create) or moved on from the revision given (update)."""


class Store(Protocol):
    def create(self, key: str, value: bytes) -> int:
        """Write ``key`` if absent; its revision. Raises Conflict if present."""

    def update(self, key: str, value: bytes, last: int) -> int:
        """Write ``key`` if its revision is still ``last``; the new one. Raises Conflict otherwise."""

    def delete(self, key: str, last: int) -> None:
        """Delete ``key`` if its revision is still ``last``. Raises Conflict otherwise."""


@dataclass
class Lease:
    store: Store
    key: str
    holder: str  # who we are, written as the value: who holds it is visible (nats kv get)
    revision: int | None = field(default=None, init=False)  # the fencing token while held
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def held(self) -> bool:
        return self.revision is not None

    def hold(self) -> bool:
        """Acquire the lease, or renew it if held. False if another holds it (or took it
        over): then nothing may be written under it."""
        with self._lock:
            try:
                if self.revision is None:
                    self.revision = self.store.create(self.key, self.holder.encode())
                else:
                    self.revision = self.store.update(self.key, self.holder.encode(), self.revision)
            except Conflict:
                self.revision = None
                return False
            return True

    def forget(self) -> None:
        """Count it lost without a word to the store (which can't be reached): it ages
        out there, and nothing more may be written under it here."""
        with self._lock:
            self.revision = None

    def release(self) -> None:
        """Give it up at once (a clean stop), so another needn't wait for the TTL."""
        with self._lock:
            if self.revision is None:
                return
            try:
                self.store.delete(self.key, self.revision)
            except Conflict:
                pass  # taken over already: nothing of ours to delete
            self.revision = None


class Renewer:
    """Renews a held lease every ``every`` seconds while the block runs; ``on_lost`` is
    called once if a renewal is refused, or if NATS stays unreachable until the lease
    would have aged out unrenewed."""

    def __init__(self, lease: Lease, every: float, on_lost: Callable[[], None]):
        from .pool import Every

        self.lease, self.every, self.on_lost = lease, every, on_lost
        self._renewed = time.monotonic()
        self._every = Every(every, self._renew, name="lease")

    def __enter__(self) -> Renewer:
        self._every.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._every.__exit__(*exc)

    def _renew(self) -> bool:
        try:
            held = self.lease.hold()
        except ReplicatorError:  # NATS away: the lease holds until its TTL has passed unrenewed
            held = time.monotonic() - self._renewed < TTL - self.every
            if not held:
                self.lease.forget()
        else:
            self._renewed = time.monotonic()
        if not held:
            self.on_lost()
        return held
