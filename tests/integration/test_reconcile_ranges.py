"""A reconcile pass shared in key ranges by the processes of one destination
(S3_SYNC_RECONCILE_RANGES, shared_reconcile.py), against real processes: MinIO
publishing to nats-server, sidecars, a MinIO destination.

The first pass is whole and samples where to cut the next. To have the next one come
now rather than an interval later, a test ages the last pass's report in the results
bucket (what an interval's passing does to it), and starts the processes again."""

from __future__ import annotations

import asyncio
import json
import re
import signal

import nats

from replicator.jetstream import RESULTS, durable_name
from tests.integration.test_jetstream import Setup, consumer_info
from tests.sidecar import wait_for

RANGES = "6"


def _kv(nats_url: str, work):
    async def run():
        connection = await nats.connect(nats_url)
        try:
            try:
                kv = await connection.jetstream().key_value(RESULTS)
            except nats.js.errors.BucketNotFoundError:
                return None  # no process has made it yet
            return await work(kv)
        finally:
            await connection.close()

    return asyncio.run(run())


def report(nats_url: str, durable: str) -> dict | None:
    async def read(kv):
        try:
            return json.loads((await kv.get(durable)).value)
        except nats.js.errors.KeyNotFoundError:
            return None

    return _kv(nats_url, read)


def age_report(nats_url: str, durable: str) -> None:
    """The report as it reads an interval later: old enough that the next process to
    reconcile runs a pass of its own."""
    async def age(kv):
        value = json.loads((await kv.get(durable)).value)
        await kv.put(durable, json.dumps({**value, "started_at": 0, "finished_at": 1}).encode())

    _kv(nats_url, age)


def durable_of(setup: Setup) -> str:
    return durable_name("replicator", setup.bucket, setup.dest_bucket)


def ranges_run(log: str) -> int:
    return len(re.findall(r"Reconciling \S+ → \S+, keys ", log))


def stream_end(nats_url: str, stream: str) -> int:
    """The sequence of the stream's last message (0 before the first sidecar made it)."""
    async def read():
        connection = await nats.connect(nats_url)
        try:
            return (await connection.jetstream().stream_info(stream)).state.last_seq
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await connection.close()

    return asyncio.run(read())


def first_pass(setup: Setup, nats_url: str, sidecars, count: int) -> list[str]:
    """Seed ``count`` objects, let one process's first (whole) pass copy them, stop it
    once the seeding's events are settled too (none is left for the next processes):
    the split points its report holds."""
    published = stream_end(nats_url, setup.stream)
    for n in range(count):
        setup.put(f"k/{n:04d}", f"object {n}".encode())
    first = sidecars(setup.env)
    wait_for(lambda: (report(nats_url, durable_of(setup)) or {}).get("split_points"), timeout=90,
             what="the first pass's report")

    def settled():  # MinIO sends the events from its queue directory within 3 s
        info = consumer_info(nats_url, setup.stream, durable_of(setup))
        return (stream_end(nats_url, setup.stream) >= published + count and info.num_pending == 0
                and info.num_ack_pending == 0)

    wait_for(settled, timeout=60, what="every event published and settled")
    first.signal(signal.SIGTERM)
    first.wait()
    assert ranges_run(first.log()) == 0, "the first pass has no split points: it is whole"
    points = report(nats_url, durable_of(setup))["split_points"]
    assert len(points) == int(setup.env["S3_SYNC_RECONCILE_RANGES"]) - 1 and points == sorted(points)
    return points


def test_three_processes_share_a_pass_and_its_deletes_are_decided_once(publishing_minio, minio_dest, nats_server,
                                                                       tmp_path, sidecars):
    setup = Setup(publishing_minio, minio_dest, nats_server, tmp_path)
    setup.env.update({"S3_SYNC_RECONCILE_RANGES": RANGES, "S3_SYNC_RECONCILE_COOLDOWN": "1"})
    first_pass(setup, nats_server.url, sidecars, 240)
    # While no process runs: copies for the next pass to make, and deletions, one in
    # several ranges, every one of them allowed (8 of 240, under the guard's share).
    missing = [f"k/{n:04d}" for n in (3, 77, 150, 239)]
    for key in missing:
        setup.dest.delete_object(Bucket=setup.dest_bucket, Key=key)
    extra = [f"k/{n:04d}x" for n in (0, 40, 80, 120, 160, 200, 230, 239)]
    for key in extra:
        setup.dest.put_object(Bucket=setup.dest_bucket, Key=key, Body=b"only at the destination")
    age_report(nats_server.url, durable_of(setup))

    # A few requests a second: each range then takes a second or more, so the processes
    # still starting (slower on a busy machine) are taking tasks before the first is done.
    paced = {**setup.env, "S3_SYNC_MAX_REQUESTS_PER_SECOND": "10"}
    processes = [sidecars(paced) for _ in range(3)]
    wait_for(lambda: (report(nats_server.url, durable_of(setup)) or {}).get("finished_at", 0) > 1, timeout=120,
             what="the shared pass's report")
    result = report(nats_server.url, durable_of(setup))
    stats = result["stats"]
    assert setup.dest_keys() == {f"k/{n:04d}" for n in range(240)}
    assert (stats["copied"], stats["deleted"], stats["failed"], stats["guard"]) == (4, len(extra), 0, None)
    assert (stats["source_objects"], stats["dest_objects"]) == (240, 240 - len(missing) + len(extra))
    logs = [process.log() for process in processes]
    assert sum("holding the reconcile lease" in log for log in logs) == 1
    coordinator = next(log for log in logs if "holding the reconcile lease" in log)
    assert f"{RANGES} key ranges" in coordinator
    runs = [ranges_run(log) for log in logs]
    # Round one: every range once; round two: again each range with deletions.
    assert sum(runs) >= int(RANGES) + 1 and sum(1 for n in runs if n) >= 2, runs
    assert len(result["split_points"]) == int(RANGES) - 1  # the next pass's, from the ranges' samples


def test_a_pass_whose_deletions_exceed_the_guard_deletes_nothing_in_any_range(publishing_minio, minio_dest,
                                                                             nats_server, tmp_path, sidecars):
    setup = Setup(publishing_minio, minio_dest, nats_server, tmp_path)
    setup.env.update({"S3_SYNC_RECONCILE_RANGES": RANGES, "S3_SYNC_RECONCILE_COOLDOWN": "1",
                      "S3_SYNC_DELETE_MAX_PERCENT": "10", "S3_SYNC_DELETE_GUARD_FLOOR": "2"})
    first_pass(setup, nats_server.url, sidecars, 120)
    # Gone from the source, spread over every range: 30 of 120, above the 10 % share. No
    # range alone would pass the guard's threshold; the pass does. Removed with the
    # bucket's events off, so the deletions are the pass's alone to decide.
    rules = setup.source.get_bucket_notification(setup.bucket)
    setup.source.delete_bucket_notification(setup.bucket)
    gone = [f"k/{n:04d}" for n in range(0, 120, 4)]
    for key in gone:
        setup.source.remove_object(setup.bucket, key)
    setup.source.set_bucket_notification(setup.bucket, rules)
    age_report(nats_server.url, durable_of(setup))
    processes = [sidecars(setup.env) for _ in range(2)]
    wait_for(lambda: (report(nats_server.url, durable_of(setup)) or {}).get("finished_at", 0) > 1, timeout=120,
             what="the shared pass's report")
    stats = report(nats_server.url, durable_of(setup))["stats"]
    assert stats["deleted"] == 0 and stats["planned_deletes"] == len(gone) and "exceed" in stats["guard"]
    assert setup.dest_keys() >= set(gone)
    assert any("delete guard refused" in process.log() for process in processes)


def test_a_process_killed_mid_range_leaves_the_range_to_another(publishing_minio, minio_dest, nats_server, tmp_path,
                                                                sidecars):
    setup = Setup(publishing_minio, minio_dest, nats_server, tmp_path)
    setup.env.update({"S3_SYNC_RECONCILE_RANGES": "2", "S3_SYNC_RECONCILE_COOLDOWN": "1"})
    first_pass(setup, nats_server.url, sidecars, 120)
    # The next pass copies everything again, slowly (a few requests a second), so a
    # range is in work for seconds.
    for page in setup.dest.get_paginator("list_objects_v2").paginate(Bucket=setup.dest_bucket):
        for item in page.get("Contents", ()):
            setup.dest.delete_object(Bucket=setup.dest_bucket, Key=item["Key"])
    age_report(nats_server.url, durable_of(setup))
    slow = {**setup.env, "S3_SYNC_MAX_REQUESTS_PER_SECOND": "15", "S3_SYNC_WORKERS": "2"}
    processes = [sidecars(slow) for _ in range(2)]

    def in_range_not_coordinating():
        for process in processes:
            log = process.log()
            if ranges_run(log) and "holding the reconcile lease" not in log:
                return process
        return None

    victim = wait_for(in_range_not_coordinating, timeout=120, what="a range in work outside the coordinator")
    victim.signal(signal.SIGKILL)
    victim.wait()
    survivor = next(process for process in processes if process is not victim)
    # NATS gives the killed process's range to the survivor once its ack wait has passed.
    wait_for(lambda: (report(nats_server.url, durable_of(setup)) or {}).get("finished_at", 0) > 1, timeout=180,
             what="the pass's report")
    stats = report(nats_server.url, durable_of(setup))["stats"]
    assert stats["failed"] == 0 and stats["copied"] + stats["unchanged"] >= 120, stats
    assert setup.dest_keys() == {f"k/{n:04d}" for n in range(120)}
    assert ranges_run(survivor.log()) >= 2, "the survivor ran its own range and the victim's"
