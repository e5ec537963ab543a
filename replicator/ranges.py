"""PURE: a reconcile pass cut into key ranges, and the one delete budget they share.

With ``S3_SYNC_EVENTS=jetstream`` and ``S3_SYNC_RECONCILE_RANGES`` above 1, the holder
of a destination's reconcile lease cuts each pass into ranges of keys, and every
process reconciles some of them (shared_reconcile.py). What is decided here:

- **Where to cut.** Each range samples the source keys it lists (a bounded reservoir,
  :class:`Sample`) and reports the sample with its count. The next pass cuts at the
  quantiles of those samples (:func:`split_points`), so ranges hold about as many
  objects each. The first pass has no samples: it is one range, today's reconcile.
- **What a range holds**: the keys after ``after`` up to and including ``until``
  (:class:`KeyRange`); the ranges of a pass cover every key once, in S3's order (the
  code-point order Python compares ``str`` in, see diff.py).
- **How many deletes a pass may make** (:class:`Budget`). A pass has two rounds. In
  the first, every range is listed and copied, and only counts the deletions it
  would make. The delete guard then judges the pass as a whole, on the sums (an
  empty source, a share of the destination above ``S3_SYNC_DELETE_MAX_PERCENT``),
  as it judges one process's run: all the deletions or none. In the second round,
  the ranges that had some list again and draw them, by compare-and-set, from one
  counter in a KV bucket holding what the guard allowed. However many processes
  delete, the pass deletes no more than that: a range whose draw would pass it (the
  source lost more keys meanwhile) deletes nothing and leaves them to the next pass.
- **Fencing.** The budget names its pass. A range of an older pass (a coordinator
  that lost its lease, a task redelivered late) finds another pass named, and deletes
  nothing more.

The KV operations are passed in (:class:`Store`); tested against a real nats-server in
tests/integration/test_reconcile_ranges.py.
"""

from __future__ import annotations

import json
import random
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .lease import Conflict

SAMPLE_SIZE = 64  # keys a range reports for the next pass's cuts: a few tens of KiB at most
DRAW_ATTEMPTS = 50  # compare-and-set rounds before a draw gives up (each lost to another range's draw)


@dataclass(frozen=True)
class KeyRange:
    """The keys ``k`` with ``after < k <= until``; ``None`` leaves that side open."""

    after: str | None = None
    until: str | None = None

    def holds(self, key: str) -> bool:
        return (self.after is None or key > self.after) and (self.until is None or key <= self.until)

    @property
    def whole(self) -> bool:
        return self.after is None and self.until is None

    def to_json(self) -> dict:
        return {"after": self.after, "until": self.until}

    @classmethod
    def from_json(cls, data: dict) -> KeyRange:
        return cls(data.get("after"), data.get("until"))


def cut(points: Sequence[str]) -> list[KeyRange]:
    """The ranges between sorted, distinct ``points``: one more than there are points."""
    bounds: list[str | None] = [None, *points, None]
    return [KeyRange(bounds[n], bounds[n + 1]) for n in range(len(bounds) - 1)]


@dataclass
class Sample:
    """A uniform sample of the keys a range listed (reservoir sampling: bounded memory
    whatever the count), and the count."""

    size: int = SAMPLE_SIZE
    count: int = 0
    keys: list[str] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def add(self, key: str) -> None:
        self.count += 1
        if len(self.keys) < self.size:
            self.keys.append(key)
            return
        slot = self.rng.randrange(self.count)
        if slot < self.size:
            self.keys[slot] = key

    def to_json(self) -> dict:
        return {"count": self.count, "keys": sorted(self.keys)}


def split_points(samples: Iterable[dict], ranges: int) -> list[str]:
    """Where to cut the next pass into ``ranges`` ranges of about equal counts, from each
    range's :meth:`Sample.to_json`: each sampled key stands for its range's count over
    its sample's size. Fewer points where there are fewer distinct keys to cut at."""
    weighted: list[tuple[str, float]] = []
    for sample in samples:
        keys = sample.get("keys") or []
        if keys:
            weight = max(int(sample.get("count") or 0), len(keys)) / len(keys)
            weighted.extend((key, weight) for key in keys)
    if ranges <= 1 or not weighted:
        return []
    weighted.sort()
    total = sum(weight for _, weight in weighted)
    cumulative, running = [], 0.0
    for _, weight in weighted:
        running += weight
        cumulative.append(running)
    points: list[str] = []
    for n in range(1, ranges):
        key = weighted[min(bisect_left(cumulative, total * n / ranges), len(weighted) - 1)][0]
        if key != weighted[-1][0] and (not points or key > points[-1]):
            points.append(key)  # not the last key: a range after it would hold none
    return points


class Store(Protocol):
    def entry(self, key: str) -> tuple[bytes, int] | None:
        """The value of ``key`` and its revision, or None if absent."""

    def update(self, key: str, value: bytes, last: int) -> int:
        """Write ``key`` if its revision is still ``last``. Raises Conflict otherwise."""

    def put(self, key: str, value: bytes) -> int:
        """Write ``key`` whatever it held."""


@dataclass
class Budget:
    """One pass's deletes, drawn on by all its ranges (see the module's docstring)."""

    store: Store
    key: str
    pass_id: str

    @classmethod
    def open(cls, store: Store, key: str, pass_id: str) -> Budget:
        """The coordinator's, before it publishes the pass's ranges: it replaces the
        previous pass's, which fences that pass's ranges out. Nothing may be drawn
        until :meth:`allow` says how much."""
        store.put(key, json.dumps({"pass": pass_id, "allowed": 0, "drawn": 0}).encode())
        return cls(store, key, pass_id)

    def allow(self, deletes: int) -> bool:
        """The coordinator's, once the pass's guard allowed ``deletes``; False if a newer
        pass replaced this one (its coordinator lost the lease): then nothing is allowed."""
        for _ in range(DRAW_ATTEMPTS):
            found = self._read()
            if found is None:
                return False
            value, revision = found
            try:
                self.store.update(self.key, json.dumps({**value, "allowed": deletes}).encode(), revision)
            except Conflict:
                continue
            return True
        return False

    def _read(self) -> tuple[dict, int] | None:
        found = self.store.entry(self.key)
        if found is None:
            return None
        value = json.loads(found[0])
        return (value, found[1]) if value.get("pass") == self.pass_id else None

    def live(self) -> bool:
        """Whether this is still the pass the budget is for."""
        return self._read() is not None

    def draw(self, deletes: int) -> str | None:
        """Take ``deletes`` from the budget; why not (nothing is taken then), or None."""
        for _ in range(DRAW_ATTEMPTS):
            found = self._read()
            if found is None:
                return "a newer reconcile pass began (another process holds the lease now); it decides the deletions"
            value, revision = found
            if value["drawn"] + deletes > value["allowed"]:
                return (f"{deletes} deletions here and {value['drawn']} by this pass's other ranges exceed the "
                        f"{value['allowed']} its guard allowed once every range was listed (objects removed from "
                        "the source since); the next pass makes them")
            try:
                self.store.update(self.key, json.dumps({**value, "drawn": value["drawn"] + deletes}).encode(),
                                  revision)
            except Conflict:
                continue  # another range drew meanwhile: read again
            return None
        return "the delete budget stayed contended; the next pass makes these deletions"
