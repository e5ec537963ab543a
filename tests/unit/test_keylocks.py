"""Per-key locks across processes (keylocks.py) over an in-memory KV bucket, and what a
worker does with them: one process at a time per key, the key's work folded in while
held, a key held elsewhere handed back, and never a lock that blocks the work. Then a
durable message's other promise to the processes: a copy for a message NATS stopped
hearing of (another process's by now) is given up, its upload aborted."""

from __future__ import annotations

import asyncio
import threading

import pytest
from prometheus_client import REGISTRY

from replicator import config
from replicator.config import MiB
from replicator.errors import TransientError
from replicator.keylocks import KeyLocks, lock_name
from replicator.lease import Conflict
from replicator.workqueue import WorkItem
from tests.unit.test_workers import Harness


class Bucket:
    """A KV bucket's rules: create only if absent, update and delete at the revision."""

    def __init__(self):
        self.entries: dict[str, tuple[bytes, int]] = {}
        self.revision = 0
        self.calls: list[str] = []
        self.down = False

    async def _step(self, what: str) -> None:
        self.calls.append(what)
        await asyncio.sleep(0)  # a round trip: other coroutines run meanwhile
        if self.down:
            raise TransientError("events", what, None, "NATS unreachable")

    def write(self, name: str, value: bytes) -> int:
        self.revision += 1
        self.entries[name] = (value, self.revision)
        return self.revision

    async def create(self, name: str, value: bytes) -> int:
        await self._step("create")
        if name in self.entries:
            raise Conflict(name)
        return self.write(name, value)

    async def update(self, name: str, value: bytes, last: int) -> int:
        await self._step("update")
        if self.entries.get(name, (b"", None))[1] != last:
            raise Conflict(name)
        return self.write(name, value)

    async def delete(self, name: str, last: int) -> None:
        await self._step("delete")
        if self.entries.get(name, (b"", None))[1] != last:
            raise Conflict(name)
        del self.entries[name]

    async def entry(self, name: str) -> tuple[bytes, int] | None:
        await self._step("get")
        return self.entries.get(name)


def deferred() -> float:
    """replicator_events_deferred_total, as /metrics would show it."""
    return REGISTRY.get_sample_value("replicator_events_deferred_total") or 0.0


def run(coroutine):
    return asyncio.run(coroutine)


def test_lock_names_are_kv_keys_whatever_the_object_key():
    name = lock_name("replicator-photos-aws", "any key/é\n*>.tmp")
    assert name.startswith("replicator-photos-aws.") and len(name) == len("replicator-photos-aws.") + 64
    assert all(c.isalnum() or c in "-_." for c in name)
    assert lock_name("c", "a") != lock_name("c", "b") and lock_name("c", "a") != lock_name("d", "a")


def test_one_process_at_a_time_holds_a_key():
    async def scenario():
        bucket = Bucket()
        first, second = KeyLocks(bucket, "c", "host-a-1"), KeyLocks(bucket, "c", "host-b-1")
        assert await first.take("k") and not await second.take("k")
        assert await second.take("other")  # other keys are free
        await first.release("k")
        assert await second.take("k") and "k" in second and "k" not in first

    run(scenario())


def test_a_key_held_already_is_taken_again_without_asking_nats():
    async def scenario():
        bucket = Bucket()
        locks = KeyLocks(bucket, "c", "host-a-1")
        assert await locks.take("k") and await locks.take("k")
        assert bucket.calls == ["create"]

    run(scenario())


def test_a_leftover_of_our_own_is_taken_over_and_anothers_is_not():
    async def scenario():
        bucket = Bucket()
        bucket.write(lock_name("c", "ours"), b"host-a-1")  # a release lost with the connection
        bucket.write(lock_name("c", "theirs"), b"host-b-1")
        locks = KeyLocks(bucket, "c", "host-a-1")
        assert await locks.take("ours") and not await locks.take("theirs")
        assert "theirs" not in locks and len(locks) == 1

    run(scenario())


def test_renewals_move_the_revision_and_a_lost_lock_is_no_longer_held():
    async def scenario():
        bucket = Bucket()
        locks = KeyLocks(bucket, "c", "host-a-1")
        await locks.take("kept")
        await locks.take("lost")
        before = bucket.entries[lock_name("c", "kept")][1]
        del bucket.entries[lock_name("c", "lost")]  # aged out (the holder was paused past the TTL)
        await locks.renew()
        assert bucket.entries[lock_name("c", "kept")][1] > before
        assert "kept" in locks and "lost" not in locks

    run(scenario())


def test_a_release_during_a_renewal_deletes_at_the_renewed_revision():
    async def scenario():
        bucket = Bucket()
        locks = KeyLocks(bucket, "c", "host-a-1")
        await locks.take("k")
        await asyncio.gather(locks.renew(), locks.release("k"))
        assert bucket.entries == {} and "k" not in locks

    run(scenario())


def test_nats_unreachable_means_working_without_the_lock():
    async def scenario():
        bucket = Bucket()
        bucket.down = True
        locks = KeyLocks(bucket, "c", "host-a-1")
        assert await locks.take("k") and "k" not in locks
        await locks.release("k")  # nothing held: nothing asked
        assert bucket.calls == ["create"]

    run(scenario())


class FakeLocks:
    retry_after = 2.0

    def __init__(self, held_elsewhere: set[str] = frozenset()):
        self.held_elsewhere = held_elsewhere
        self.calls: list[tuple[str, str]] = []

    def take(self, key: str) -> bool:
        self.calls.append(("take", key))
        return key not in self.held_elsewhere

    def release(self, key: str) -> None:
        self.calls.append(("release", key))


class Receipt:
    def __init__(self):
        self.events: list[tuple] = []

    def settle(self, converged: bool, why: str | None = None) -> None:
        self.events.append(("settle", converged))

    def hand_back(self, delay: float) -> None:
        self.events.append(("hand_back", delay))

    def lapsed(self) -> bool:
        return False


def one_pass(h: Harness, locks: FakeLocks) -> None:
    h.workers.locks = locks
    thread = threading.Thread(target=h.workers._loop, daemon=True)  # noqa: SLF001 - the loop takes the locks
    thread.start()
    import time

    deadline = time.monotonic() + 5
    while h.queue.depth() or h.queue.in_flight():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    h.queue.close()
    thread.join(5)


def durable(key: str, receipt: Receipt) -> WorkItem:
    return WorkItem(key, content=True, tags=False, event_time=0.0, receipts=(receipt,))


def test_a_worker_converges_a_key_under_its_lock_and_releases_it_after_settling():
    h = Harness()
    h.source.add("a.txt", b"data")
    receipt, locks = Receipt(), FakeLocks()
    h.queue.put(durable("a.txt", receipt))
    one_pass(h, locks)
    assert receipt.events == [("settle", True)] and h.dest.stat("a.txt") is not None
    assert locks.calls == [("take", "a.txt"), ("release", "a.txt")]


def test_a_key_held_by_another_process_is_handed_back_untouched():
    h = Harness()
    h.source.add("a.txt", b"data")
    receipt, locks = Receipt(), FakeLocks({"a.txt"})
    before = deferred()
    h.queue.put(durable("a.txt", receipt))
    one_pass(h, locks)
    assert receipt.events == [("hand_back", 2.0)] and h.dest.stat("a.txt") is None
    assert locks.calls == [("take", "a.txt")]
    assert deferred() == before + 1


def test_an_item_without_messages_takes_no_lock_but_gives_up_one_held():
    h = Harness()
    h.source.add("a.txt", b"data")
    locks = FakeLocks()
    h.queue.put(WorkItem("a.txt", content=True, tags=False, event_time=0.0))  # a sweep's, a waiting room's
    one_pass(h, locks)
    assert locks.calls == [("release", "a.txt")]


def test_a_newer_event_arriving_during_the_work_keeps_the_lock_for_it():
    h = Harness()
    h.source.add("a.txt", b"data")
    first, newer = Receipt(), Receipt()

    class Arriving(FakeLocks):
        def take(self, key: str) -> bool:
            if not self.calls:
                h.queue.put(durable("a.txt", newer))  # waits: the key is a worker's
            return super().take(key)

    locks = Arriving()
    h.queue.put(durable("a.txt", first))
    one_pass(h, locks)
    assert first.events == [("settle", True)] and newer.events == [("settle", True)]
    # Not given up in between: another process couldn't take the key from under the newer event.
    assert locks.calls == [("take", "a.txt"), ("take", "a.txt"), ("release", "a.txt")]


# --- a copy whose message NATS stopped hearing of ------------------------------------

def test_a_multipart_copy_given_up_between_parts_aborts_its_upload():
    from replicator.copier import Abandoned, Copier, abandoning
    from replicator.retry import RetryPolicy
    from replicator.stores.memory import MemoryStore
    from tests.unit.test_workers import BASE

    settings = config.replace(BASE, multipart_threshold=5 * MiB, multipart_chunk_size=5 * MiB, retry_delay=0.0)
    source, dest = MemoryStore("source"), MemoryStore("destination")
    source.add("big", b"x" * (12 * MiB))
    copier = Copier(source, dest, settings, RetryPolicy(1, 0.0, stop=threading.Event()))
    asked: list[int] = []
    try:
        with abandoning(lambda: asked.append(1) or len(asked) > 1), pytest.raises(Abandoned) as caught:
            copier.copy("big")  # wanted when it began, given up before its parts were all sent
        assert "given up before part" in str(caught.value)
        assert dest.incomplete_uploads() == {} and dest.stat("big") is None
        assert copier.copy("big") is not None  # outside the block, copies go on as ever
    finally:
        copier.close()


def test_a_worker_whose_message_lapsed_mid_copy_aborts_and_hands_the_message_back():
    h = Harness()
    h.workers.converger.threshold = 5 * MiB
    h.copier.threshold = h.copier.chunk = 5 * MiB
    h.source.add("big", b"x" * (12 * MiB))

    class Lapsing(Receipt):
        def lapsed(self) -> bool:
            return bool(h.dest.uploads)  # cut off from NATS once the upload has begun

    receipt = Lapsing()
    h.queue.put(durable("big", receipt))
    one_pass(h, FakeLocks())
    assert receipt.events == [("settle", False)]
    assert h.dest.stat("big") is None and h.dest.incomplete_uploads() == {}
    assert h.reconciles == []  # the message comes again: nothing for a reconcile


def test_a_message_lapses_an_ack_wait_after_nats_last_heard_of_it():
    from replicator import jetstream

    class Held:  # as much of jetstream.JetStream and Consumer as a receipt uses here
        def __init__(self):
            self.outstanding: set = set()
            self.held: set = set()

    held = Held()
    receipt = jetstream.Receipt(message=None, consumer=held, jetstream=held)
    assert not receipt.lapsed()
    receipt.heard -= jetstream.ACK_WAIT + 1
    assert receipt.lapsed()
