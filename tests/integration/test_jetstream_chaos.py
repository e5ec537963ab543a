"""The chaos run of issue 14 §4, against real processes: three replicator processes
reading one JetStream stream, MinIO publishing to it with a queue_dir, two destinations
(a MinIO of the test's own, which it restarts, and moto), and a seeded workload of puts,
same-size overwrites, deletes, tag changes and multipart uploads, while the test kills
a replica (SIGKILL, twice), restarts nats-server on its store, and restarts the MinIO
destination.

With the periodic reconcile out of the way (a week's interval; a restarted process
finds the holder's recent result and doesn't reconcile), the events alone must bring
both destinations to equal the source: keys, bytes and tags. A watcher lists the
destinations throughout: a key that vanishes from a destination while the source still
has it is a wrongful delete, and there must be none.

With the periodic reconcile on (every minute), the same faults, in less time, and
changes made while the bucket had no notification rule, which no event brings: one
interval after the faults, both destinations equal the source, and the watcher saw no
wrongful delete either."""

from __future__ import annotations

import io
import json
import random
import signal
import threading
import time
from collections.abc import Callable

import pytest
from botocore.exceptions import BotoCoreError, ClientError
from minio import Minio
from minio.commonconfig import Tags
from minio.error import S3Error
from minio.notificationconfig import NotificationConfig, QueueConfig
from urllib3.exceptions import MaxRetryError

from tests.conftest import (
    DEST_PASSWORD,
    DEST_USER,
    MOTO_KEY,
    MOTO_SECRET,
    SOURCE_PASSWORD,
    SOURCE_USER,
    unique_bucket,
)
from tests.integration.test_mirrors import Destination as MirrorDestination
from tests.servers import MinioServer, NatsServer, minio_nats_env
from tests.sidecar import wait_for

SUBJECT = "chaos.events"
MiB = 1024 * 1024


@pytest.fixture
def cluster(tmp_path, moto_server):
    nats_server = NatsServer().start()
    source_server = MinioServer("source-chaos", SOURCE_USER, SOURCE_PASSWORD,
                                env=minio_nats_env(nats_server, SUBJECT, tmp_path / "minio-queue")).start()
    dest_server = MinioServer("dest-chaos", DEST_USER, DEST_PASSWORD).start()
    yield nats_server, source_server, dest_server, moto_server
    for server in (source_server, dest_server, nats_server):
        server.close()


class Destination(MirrorDestination):
    def state(self) -> dict[str, tuple[bytes, dict[str, str]]]:
        result = {}
        for key in self.listed():
            tags = self.client.get_object_tagging(Bucket=self.bucket, Key=key)["TagSet"]
            result[key] = (self.body(key), {t["Key"]: t["Value"] for t in tags})
        return result


class Workload:
    """Seeded: the same operations in the same order every run. Keys deleted are never
    used again, so a key missing at a destination while the source has it is wrong."""

    def __init__(self, source: Minio, bucket: str, seed: int = 14):
        self.source, self.bucket = source, bucket
        self.rng = random.Random(seed)
        self.live: dict[str, int] = {}  # key -> size
        self.n = 0
        self.lock = threading.Lock()

    def put(self, key: str, size: int, *, steps_use: bool = True) -> None:
        """Upload ``key``; unless ``steps_use``, one that later steps leave as it is."""
        data = self.rng.randbytes(size)
        part = 5 * MiB if size > 5 * MiB else 0
        self.source.put_object(self.bucket, key, io.BytesIO(data), size, **({"part_size": part} if part else {}))
        if steps_use:
            with self.lock:
                self.live[key] = size

    def remove(self, key: str) -> None:
        with self.lock:
            del self.live[key]
        self.source.remove_object(self.bucket, key)

    def step(self) -> None:
        roll = self.rng.random()
        with self.lock:
            keys = sorted(self.live)
        if roll < 0.45 or len(keys) < 5:
            self.n += 1
            self.put(f"obj/{self.n:05d}.bin", self.rng.randint(1, 4096))
        elif roll < 0.65:
            key = self.rng.choice(keys)
            self.put(key, self.live[key])  # same size, new bytes: only the ETag tells
        elif roll < 0.80:
            self.remove(self.rng.choice(keys))
        elif roll < 0.93:
            key = self.rng.choice(keys)
            tags = Tags.new_object_tags()
            tags["round"] = str(self.n)
            self.source.set_object_tags(self.bucket, key, tags)
        else:
            self.n += 1
            self.put(f"big/{self.n:05d}.bin", 6 * MiB)  # a multipart upload

    def state(self) -> dict[str, tuple[bytes, dict[str, str]]]:
        result = {}
        for obj in self.source.list_objects(self.bucket, recursive=True):
            response = self.source.get_object(self.bucket, obj.object_name)
            try:
                body = response.read()
            finally:
                response.close()
                response.release_conn()
            tags = self.source.get_object_tags(self.bucket, obj.object_name) or {}
            result[obj.object_name] = (body, dict(tags))
        return result


class Watcher(threading.Thread):
    """Lists each destination twice a second; a key that vanishes from one while the
    source has it is a wrongful delete."""

    def __init__(self, source: Minio, bucket: str, destinations: list[Destination]):
        super().__init__(daemon=True)
        self.source, self.bucket, self.destinations = source, bucket, destinations
        self.stop = threading.Event()
        self.wrongful: list[str] = []
        self.died: BaseException | None = None

    def run(self) -> None:
        try:
            self._watch()
        except BaseException as error:  # a watcher that died would pass the test blind
            self.died = error
            raise

    def _watch(self) -> None:
        seen: dict[str, set[str]] = {d.name: set() for d in self.destinations}
        while not self.stop.wait(0.5):
            for destination in self.destinations:
                try:
                    now = destination.listed()
                except (BotoCoreError, ClientError):
                    continue
                self.wrongful.extend(f"{destination.name}: {key}" for key in sorted(seen[destination.name] - now)
                                     if self._source_has(key))
                seen[destination.name] = now

    def _source_has(self, key: str) -> bool:
        for _ in range(20):
            try:
                self.source.stat_object(self.bucket, key)
                return True
            except S3Error as error:
                if error.code == "NoSuchKey":
                    return False  # deleted at the source: the destination's delete is right
            except (OSError, MaxRetryError):
                pass  # asked again
            time.sleep(0.1)
        raise AssertionError(f"the watcher couldn't tell whether the source has {key}")


RULE = NotificationConfig(queue_config_list=[
    QueueConfig(queue="arn:minio:sqs::PRIMARY:nats", events=["s3:ObjectCreated:*", "s3:ObjectRemoved:*"])])


class Chaos:
    """The scenario: the source bucket with its rule, both destinations, the replicator
    processes (each started from the one configuration, ``interval`` its reconcile's),
    the seeded workload, and the watcher."""

    def __init__(self, cluster, tmp_path, sidecars, *, interval: int, ranges: int = 1):
        self.nats_server, source_server, self.dest_server, moto_server = cluster
        self.source = Minio(source_server.host, SOURCE_USER, SOURCE_PASSWORD, secure=False)
        self.bucket = unique_bucket("src-chaos")
        self.source.make_bucket(self.bucket)
        self.source.set_bucket_notification(self.bucket, RULE)
        self.destinations = [Destination("minio", self.dest_server.endpoint, DEST_USER, DEST_PASSWORD),
                             Destination("moto", moto_server.endpoint, MOTO_KEY, MOTO_SECRET)]
        lines = [
            "[source]", f"endpoint = {json.dumps(source_server.endpoint)}", f"access_key = {json.dumps(SOURCE_USER)}",
            "secret_key = \"${CHAOS_SOURCE_SECRET}\"", "",
            "[service]", "events = \"jetstream\"", f"nats_url = {json.dumps(self.nats_server.url)}",
            f"nats_subject = {json.dumps(SUBJECT)}", "nats_stream = \"chaos\"", "",
            "[defaults]", f"interval = {interval}", f"reconcile_ranges = {ranges}", "reconcile_cooldown = 1",
            "retry_delay = 0.05", "connect_timeout = 2", "read_timeout = 5", "multipart_threshold = \"5MiB\"",
            "workers = 8", "",
            "[[mirrors]]", "name = \"chaos\"", f"source_bucket = {json.dumps(self.bucket)}", "",
        ]
        for destination in self.destinations:
            lines += ["[[mirrors.destinations]]", f"name = {json.dumps(destination.name)}",
                      f"endpoint = {json.dumps(destination.endpoint)}", f"bucket = {json.dumps(destination.bucket)}",
                      f"access_key = {json.dumps(destination.key)}", f"secret_key = {json.dumps(destination.secret)}",
                      ""]
        (tmp_path / "replicator.toml").write_text("\n".join(lines))
        self.env = {"CHAOS_SOURCE_SECRET": SOURCE_PASSWORD, "S3_SYNC_STATE_DIR": str(tmp_path / "state"),
                    "S3_SYNC_CONFIG": str(tmp_path / "replicator.toml")}
        self._sidecars = sidecars
        self.started_ones: list = []
        self.workload = Workload(self.source, self.bucket)
        if ranges > 1:
            # Keys for the first pass to sample, so the passes after it are cut in ranges.
            for n in range(60):
                self.workload.put(f"seeded/{n:02d}.bin", self.workload.rng.randint(1, 4096), steps_use=False)
        self.replicas = [self.start() for _ in range(3)]
        wait_for(lambda: all(r.ready() for r in self.replicas), timeout=120, what="three ready replicas")
        self.watcher = Watcher(self.source, self.bucket, self.destinations)
        self.watcher.start()

    def start(self):
        replica = self._sidecars(self.env)
        self.started_ones.append(replica)
        return replica

    def faults(self, scale: float = 1.0) -> list[tuple[float, str, Callable[[], None]]]:
        """Each fault at its second of the run (times ``scale``): a replica killed and
        restarted twice, nats-server restarted on its store, the MinIO destination restarted."""
        return [(at * scale, what, act) for at, what, act in [
            (8, "kill replica 0", lambda: self.replicas[0].signal(signal.SIGKILL)),
            (12, "restart replica 0", lambda: self.replicas.__setitem__(0, self.start())),
            (18, "stop nats-server", self.nats_server.stop),
            (26, "restart nats-server", self.nats_server.start),
            (32, "stop the MinIO destination", self.dest_server.stop),
            (38, "restart the MinIO destination", self.dest_server.start),
            (42, "kill replica 1", lambda: self.replicas[1].signal(signal.SIGKILL)),
            (46, "restart replica 1", lambda: self.replicas.__setitem__(1, self.start())),
        ]]

    def run(self, seconds: float, faults: list[tuple[float, str, Callable[[], None]]]) -> None:
        """The workload for ``seconds``, each fault at its time."""
        faults = sorted(faults, key=lambda fault: fault[0])
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            while faults and time.monotonic() - started >= faults[0][0]:
                _, _, act = faults.pop(0)
                act()
            self.workload.step()
            time.sleep(0.08)
        assert not faults

    def unnoticed(self) -> None:
        """Changes MinIO publishes no event for, made while the bucket has no rule (a
        moment's misconfiguration): new keys, same-size overwrites, deletes. No tag
        changes: a reconcile doesn't compare tags (the metadata sweep does)."""
        self.source.delete_bucket_notification(self.bucket)
        try:
            workload = self.workload
            with workload.lock:
                older = sorted(workload.live)
            for key in older[:2]:
                workload.put(key, workload.live[key])
            for key in older[2:4]:
                workload.remove(key)
            for n in range(5):  # left as they are, so the end state holds them
                workload.put(f"unnoticed/{n}.bin", workload.rng.randint(1, 4096), steps_use=False)
        finally:
            self.source.set_bucket_notification(self.bucket, RULE)

    def converge(self, expected: dict[str, tuple[bytes, dict[str, str]]], *, keys_within: float,
                 state_within: float) -> None:
        """Both destinations equal ``expected``: its keys within ``keys_within`` seconds,
        then bytes and tags within ``state_within``; the watcher stopped either way."""
        try:
            wait_for(lambda: all(d.listed() == set(expected) for d in self.destinations), timeout=keys_within,
                     interval=1.0, what="both destinations to have exactly the source's keys")
            wait_for(lambda: all(d.state() == expected for d in self.destinations), timeout=state_within,
                     interval=2.0, what="bytes and tags equal")
        finally:
            self.watcher.stop.set()
            self.watcher.join(5)
        assert self.watcher.died is None and self.watcher.is_alive() is False
        assert self.watcher.wrongful == []

    def logs(self) -> str:
        return "".join(r.log() for r in self.started_ones)


def test_three_replicas_converge_by_events_through_kills_and_restarts(cluster, tmp_path, sidecars):
    chaos = Chaos(cluster, tmp_path, sidecars, interval=604800)
    chaos.run(55, chaos.faults())
    expected = chaos.workload.state()
    assert len(expected) > 50
    chaos.converge(expected, keys_within=240, state_within=120)
    # The events did it: only the very first reconcile ran, one per destination; the
    # restarted processes found its result and didn't reconcile.
    assert chaos.logs().count("holding the reconcile lease") == len(chaos.destinations)


def test_with_the_periodic_reconcile_on_even_unpublished_changes_converge_within_one_interval(
        cluster, tmp_path, sidecars):
    """The same faults in the first 14 s, the reconcile every minute (the shortest
    S3_SYNC_INTERVAL), and changes MinIO never publishes, which only a reconcile can
    bring: one interval after the faults, both destinations equal the source. Each pass
    after the first with keys to sample is shared in three ranges."""
    interval = 60
    chaos = Chaos(cluster, tmp_path, sidecars, interval=interval, ranges=3)
    # The workload goes on 15 s after the last kill: the killed process's messages come
    # back ACK_WAIT (60 s) after their delivery, and a tag change among them has no other
    # way (a reconcile doesn't compare tags), so that is the bound for them, not the interval.
    chaos.run(28, [*chaos.faults(scale=0.3), (16, "change the bucket unnoticed", chaos.unnoticed)])
    ended = time.monotonic()
    expected = chaos.workload.state()
    assert {f"unnoticed/{n}.bin" for n in range(5)} <= set(expected)
    keys_within = interval - (time.monotonic() - ended)
    chaos.converge(expected, keys_within=keys_within, state_within=interval - (time.monotonic() - ended))
    assert time.monotonic() - ended < interval
    # More reconciles ran than the initial one per destination: the schedule's.
    assert chaos.logs().count("holding the reconcile lease") > len(chaos.destinations)
    assert "key ranges, for every process" in chaos.logs(), "a pass was shared in ranges"
