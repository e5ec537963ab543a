"""A destination's reconcile pass shared by every process reading its consumer
(``S3_SYNC_EVENTS=jetstream`` with ``S3_SYNC_RECONCILE_RANGES`` above 1).

At 10^8 objects one process lists for hours while the others idle. The holder of the
reconcile lease (lease.py) coordinates instead: it cuts the pass into key ranges at the
split points the previous pass sampled (ranges.py), publishes one task per range on a
JetStream work queue (jetstream.RangeTasks), and waits for their results in the
results KV bucket. Every process, the coordinator's too, takes tasks one at a time and
reconciles that range with the same diff as a whole run (reconcile.Reconciler).

The rules:

- **Deletes, all or none per pass.** Round one lists and copies every range and only
  counts the deletions. The coordinator then applies the delete guard to the pass's
  sums, as to one run: any range dirty (a listing or a copy failed), an empty source,
  or a share above the guard's, and the pass deletes nothing. Otherwise round two:
  the ranges with deletions are listed again and make them, drawing on the pass's
  budget (ranges.Budget), so the pass deletes no more than the guard allowed.
- **Fencing.** The budget's entry names the pass. A coordinator that opens a pass
  replaces it, so a task of an older pass (its coordinator lost the lease, a task
  redelivered late) is dropped unrun, and one running finds at its next delete batch
  that its pass is over and deletes nothing more. A coordinator stops waiting once
  its lease is lost.
- **Crashes.** A task is acknowledged only after its result is stored. A process
  killed mid-range stops saying it works on it; NATS gives the task to another process
  ``RANGE_ACK_WAIT`` later, which reconciles the range again (per-key convergence and
  the delete re-checks make a second run harmless).
- **The first pass**, and any pass after the source listed nothing, is one range run
  by the coordinator: there are no split points yet, and a pass over an empty source
  must meet the guard whole.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loguru import logger

from .config import Settings
from .errors import ReplicatorError
from .model import RunStats
from .pool import Every
from .ranges import Budget, KeyRange, Sample, cut, split_points
from .reconcile import Reconciler, delete_guard, refused
from .retry import Stopped

if TYPE_CHECKING:
    from .jetstream import KeyValue, RangeTask, RangeTasks

RESULT_POLL = 0.5  # seconds between the coordinator's reads of the results
TAKE_WAIT = 2.0  # seconds a worker waits for a task: how soon it notices a stop
# Added up over a pass's ranges; the object counts only from round one (round two lists again).
_SUMMED = ("copied", "updated", "deleted", "unchanged", "skipped", "failed", "bytes_copied", "planned_deletes")
_LISTED = ("source_objects", "dest_objects")


class LeaseLost(ReplicatorError):
    """The coordinator can no longer decide its pass: another process holds the lease."""


def sum_stats(results: list[RunStats], into: RunStats | None = None, *, listed: bool = True) -> RunStats:
    """PURE: the pass's figures from its ranges' (round two adds what it did, not what it listed)."""
    total = into or RunStats()
    for stats in results:
        for name in _SUMMED + (_LISTED if listed else ()):
            setattr(total, name, getattr(total, name) + getattr(stats, name))
        total.guard = total.guard or stats.guard
    return total


@dataclass(eq=False)
class SharedReconcile:
    reconciler: Reconciler
    settings: Settings
    results: KeyValue  # the ranges' results and the pass's budget, beside the last pass's report
    tasks: RangeTasks
    name: str  # the destination's durable consumer: its keys' prefix
    stop: threading.Event
    listening: Callable[[], Callable[[], bool] | None]  # for each range run: Replica's watch of its events

    @property
    def _budget_key(self) -> str:
        return f"{self.name}.budget"

    def _result_key(self, index: int) -> str:
        return f"{self.name}.range.{index}"

    # -- the coordinator -------------------------------------------------------------------

    def coordinate(self, pass_id: str, points: list[str], held: Callable[[], bool]) -> tuple[RunStats, list[str]]:
        """One pass, cut at ``points``, while ``held()`` (the lease): its summed figures, and
        where to cut the next. Raises LeaseLost or Stopped if it can't wait it out."""
        started = time.monotonic()
        ranges = cut(points)
        budget = Budget.open(self.results, self._budget_key, pass_id)
        logger.info("reconcile pass {}: {} key ranges, for every process reading this destination", pass_id,
                    len(ranges))
        first = self._round(budget, 1, dict(enumerate(ranges)), held)
        stats = sum_stats([stats for stats, _ in first.values()])
        samples = [sample for _, sample in first.values()]
        deleting = {n: ranges[n] for n, (part, _) in first.items() if part.planned_deletes}
        if deleting and self._allowed(stats, budget):
            second = self._round(budget, 2, deleting, held)
            stats = sum_stats([stats for stats, _ in second.values()], stats, listed=False)
        stats.duration = time.monotonic() - started
        return stats, split_points(samples, self.settings.reconcile_ranges)

    def _allowed(self, stats: RunStats, budget: Budget) -> bool:
        """Whether the pass's deletions may happen (then the budget holds how many), by
        the rules of one run's (reconcile._Run._deletions), on the pass's sums."""
        if not self.settings.delete:
            logger.info("{} objects exist only at the destination; kept (S3_SYNC_DELETE=false)",
                        stats.planned_deletes)
            return False
        if stats.failed:
            logger.warning("deletions skipped: a range of this pass had errors, and deleting after an incomplete "
                           "pass could remove objects the source still has ({} found; the next clean pass makes "
                           "them)", stats.planned_deletes)
            return False
        reason = delete_guard(stats, stats.planned_deletes, self.settings, force=False)
        if reason is not None:
            refused(stats, reason, stats.planned_deletes, dry_run=False)
            return False
        if not budget.allow(stats.planned_deletes):
            raise LeaseLost("a newer reconcile pass began (another process holds the lease): it decides the "
                            "deletions")
        return True

    def _round(self, budget: Budget, round_: int, ranges: dict[int, KeyRange], held: Callable[[], bool]
               ) -> dict[int, tuple[RunStats, dict]]:
        pass_id = budget.pass_id
        for index, key_range in ranges.items():
            self.tasks.publish(json.dumps({"pass": pass_id, "round": round_, "index": index,
                                           "range": key_range.to_json()}).encode())
        done: dict[int, tuple[RunStats, dict]] = {}
        while len(done) < len(ranges):
            if self.stop.wait(RESULT_POLL):
                raise Stopped()
            try:
                if not held() or not budget.live():
                    raise LeaseLost("lost the reconcile lease while waiting for the pass's ranges; its next "
                                    "holder runs a pass of its own")
                for index in ranges.keys() - done.keys():
                    raw = self.results.get(self._result_key(index))
                    if raw is None:
                        continue
                    result = json.loads(raw)
                    if result.get("pass") == pass_id and result.get("round") == round_:
                        done[index] = RunStats(**result["stats"]), result.get("sample") or {}
            except LeaseLost:
                raise
            except ReplicatorError as error:  # NATS away a moment: the ranges' results wait in the bucket
                logger.debug("reconcile pass {}: results unread: {}", pass_id, error)
        return done

    # -- every process ---------------------------------------------------------------------

    def work(self) -> None:
        """Take this destination's range tasks one at a time until stopped."""
        while not self.stop.is_set():
            try:
                task = self.tasks.take(TAKE_WAIT)
                if task is not None:
                    self.work_on(task)
            except ReplicatorError as error:  # NATS away: its tasks wait in the stream
                logger.warning("reconcile ranges: {}; retrying", error)
                self.stop.wait(1.0)
            except Exception:  # a bug must not end this process's share of the passes silently
                logger.exception("reconcile ranges: unexpected error; going on")
                self.stop.wait(1.0)

    def work_on(self, task: RangeTask) -> None:
        """One task: its range reconciled and its result stored, or dropped if it is none
        or of a pass a newer one replaced."""
        try:
            spec = json.loads(task.data)
            pass_id, index, round_ = str(spec["pass"]), int(spec["index"]), int(spec["round"])
            key_range = KeyRange.from_json(spec["range"])
        except (ValueError, TypeError, KeyError, AttributeError):
            logger.warning("reconcile ranges: a task that is not one ({!r}); dropped", task.data[:200])
            task.done()
            return
        budget = Budget(self.results, self._budget_key, pass_id)
        if not budget.live():
            logger.info("a range of reconcile pass {}, which a newer pass replaced: dropped", pass_id)
            task.done()
            return
        sample = Sample()

        def heartbeat() -> bool:
            task.working()
            return True  # until the range is done

        with Every(task.ack_wait / 3, heartbeat, name="range-heartbeat"):
            try:
                stats = self.reconciler.run(
                    listening=self.listening(), fence=budget.live, key_range=key_range, sample=sample,
                    hold_deletes=round_ == 1, budget=budget if round_ == 2 else None)
            except ReplicatorError as error:  # an endpoint unusable: the range is dirty, the pass too
                logger.error("reconcile range {} of pass {}: {}", index, pass_id, error)
                stats = RunStats(failed=1)
        if self.stop.is_set():
            return  # cut short: unacknowledged, so another process (or our restart) runs it again
        self.results.put(self._result_key(index), json.dumps({
            "pass": pass_id, "round": round_, "stats": dataclasses.asdict(stats),
            "sample": sample.to_json()}).encode())
        task.done()
