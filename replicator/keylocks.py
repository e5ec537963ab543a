"""Per-key locks across processes: one replicator process at a time works on a key's
events for a destination (S3_SYNC_EVENTS=jetstream).

Several processes read one durable consumer; two events for one key (an upload, then
its overwrite) may go to two of them, and both would copy it. The per-key convergence
re-reads the source after each write, so the result is right either way: the lock only
spares the duplicate work. So it never blocks anything. A key held elsewhere is handed
back to NATS for a couple of seconds; a lock that can't be taken or released because
NATS is unreachable is worked on without it.

- **Take**: create the key's entry in a KV bucket whose max age is the ack wait (it
  must not exist). A holder that dies stops renewing, and its entry ages out when NATS
  would deliver its messages again anyway.
- **Fold**: a key this process holds already (its item was queued again, or a newer
  event for it waits in the queue) is taken without asking NATS.
- **Renew**: with the in-progress heartbeats, update each held entry at the revision
  last written; one refused (it aged out, and maybe another took it) is no longer held.
- **Release**: delete at that revision, after the key's messages are settled.

One lock per key and destination: the entry is ``<consumer>.<sha256 of the key>``
(KV keys take only ``[-/_=.A-Za-z0-9]``; object keys take anything). Its value is the
holder, as the reconcile lease's is (``nats kv get replicator-keys <entry>``). An entry
of our own holder found at take time is a leftover of ours (a release lost with the
connection, or this container's previous life under the same name): taken over.

Everything here runs on the JetStream event loop (jetstream.py): the operations on one
entry are serialized by its own asyncio lock, so a renewal never races its release.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Protocol

from loguru import logger

from .errors import TransientError
from .lease import Conflict

BUCKET = "replicator-keys"
HELD_ELSEWHERE_DELAY = 2.0  # seconds a message waits whose key another process holds


def lock_name(consumer: str, key: str) -> str:
    """PURE: the KV entry of ``key``'s lock for one destination's consumer."""
    return f"{consumer}.{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()}"


class Store(Protocol):
    """A KV bucket's operations, asynchronously. Each raises Conflict when the entry
    isn't as expected, TransientError when NATS doesn't answer."""

    async def create(self, name: str, value: bytes) -> int: ...

    async def update(self, name: str, value: bytes, last: int) -> int: ...

    async def delete(self, name: str, last: int) -> None: ...

    async def entry(self, name: str) -> tuple[bytes, int] | None:
        """Its value and revision; None if absent."""


@dataclass(eq=False)
class _Held:
    revision: int | None = None  # None while being taken
    mutex: asyncio.Lock = field(default_factory=asyncio.Lock)


class KeyLocks:
    def __init__(self, store: Store, consumer: str, holder: str):
        self.store, self.consumer, self.holder = store, consumer, holder.encode()
        self._held: dict[str, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, key: str) -> bool:
        """Whether this process holds ``key``'s lock."""
        return lock_name(self.consumer, key) in self._held

    async def take(self, key: str) -> bool:
        """Hold ``key``'s lock; False if another process holds it. True without a lock
        when NATS doesn't answer: correctness never depends on it."""
        name = lock_name(self.consumer, key)
        while True:
            held = self._held.get(name)
            if held is None:
                held = self._held[name] = _Held()
            async with held.mutex:
                if self._held.get(name) is not held:
                    continue  # released (or refused) while we waited: start over
                if held.revision is not None:
                    return True  # ours already: this work folds into it
                try:
                    held.revision = await self._create(name)
                except TransientError as error:
                    logger.debug("{}: key lock not taken ({}); working on it without", key, error)
                    return True
                finally:
                    if held.revision is None:  # refused, failed or cancelled: not held
                        del self._held[name]
                return held.revision is not None

    async def _create(self, name: str) -> int | None:
        """The new entry's revision, or None if another holder has it."""
        try:
            return await self.store.create(name, self.holder)
        except Conflict:
            pass
        found = await self.store.entry(name)
        if found is None or found[0] != self.holder:
            return None  # another's (or aged out this instant: the message comes back in 2 s)
        try:
            return await self.store.update(name, self.holder, found[1])
        except Conflict:
            return None

    async def release(self, key: str) -> None:
        """Give ``key``'s lock up, if held. One that can't be deleted ages out."""
        name = lock_name(self.consumer, key)
        held = self._held.get(name)
        if held is None:
            return
        async with held.mutex:
            if self._held.get(name) is not held:
                return
            del self._held[name]
            if held.revision is None:
                return
            try:
                await self.store.delete(name, held.revision)
            except Conflict:
                pass  # aged out, and maybe taken: nothing of ours to delete
            except TransientError as error:
                logger.debug("{}: key lock not released ({}); it ages out", name, error)

    async def renew(self) -> None:
        """Renew every held lock (with the in-progress heartbeats, every third of the
        bucket's max age); a lock whose renewal is refused is no longer held."""
        for name, held in list(self._held.items()):
            async with held.mutex:
                if self._held.get(name) is not held or held.revision is None:
                    continue
                try:
                    held.revision = await self.store.update(name, self.holder, held.revision)
                except Conflict:
                    del self._held[name]
                    logger.debug("{}: key lock lost (aged out); its work goes on, re-read as always", name)
                except TransientError as error:
                    logger.debug("{}: key lock not renewed ({})", name, error)
