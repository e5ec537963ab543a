"""Several mirrors in one process (S3_SYNC_CONFIG): several bucket pairs, one source
bucket fanned out to several destinations, each isolated from the others' faults.

Real servers throughout: the session's MinIO source, two MinIO destinations, moto's
server, and a TCP proxy that blackholes one destination."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path

import pytest
from minio import Minio

from tests.conftest import (
    DEST_PASSWORD,
    DEST_USER,
    MOTO_KEY,
    MOTO_SECRET,
    SOURCE_PASSWORD,
    SOURCE_USER,
    boto_client,
    run_cli,
    unique_bucket,
)
from tests.servers import MinioServer
from tests.sidecar import TcpProxy, wait_for

SECOND_USER, SECOND_PASSWORD = "second-admin", "second-secret-Tq8Lm3"


@pytest.fixture(scope="module")
def second_minio():
    server = MinioServer("dest2", SECOND_USER, SECOND_PASSWORD).start()
    yield server
    server.close()


class Destination:
    """A destination bucket on a real server, and a client to inspect it."""

    def __init__(self, name: str, endpoint: str, key: str, secret: str, *, via: str | None = None):
        self.name, self.endpoint, self.key, self.secret = name, endpoint, key, secret
        self.bucket = unique_bucket(f"dst-{name}")
        self.client = boto_client(endpoint, key, secret)
        self.client.create_bucket(Bucket=self.bucket)
        self.via = via  # the endpoint replicator is told, where a proxy stands in front

    def listed(self) -> set[str]:
        found: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            found.update(item["Key"] for item in page.get("Contents", ()))
        return found

    def body(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def toml(self) -> str:
        return "\n".join([
            "[[mirrors.destinations]]",
            f"name = {json.dumps(self.name)}",
            f"endpoint = {json.dumps(self.via or self.endpoint)}",
            f"bucket = {json.dumps(self.bucket)}",
            f"access_key = {json.dumps(self.key)}",
            # From the environment, as a committed file would have it.
            f"secret_key = \"${{SECRET_{self.name.upper().replace('-', '_')}}}\"",
            "",
        ])

    def secret_env(self) -> dict[str, str]:
        return {f"SECRET_{self.name.upper().replace('-', '_')}": self.secret}


def mirrors_file(tmp_path: Path, minio_source: MinioServer, mirrors: list[tuple[str, str, list[Destination]]],
                 *, filters: dict[str, str] | None = None, **defaults) -> dict[str, str]:
    """The environment of a process configured by a file of ``mirrors`` (name, source
    bucket, destinations), with ``filters`` (TOML lines by mirror name)."""
    lines = ["[source]", f"endpoint = {json.dumps(minio_source.endpoint)}", "access_key = \"${MINIO_KEY}\"",
             "secret_key = \"${MINIO_SECRET}\"", "", "[defaults]", "retry_delay = 0.05", "connect_timeout = 2",
             "read_timeout = 5", "reconcile_cooldown = 1", "interval = 3600"]
    lines += [f"{name} = {json.dumps(value)}" for name, value in defaults.items()]
    env = {"MINIO_KEY": SOURCE_USER, "MINIO_SECRET": SOURCE_PASSWORD, "S3_SYNC_STATE_DIR": str(tmp_path / "state")}
    for name, bucket, destinations in mirrors:
        lines += ["", "[[mirrors]]", f"name = {json.dumps(name)}", f"source_bucket = {json.dumps(bucket)}",
                  (filters or {}).get(name, ""), ""]
        for destination in destinations:
            lines.append(destination.toml())
            env.update(destination.secret_env())
    path = tmp_path / "replicator.toml"
    path.write_text("\n".join(lines) + "\n")
    return {**env, "S3_SYNC_CONFIG": str(path)}


def source_client(minio_source: MinioServer) -> Minio:
    return Minio(minio_source.host, SOURCE_USER, SOURCE_PASSWORD, secure=False)


def put(source: Minio, bucket: str, key: str, data: bytes) -> None:
    source.put_object(bucket, key, io.BytesIO(data), len(data))


def labelled(metrics: dict[str, float], name: str, **labels: str) -> float:
    """The value of ``name``'s series with (at least) these labels, summed."""
    total = 0.0
    for series, value in metrics.items():
        if series.split("{", 1)[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


@pytest.fixture
def three(minio_source, minio_dest, second_minio, moto_server):
    """One source bucket, and three destinations: two MinIO, one moto."""
    source = source_client(minio_source)
    bucket = unique_bucket("src-fan")
    source.make_bucket(bucket)
    destinations = [
        Destination("first-minio", minio_dest.endpoint, DEST_USER, DEST_PASSWORD),
        Destination("second-minio", second_minio.endpoint, SECOND_USER, SECOND_PASSWORD),
        Destination("moto", moto_server.endpoint, MOTO_KEY, MOTO_SECRET),
    ]
    return source, bucket, destinations


def test_several_pairs_reconcile_each_and_the_flags_choose(tmp_path, minio_source, minio_dest, moto_server):
    source = source_client(minio_source)
    photos, docs = unique_bucket("src-photos"), unique_bucket("src-docs")
    for bucket in (photos, docs):
        source.make_bucket(bucket)
    for n in range(5):
        put(source, photos, f"p/{n}.jpg", b"photo %d" % n)
        put(source, docs, f"d/{n}.txt", b"doc %d" % n)
    photo_minio = Destination("photos-minio", minio_dest.endpoint, DEST_USER, DEST_PASSWORD)
    photo_moto = Destination("photos-moto", moto_server.endpoint, MOTO_KEY, MOTO_SECRET)
    docs_minio = Destination("docs-minio", minio_dest.endpoint, DEST_USER, DEST_PASSWORD)
    env = mirrors_file(tmp_path, minio_source, [("photos", photos, [photo_minio, photo_moto]),
                                                ("docs", docs, [docs_minio])])

    checked = run_cli(env, "check", "--destination", "photos-moto")
    assert checked.code == 0, checked.output
    only = run_cli(env, "reconcile", "--mirror", "docs")
    assert only.code == 0, only.output
    assert docs_minio.listed() == {f"d/{n}.txt" for n in range(5)}
    assert photo_minio.listed() == set() and photo_moto.listed() == set()
    assert "docs/docs-minio: " in only.output  # each line names its pair

    every = run_cli(env, "reconcile")
    assert every.code == 0, every.output
    for destination in (photo_minio, photo_moto):
        assert destination.listed() == {f"p/{n}.jpg" for n in range(5)}
        assert destination.body("p/3.jpg") == b"photo 3"
    assert "photos/photos-minio: " in every.output and "photos/photos-moto: " in every.output

    unknown = run_cli(env, "reconcile", "--mirror", "music")
    assert unknown.code == 2 and "--mirror music: no such mirror (configured: photos, docs)" in unknown.output


def test_a_bad_file_is_refused_at_once_with_exit_2(tmp_path, minio_source):
    path = tmp_path / "replicator.toml"
    path.write_text("[[mirrors]]\nsource_bucket = \"photos\"\n[[mirrors.destinations]]\nregion = \"x y\"\n"
                    "secret_key = \"${UNSET_SECRET}\"\n")
    for command in ("run", "reconcile", "check"):
        result = run_cli({"S3_SYNC_CONFIG": str(path)}, command)
        assert result.code == 2, result.output
        for part in ("mirrors[0].destinations[0].bucket: missing", "mirrors[0].destinations[0].region='x y'",
                     "${UNSET_SECRET} refers to UNSET_SECRET, which is not set"):
            assert part in result.output


def test_a_blackholed_destination_delays_no_other(tmp_path, minio_source, three, sidecars):
    """Three destinations of one source; one is blackholed for 60 s under a steady upload
    load. The other two keep their event latency (p99 under 1 s, measured from outside:
    upload done to key listed), and the third catches up once it answers again."""
    source, bucket, destinations = three
    dead = destinations[1]
    proxy = TcpProxy(int(dead.endpoint.rsplit(":", 1)[1]))
    dead.via = proxy.endpoint
    env = mirrors_file(tmp_path, minio_source, [("fan", bucket, destinations)], queue_size=200)
    sidecar = sidecars(env)
    wait_for(sidecar.ready, timeout=60, what="readiness of every destination")

    healthy = [d for d in destinations if d is not dead]
    uploaded: dict[str, float] = {}
    seen: dict[str, dict[str, float]] = {d.name: {} for d in healthy}
    stop = threading.Event()

    def watch(destination: Destination) -> None:
        # Lists only from the first upload not seen yet (the keys are numbered in upload
        # order): a whole listing each round would grow with the test and slow the
        # observer, not the replicator, on the Python server (moto).
        arrived = seen[destination.name]
        while not stop.is_set():
            waiting = sorted(key for key in list(uploaded) if key not in arrived)
            after = {"StartAfter": f"load/{int(waiting[0][5:10]) - 1:05d}.bin"} if waiting else {}
            now = time.monotonic()
            page = destination.client.list_objects_v2(Bucket=destination.bucket, Prefix="load/", **after)
            for item in page.get("Contents", ()):
                arrived.setdefault(item["Key"], now)
            time.sleep(0.1)

    watchers = [threading.Thread(target=watch, args=(d,), daemon=True) for d in healthy]
    for watcher in watchers:
        watcher.start()
    proxy.freeze()
    proxy.hold()  # connections are accepted and then hear nothing: a blackhole
    try:
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 60:
            key = f"load/{n:05d}.bin"
            put(source, bucket, key, b"x" * 2048)
            uploaded[key] = time.monotonic()
            n += 1
            time.sleep(0.1)
        wait_for(lambda: all(set(uploaded) <= set(seen[d.name]) for d in healthy), timeout=30,
                 what="the healthy destinations to have every upload")
        status = sidecar.status()
        by_name = {m["destination"]: m for m in status["mirrors"]}
        assert not by_name[dead.name]["ready"] or by_name[dead.name]["queue"]["depth"] > 0
    finally:
        stop.set()
        proxy.release()
    for destination in healthy:
        latencies = sorted(seen[destination.name][key] - uploaded[key] for key in uploaded)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        assert p99 < 1.0, f"{destination.name}: p99 {p99:.2f}s over {len(latencies)} uploads"
    assert len(uploaded) >= 300

    wait_for(lambda: dead.listed() >= set(uploaded), timeout=120, what="the blackholed destination to catch up")
    metrics = sidecar.metrics()
    for destination in destinations:
        assert labelled(metrics, "replicator_objects_copied_total", mirror="fan",
                        destination=destination.name) >= (1 if destination is dead else len(uploaded))
    # Every series of a destination names it: none is counted for nobody.
    for series in metrics:
        if "destination=" in series:
            assert 'destination=""' not in series and 'mirror=""' not in series, series
    proxy.close()


def test_status_and_readiness_cover_every_destination(tmp_path, minio_source, three, sidecars):
    source, bucket, destinations = three
    env = mirrors_file(tmp_path, minio_source, [("fan", bucket, destinations)])
    sidecar = sidecars(env)
    wait_for(sidecar.ready, timeout=60, what="readiness of every destination")
    put(source, bucket, "one.txt", b"one")
    try:
        wait_for(lambda: all("one.txt" in d.listed() for d in destinations), timeout=20, what="the event copies")
    except AssertionError:
        print(sidecar.log()[-6000:])
        raise
    status = sidecar.status()
    assert status["ready"] is True and status["state"] == "running"
    assert [(m["mirror"], m["destination"], m["ready"]) for m in status["mirrors"]] == [
        ("fan", d.name, True) for d in destinations]
    metrics = sidecar.metrics()
    for destination in destinations:
        assert labelled(metrics, "replicator_ready", mirror="fan", destination=destination.name) == 1
        assert labelled(metrics, "replicator_reconciles_total", destination=destination.name,
                        result="success") >= 1
    assert labelled(metrics, "replicator_events_received_total", source_bucket=bucket, kind="created") >= 1
    log = sidecar.log()
    for destination in destinations:
        assert f"fan/{destination.name}: ✓ Sync completed successfully" in log


def test_two_mirrors_of_one_bucket_each_take_their_own_keys_on_both_paths(tmp_path, minio_source, minio_dest,
                                                                         moto_server, sidecars):
    """One source bucket, one listener, two mirrors with different filters: each
    destination gets its mirror's keys by event and by reconcile, and keeps what its
    mirror excludes, deletions on."""
    source = source_client(minio_source)
    bucket = unique_bucket("src-split")
    source.make_bucket(bucket)
    raw = Destination("raw", minio_dest.endpoint, DEST_USER, DEST_PASSWORD)
    web = Destination("web", moto_server.endpoint, MOTO_KEY, MOTO_SECRET)
    # The destinations hold data beside the mirror: never the mirror's to delete.
    raw.client.put_object(Bucket=raw.bucket, Key="web/not-ours.jpg", Body=b"theirs")
    web.client.put_object(Bucket=web.bucket, Key="web/cache/x.tmp", Body=b"theirs")
    for key in ("raw/a.cr2", "raw/b.cr2", "web/a.jpg", "web/cache/y.tmp"):
        put(source, bucket, key, key.encode())
    env = mirrors_file(tmp_path, minio_source, [("raw", bucket, [raw]), ("web", bucket, [web])],
                       filters={"raw": 'prefix = "raw/"', "web": 'prefix = "web/"\nfilter = ["- *.tmp"]'})

    reconciled = run_cli(env, "reconcile")
    assert reconciled.code == 0, reconciled.output
    assert raw.listed() == {"raw/a.cr2", "raw/b.cr2", "web/not-ours.jpg"}
    assert web.listed() == {"web/a.jpg", "web/cache/x.tmp"}

    sidecar = sidecars(env)
    wait_for(sidecar.ready, timeout=60, what="readiness")
    put(source, bucket, "raw/c.cr2", b"new raw")
    put(source, bucket, "web/b.jpg", b"new web")
    put(source, bucket, "web/cache/z.tmp", b"excluded")
    put(source, bucket, "web/a.jpg", b"overwritten")
    source.remove_object(bucket, "raw/a.cr2")
    wait_for(lambda: raw.listed() == {"raw/b.cr2", "raw/c.cr2", "web/not-ours.jpg"}, timeout=20,
             what="raw's events")
    wait_for(lambda: web.listed() == {"web/a.jpg", "web/b.jpg", "web/cache/x.tmp"} and
             web.body("web/a.jpg") == b"overwritten", timeout=20, what="web's events")
    # The excluded key deleted at the source stays where the destination has it.
    source.remove_object(bucket, "web/cache/y.tmp")
    put(source, bucket, "web/c.jpg", b"after")
    wait_for(lambda: "web/c.jpg" in web.listed(), timeout=20, what="an event after the excluded delete")
    assert "web/cache/x.tmp" in web.listed() and "web/not-ours.jpg" in raw.listed()
    assert "listener: subscribed" in sidecar.log() and sidecar.log().count("listener: subscribed") == 1
