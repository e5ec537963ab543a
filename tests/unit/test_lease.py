"""The reconcile lease's rules over a store with compare-and-set semantics, as a
JetStream KV bucket has them (the real one: tests/integration/test_jetstream.py)."""

from __future__ import annotations

from replicator.lease import Conflict, Lease


class Store:
    """Revisions as JetStream's: one sequence for the bucket; ``expire`` ages a key out."""

    def __init__(self):
        self.keys: dict[str, tuple[bytes, int]] = {}
        self.sequence = 0

    def _write(self, key: str, value: bytes) -> int:
        self.sequence += 1
        self.keys[key] = (value, self.sequence)
        return self.sequence

    def create(self, key: str, value: bytes) -> int:
        if key in self.keys:
            raise Conflict(key)
        return self._write(key, value)

    def update(self, key: str, value: bytes, last: int) -> int:
        if key not in self.keys or self.keys[key][1] != last:
            raise Conflict(key)
        return self._write(key, value)

    def delete(self, key: str, last: int) -> None:
        if key not in self.keys or self.keys[key][1] != last:
            raise Conflict(key)
        del self.keys[key]

    def expire(self, key: str) -> None:
        del self.keys[key]


def test_one_holder_at_a_time_and_the_holder_renews():
    store = Store()
    first, second = Lease(store, "photos-aws", "a"), Lease(store, "photos-aws", "b")
    assert first.hold() and first.held
    assert not second.hold() and not second.held
    token = first.revision
    assert first.hold() and first.revision > token  # each renewal a new fencing token
    assert store.keys["photos-aws"][0] == b"a"


def test_after_the_holder_stops_renewing_another_takes_over_and_the_stale_renewal_is_refused():
    store = Store()
    first, second = Lease(store, "k", "a"), Lease(store, "k", "b")
    assert first.hold()
    store.expire("k")  # first paused past the TTL
    assert second.hold()
    assert not first.hold() and not first.held  # its revision is not the key's any more
    assert second.hold()  # the new holder keeps it


def test_a_stale_holder_that_wakes_after_the_expiry_gets_it_back_only_by_creating_it():
    store = Store()
    lease = Lease(store, "k", "a")
    assert lease.hold()
    store.expire("k")
    assert not lease.hold()  # the renewal of an aged-out key is refused: it was lost
    assert lease.hold()  # and then acquired anew, with a new token


def test_release_lets_another_take_it_at_once_and_never_deletes_anothers():
    store = Store()
    first, second = Lease(store, "k", "a"), Lease(store, "k", "b")
    assert first.hold()
    first.release()
    assert second.hold()
    first.revision = 1  # a stale token from before
    first.release()
    assert store.keys["k"][0] == b"b"


def test_a_renewer_cut_off_from_the_store_gives_the_lease_up_before_its_ttl(monkeypatch):
    import threading
    import time

    from replicator import lease
    from replicator.errors import TransientError

    monkeypatch.setattr(lease, "TTL", 0.6)
    store = Store()
    held = Lease(store, "photos-aws", "a")
    assert held.hold()
    down = threading.Event()
    update = store.update

    def unreachable(key, value, last):
        if down.is_set():
            raise TransientError("events", "update", None, "NATS away")
        return update(key, value, last)

    store.update = unreachable
    lost = threading.Event()
    with lease.Renewer(held, every=0.1, on_lost=lost.set):
        time.sleep(0.25)
        assert held.held and not lost.is_set()
        down.set()
        time.sleep(0.2)
        assert held.held, "a blip shorter than the TTL loses nothing"
        assert lost.wait(2.0)
    assert not held.held  # past the TTL unrenewed, another may hold it: nothing more is written under it
