"""Fault-injection audit: thousands of seeded operations against a real MinIO source
while faults hit every link, then a full comparison of source and destination (issue 10,
"Done when").

What runs, all on 127.0.0.1 free ports with temporary directories:

    workload ──────────────────────────────► MinIO source
    replicator run ─► TcpProxy ─► FaultProxy ─► MinIO source
    replicator run ─► TcpProxy ─► FaultProxy ─► destination (MinIO, or moto's server)
    watcher ───────────────────────────────► destination (lists it every few seconds)

The TcpProxy (tests/sidecar.py) adds latency, cuts connections (FIN or RST) and
blackholes them; the FaultProxy (tests/faultproxy.py, with two fixes in
AuditFaultProxy below) answers 503 in place of the server. The servers themselves are
restarted, and replicator is SIGKILLed and started again on the same state directory.

1. The workload performs ``--ops`` operations chosen by ``--seed``, spread over
   ``--duration`` seconds: new keys, same-size and other-size overwrites, deletes, a
   delete followed at once by a put of the same key, bursts of overwrites, multipart
   uploads, tag changes, CopyObject metadata rewrites (MetadataDirective=REPLACE), and
   keys with unicode, spaces, control characters, ``%``, ``+``, or of 600+ bytes. It
   talks to MinIO directly: faults are replicator's problem, not the workload's.
2. Meanwhile 20 faults run one after another, in an order drawn from the seed.
3. The watcher lists the destination every few seconds. A key that disappears while
   the source held it throughout (and for a grace period before) is a wrongful delete,
   even if a later copy brings it back.
4. Once the workload and the faults are done, the harness waits for the destination's
   listing to match the source's (convergence time), then for a reconcile that started
   after the faults and a metadata sweep that started after that reconcile, with no
   event work left, and compares every object: bytes (MD5 ETags where both sides have
   one, else both bodies hashed), size, Content-Type, user metadata and tags.
5. It stops replicator with SIGTERM, lists multipart uploads left at the destination,
   and scans every replicator log for the credentials and for "this is a bug".

The choice of operations, their data and the fault schedule come from the seed; what
the faults hit depends on timing, so two runs with one seed differ in detail.

    .venv/bin/python scripts/audit_faults.py --dest minio --seed 1 --ops 5000
    .venv/bin/python scripts/audit_faults.py --dest moto --seed 2 --ops 5000
    .venv/bin/python scripts/audit_faults.py --ops 300 --duration 120   # a quick try

Exit status 0 when nothing differs and every check passed; 1 otherwise. The summary
goes to stdout, the details to ``report.json`` in the work directory, which is kept
(with every log) when something failed or with ``--keep``.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import io
import itertools
import json
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import urllib3  # noqa: E402
from minio import Minio  # noqa: E402
from minio.commonconfig import REPLACE, CopySource, Tags  # noqa: E402
from minio.error import S3Error  # noqa: E402

from replicator.printable import printable  # noqa: E402
from tests.conftest import boto_client  # noqa: E402
from tests.faultproxy import FaultProxy, s3_error_document  # noqa: E402
from tests.servers import MinioServer, MotoServer  # noqa: E402
from tests.sidecar import Sidecar, TcpProxy  # noqa: E402

KiB, MiB = 1024, 1024 * 1024
# Credentials no default would produce, so that finding one in a log means it leaked.
SOURCE_USER, SOURCE_PASSWORD = "audit-src-admin", "audit-src-secret-Ty8Lq3"
DEST_USER, DEST_PASSWORD = "audit-dst-admin", "audit-dst-secret-Pz5Nw1"
SOURCE_BUCKET, DEST_BUCKET = "audit-source", "audit-mirror"
PART_SIZE = 5 * MiB  # the smallest S3 allows; replicator's threshold is set to it too
# A destination delete is only blamed on replicator if the source held the key this
# long before the listing that still showed it: a delete decided on a source HEAD
# answered just before a re-upload is a race the next event repairs, not a loss.
GRACE = 10.0
BUG_WORDS = "this is a bug"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- what the source held, and when -------------------------------------------------

PRESENT, ABSENT, UNKNOWN = "present", "absent", "unknown"


class Timeline:
    """Per key, when the source held it: the workload records each change as it starts
    (the state is unknown while a request is out) and as it ends."""

    def __init__(self):
        self._lock = threading.Lock()
        self._times: dict[str, list[float]] = {}
        self._states: dict[str, list[str]] = {}

    def mark(self, key: str, state: str) -> None:
        with self._lock:
            self._times.setdefault(key, []).append(time.time())
            self._states.setdefault(key, []).append(state)

    def state(self, key: str) -> str:
        with self._lock:
            states = self._states.get(key)
            return states[-1] if states else ABSENT

    def held_throughout(self, key: str, start: float, end: float) -> bool:
        """Whether the source surely held ``key`` from ``start`` to ``end``."""
        with self._lock:
            times, states = self._times.get(key, []), self._states.get(key, [])
            i = bisect.bisect_right(times, start)
            return i > 0 and states[i - 1] == PRESENT and (i == len(times) or times[i] > end)


# -- the workload ---------------------------------------------------------------------

CONTENT_TYPES = ["application/octet-stream", "text/plain", "application/json", "image/png",
                 "text/csv; charset=utf-8", "application/x-tar"]
TAG_WORDS = ["blue", "red", "green", "keep", "archive", "tmp", "q3 report", "a+b=c", "x:y/z@w"]
# Weights of the operations; "multipart" is set from --multipart-percent.
OPERATIONS = {"put_new": 26, "overwrite_same_size": 12, "overwrite_other_size": 10, "delete": 11,
              "delete_then_put": 4, "overwrite_burst": 3, "set_tags": 10, "clear_tags": 3,
              "rewrite_metadata": 11}

# Control characters XML 1.0 can't carry. moto 5.2.5 answers 500 to a CreateMultipartUpload
# of a key holding one (single PUTs of it work), whatever replicator does.
XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


def key_names(count: int, rng: random.Random, newline: bool) -> list[str]:
    """``count`` distinct keys, one in six of them odd. No key is another's "directory"
    (MinIO can't hold ``a`` and ``a/b`` both): every name ends in its own number."""
    controls = [chr(n) for n in (*range(1, 0x20), 0x7F) if newline or n != 0x0A]
    odd = [
        lambda i: f"unicode/café-日本語-😀-{i}",
        lambda i: f"unicode/\u202ebidi\u2066-\u2028ls-\x85nel-{i}",
        lambda i: f"with spaces/a file {i} .txt",
        lambda i: f" leading and trailing /{i} ",
        lambda i: f"ctrl/{i}-{''.join(rng.sample(controls, 3))}-end",
        lambda i: f"percent/100%25-{i}%",
        lambda i: f"plus/a+b {i}+.txt",
        lambda i: "long/" + "l" * 200 + "/" + "m" * 200 + "/" + "n" * 200 + f"-{i}",
    ]
    dirs = ["", "data/", "data/2024/", "logs/app/", "img/"]
    names = []
    for i in range(count):
        if i % 6 == 5:
            names.append(odd[(i // 6) % len(odd)](i))
        else:
            names.append(f"{dirs[i % len(dirs)]}obj-{i:05d}.bin")
    return names


@dataclass
class Op:
    index: int
    kind: str
    key: str
    size: int = 0
    content_type: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class Workload:
    """Chooses each operation from the seed and performs it against the source, directly.

    The choice follows what the workload believes the source holds (its last successful
    operations), so it stays seeded; a request that fails for a fault of the source's
    (a restart) is retried for up to a minute."""

    def __init__(self, client: Minio, rng: random.Random, ops: int, duration: float, multipart_percent: float,
                 moto: bool, timeline: Timeline):
        self.client = client
        self.rng = rng
        self.ops = ops
        self.duration = duration
        self.timeline = timeline
        self.weights = {**OPERATIONS, "multipart": multipart_percent}
        # moto answers 404 to a PUT of a key with a newline (tests/integration/test_printed_keys.py).
        self.names = key_names(max(200, ops // 4), rng, newline=not moto)
        self.multipart_xml_invalid = not moto
        self.sizes: dict[str, int] = {}  # what the workload believes the source holds
        self.counts: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.multipart_done = threading.Event()  # set after each multipart upload, for a timed kill
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        for index in range(self.ops):
            if self.stop.is_set():
                return
            due = started + index * self.duration / self.ops
            time.sleep(max(0.0, due - time.monotonic()))
            op = self._choose(index)
            self.counts[op.kind] += 1
            if not self._perform(op):
                self.failed[op.kind] += 1

    # Choosing -------------------------------------------------------------------------

    def _choose(self, index: int) -> Op:
        rng = self.rng
        kind = rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
        free = len(self.sizes) < len(self.names)
        if not self.sizes or (kind in ("put_new", "multipart") and free):
            key = rng.choice([n for n in self.names if n not in self.sizes]) if free else rng.choice(self.names)
            if kind != "multipart":
                kind = "put_new"
        else:
            key = rng.choice(sorted(self.sizes))
        if kind == "multipart" and not self.multipart_xml_invalid and XML_INVALID.search(key):
            kind = "overwrite_other_size" if key in self.sizes else "put_new"
        op = Op(index, kind, key, content_type=rng.choice(CONTENT_TYPES),
                metadata={"x-amz-meta-op": str(index), "x-amz-meta-owner": rng.choice(["ann", "bob", "cy"])})
        if kind == "multipart":
            op.size = PART_SIZE + rng.randrange(1, 3 * MiB)
        elif kind == "overwrite_same_size":
            op.size = self.sizes.get(key, 0)
        elif kind in ("put_new", "overwrite_other_size", "delete_then_put", "overwrite_burst"):
            op.size = self._small_size()
            if kind == "overwrite_other_size" and op.size == self.sizes.get(key):
                op.size += 1
        if kind == "set_tags" or (kind in ("put_new", "multipart") and rng.random() < 0.3):
            op.tags = {f"t{n}": rng.choice(TAG_WORDS) for n in range(rng.randint(1, 3))}
        return op

    def _small_size(self) -> int:
        roll = self.rng.random()
        if roll < 0.03:
            return 0
        if roll < 0.93:
            return self.rng.randrange(1, 48 * KiB)
        return self.rng.randrange(256 * KiB, 2 * MiB)

    # Performing -----------------------------------------------------------------------

    def _perform(self, op: Op) -> bool:
        bucket, key = SOURCE_BUCKET, op.key
        if op.kind in ("put_new", "multipart", "overwrite_same_size", "overwrite_other_size"):
            ok = self._put(key, op, self.rng.randbytes(op.size))
            if ok and op.kind == "multipart":
                self.multipart_done.set()
            return ok
        if op.kind == "overwrite_burst":
            return all([self._put(key, op, self.rng.randbytes(op.size)) for _ in range(3)])  # noqa: C419 - all three put
        if op.kind == "delete":
            return self._delete(key)
        if op.kind == "delete_then_put":
            return self._delete(key) and self._put(key, op, self.rng.randbytes(op.size))
        if op.kind == "set_tags":
            return self._retry(lambda: self.client.set_object_tags(bucket, key, tag_set(op.tags)))
        if op.kind == "clear_tags":
            return self._retry(lambda: self.client.delete_object_tags(bucket, key))
        if op.kind == "rewrite_metadata":
            return self._retry(lambda: self.client.copy_object(
                bucket, key, CopySource(bucket, key), metadata={"Content-Type": op.content_type, **op.metadata},
                metadata_directive=REPLACE))
        raise ValueError(op.kind)

    def _put(self, key: str, op: Op, data: bytes) -> bool:
        if self.timeline.state(key) != PRESENT:
            self.timeline.mark(key, UNKNOWN)
        ok = self._retry(lambda: self.client.put_object(
            SOURCE_BUCKET, key, io.BytesIO(data), len(data), content_type=op.content_type, metadata=op.metadata,
            tags=tag_set(op.tags) if op.tags else None, part_size=PART_SIZE))
        if ok:
            self.timeline.mark(key, PRESENT)
            self.sizes[key] = len(data)
        return ok

    def _delete(self, key: str) -> bool:
        self.timeline.mark(key, UNKNOWN)
        ok = self._retry(lambda: self.client.remove_object(SOURCE_BUCKET, key))
        if ok:
            self.timeline.mark(key, ABSENT)
            self.sizes.pop(key, None)
        return ok

    def _retry(self, request: Callable[[], object], patience: float = 60.0) -> bool:
        """Retry what the source's restarts make fail; give up on an answer that won't
        change (a tag change for a key that isn't there)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                request()
                return True
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchVersion"):
                    return False
                error: Exception = exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                error = exc
            if time.monotonic() > deadline or self.stop.is_set():
                log(f"workload: gave up after {patience:.0f}s: {type(error).__name__}")
                return False
            time.sleep(0.5)


def tag_set(tags: dict[str, str]) -> Tags:
    result = Tags.new_object_tags()
    result.update(tags)
    return result


# -- the rig: servers, proxies, replicator ------------------------------------------------


class AuditFaultProxy(FaultProxy):
    """The FaultProxy, its handlers' own failures (a restarting server) written to
    ``errors`` rather than stderr, and counted."""

    def __init__(self, target_port: int, errors: Path):
        super().__init__(target_port)
        self.errors = errors
        self.failed = 0
        self._server.handle_error = self._record

    def _record(self, request, address) -> None:
        self.failed += 1
        with open(self.errors, "a") as out:
            out.write(f"{time.strftime('%H:%M:%S')} {traceback.format_exc(limit=3)}\n")


class Rig:
    def __init__(self, workdir: Path, dest_kind: str, settings: dict[str, str]):
        self.workdir = workdir
        self.dest_kind = dest_kind
        self.source = MinioServer("audit-source", SOURCE_USER, SOURCE_PASSWORD, workdir=str(workdir / "source"))
        if dest_kind == "minio":
            self.dest = MinioServer("audit-dest", DEST_USER, DEST_PASSWORD, workdir=str(workdir / "dest"))
        else:
            self.dest = MotoServer()
        self.settings = settings
        self.lives: list[Sidecar] = []
        self.logs: list[Path] = []
        self.lock = threading.Lock()  # one start or kill of replicator at a time

    def start(self) -> None:
        self.source.start()
        self.dest.start()
        self.source_faults = AuditFaultProxy(self.source.port, self.workdir / "proxy-errors-source.log")
        self.dest_faults = AuditFaultProxy(self.dest.port, self.workdir / "proxy-errors-destination.log")
        self.source_wire, self.dest_wire = TcpProxy(self.source_faults.port), TcpProxy(self.dest_faults.port)
        self.source_client = Minio(self.source.host, SOURCE_USER, SOURCE_PASSWORD, secure=False,
                                   http_client=urllib3.PoolManager(
                                       timeout=urllib3.Timeout(connect=2, read=30), retries=False, maxsize=10))
        self.source_client.make_bucket(SOURCE_BUCKET)
        self.dest_client = boto_client(self.dest.endpoint, DEST_USER, DEST_PASSWORD)
        self.dest_client.create_bucket(Bucket=DEST_BUCKET)
        self.start_replicator()

    @property
    def env(self) -> dict[str, str]:
        return {
            "S3_SYNC_ACCESS_KEY": DEST_USER, "S3_SYNC_SECRET_KEY": DEST_PASSWORD, "S3_SYNC_BUCKET": DEST_BUCKET,
            "S3_SYNC_ENDPOINT": self.dest_wire.endpoint,
            "MINIO_ENDPOINT": self.source_wire.endpoint, "MINIO_ACCESS_KEY": SOURCE_USER,
            "MINIO_SECRET_KEY": SOURCE_PASSWORD, "MINIO_BUCKET": SOURCE_BUCKET,
            # The same state directory for every life, so a start finds what a SIGKILL left.
            "S3_SYNC_STATE_DIR": str(self.workdir / "state"),
        }

    def secrets(self) -> list[str]:
        return [SOURCE_USER, SOURCE_PASSWORD, DEST_USER, DEST_PASSWORD]

    @property
    def replicator(self) -> Sidecar:
        return self.lives[-1]

    def start_replicator(self) -> None:
        with self.lock:
            # As overrides: Sidecar's own defaults (an hour's interval) win over its env.
            life = Sidecar(self.env, **self.settings)
            self.lives.append(life)
            life.start()

    def kill_replicator(self) -> None:
        with self.lock:
            life = self.replicator
            life.signal(signal.SIGKILL)
            life.wait()
            self._keep_log(life)

    def stop_replicator(self) -> int:
        """SIGTERM, as Docker and systemd stop it; its exit code."""
        with self.lock:
            life = self.replicator
            life.signal(signal.SIGTERM)
            code = life.wait(60)
            self._keep_log(life)
            return code

    def _keep_log(self, life: Sidecar) -> None:
        """Sidecar.close() deletes its log; keep a copy per life first."""
        copy = self.workdir / f"replicator-{len(self.logs) + 1}.log"
        shutil.copyfile(life.logfile, copy)
        self.logs.append(copy)
        life.close()

    def restart(self, server) -> None:
        server.stop()
        time.sleep(1)
        server.start()

    def close(self) -> None:
        for life in self.lives:
            life.close()
        for name in ("source_wire", "dest_wire", "source_faults", "dest_faults"):
            if hasattr(self, name):
                getattr(self, name).close()
        self.source.close()
        self.dest.close()


# -- the faults -----------------------------------------------------------------------------


@dataclass
class Fault:
    name: str
    apply: Callable[[float], None]  # given the time it may take, returns once it is over
    nominal: float  # seconds it lasts when the schedule has room


SLOW_DOWN = s3_error_document("SlowDown", 503)


def faults(rig: Rig, workload: Workload, rng: random.Random) -> list[Fault]:
    """The 20 faults of a run. Each one undoes itself before it returns."""

    def for_a_while(start: Callable[[], None], stop: Callable[[], None]) -> Callable[[float], None]:
        def apply(seconds: float) -> None:
            start()
            try:
                time.sleep(seconds)
            finally:
                stop()
        return apply

    def latency(wire: TcpProxy, one_way: float) -> Callable[[float], None]:
        return for_a_while(lambda: wire.delay(one_way, one_way), wire.delay)

    def both_latency(one_way: float) -> Callable[[float], None]:
        def start() -> None:
            rig.source_wire.delay(one_way, one_way)
            rig.dest_wire.delay(one_way, one_way)

        def stop() -> None:
            rig.source_wire.delay()
            rig.dest_wire.delay()
        return for_a_while(start, stop)

    def answer_503(proxy: FaultProxy, when: Callable[[object], bool]) -> Callable[[float], None]:
        def start() -> None:
            proxy.rule = lambda request: SLOW_DOWN if when(request) else None

        def stop() -> None:
            proxy.rule = lambda request: None
        return for_a_while(start, stop)

    def blackhole(wire: TcpProxy) -> Callable[[float], None]:
        # New connections wait, open ones fall silent: the client only notices by its timeouts.
        def start() -> None:
            wire.hold()
            wire.freeze()
        return for_a_while(start, wire.release)

    def cut(wire: TcpProxy, reset: bool) -> Callable[[float], None]:
        return lambda seconds: wire.cut(reset=reset)

    def restart(server) -> Callable[[float], None]:
        return lambda seconds: rig.restart(server)

    def kill(mid_multipart: bool) -> Callable[[float], None]:
        def apply(seconds: float) -> None:
            if mid_multipart:
                # Just after the source got a multipart object, so its copy is likely under way.
                workload.multipart_done.clear()
                workload.multipart_done.wait(min(seconds, 30))
                time.sleep(0.3)
            rig.kill_replicator()
            time.sleep(2)
            rig.start_replicator()
        return apply

    requests = itertools.count()

    def half(request) -> bool:
        return next(requests) % 2 == 1

    moto = rig.dest_kind == "moto"
    # moto keeps its objects in memory: a restart would lose the mirror, which no
    # replicator could prevent. An outage of the same length stands in for it.
    dest_restart = answer_503(rig.dest_faults, lambda r: True) if moto else restart(rig.dest)
    chosen = [
        Fault("source restart", restart(rig.source), 10),
        Fault("source restart", restart(rig.source), 10),
        Fault("destination restart" + (" (moto: 503s instead)" if moto else ""), dest_restart, 10),
        Fault("destination restart" + (" (moto: 503s instead)" if moto else ""), dest_restart, 10),
        Fault("SIGKILL replicator", kill(False), 5),
        Fault("SIGKILL replicator", kill(False), 5),
        Fault("SIGKILL replicator mid multipart copy", kill(True), 20),
        Fault("destination 503 on every request", answer_503(rig.dest_faults, lambda r: True), 15),
        Fault("destination 503 on every other request", answer_503(rig.dest_faults, half), 20),
        Fault("destination 503 on multipart parts", answer_503(rig.dest_faults, lambda r: r.has("uploadId")), 20),
        Fault("source 503 on every request", answer_503(rig.source_faults, lambda r: True), 15),
        Fault("source latency 300 ms each way", latency(rig.source_wire, 0.3), 20),
        Fault("destination latency 450 ms each way", latency(rig.dest_wire, 0.45), 20),
        Fault("latency 300 ms each way on both sides", both_latency(0.3), 15),
        Fault("destination connections reset (RST)", cut(rig.dest_wire, reset=True), 1),
        Fault("source connections reset (RST)", cut(rig.source_wire, reset=True), 1),
        Fault("destination connections reset (RST)", cut(rig.dest_wire, reset=True), 1),
        Fault("destination connections cut (FIN)", cut(rig.dest_wire, reset=False), 1),
        Fault("destination blackhole", blackhole(rig.dest_wire), 20),
        Fault("source blackhole", blackhole(rig.source_wire), 20),
    ]
    rng.shuffle(chosen)
    return chosen


def run_faults(schedule: list[Fault], duration: float, record: list[dict], stop: threading.Event) -> None:
    """One fault per slot of ``duration / len(schedule)`` seconds, each at most three
    quarters of its slot, so replicator gets quiet time between them."""
    slot = duration / len(schedule)
    started = time.monotonic()
    for n, fault in enumerate(schedule):
        time.sleep(max(0.0, started + n * slot + 1 - time.monotonic()))
        if stop.is_set():
            return
        seconds = min(fault.nominal, 0.75 * slot)
        begin = time.monotonic()
        log(f"fault {n + 1}/{len(schedule)}: {fault.name} ({seconds:.0f}s)")
        try:
            fault.apply(seconds)
            error = None
        except Exception as exc:  # noqa: BLE001 - a fault that failed is reported, the run goes on
            error = f"{type(exc).__name__}: {exc}"
            log(f"fault {fault.name} failed: {error}")
        record.append({"fault": fault.name, "at": round(begin - started, 1),
                       "seconds": round(time.monotonic() - begin, 1), "error": error})


# -- the watcher: wrongful deletes while it runs ----------------------------------------


class Watcher:
    """Lists the destination directly every few seconds. A key listed at one look and
    missing at the next, which the source held from GRACE seconds before the first look
    to the end of the second, was deleted wrongly."""

    def __init__(self, client, timeline: Timeline, interval: float = 3.0):
        self.client = client
        self.timeline = timeline
        self.interval = interval
        self.wrongful: list[dict] = []
        self.looks = 0
        self.stop = threading.Event()

    def run(self) -> None:
        previous: tuple[float, set[str]] | None = None
        while not self.stop.wait(self.interval):
            start = time.time()
            try:
                keys = set(list_dest(self.client))
            except Exception:  # noqa: BLE001 - the destination restarting: look again later
                continue
            end = time.time()
            self.looks += 1
            if previous is not None:
                seen_at, seen = previous
                for key in seen - keys:
                    if self.timeline.held_throughout(key, seen_at - GRACE, end):
                        self.wrongful.append({"key": key, "listed_at": seen_at, "missing_by": end})
                        log(f"WRONGFUL DELETE: {key!r} vanished from the destination while the source held it")
            previous = (start, keys)


# -- comparing ------------------------------------------------------------------------------


def list_dest(client) -> dict[str, dict]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=DEST_BUCKET):
        for item in page.get("Contents", ()):
            found[item["Key"]] = {"size": item["Size"], "etag": item["ETag"].strip('"')}
    return found


def list_source(client: Minio) -> dict[str, dict]:
    return {o.object_name: {"size": o.size, "etag": o.etag.strip('"')}
            for o in client.list_objects(SOURCE_BUCKET, recursive=True)}


def plain_md5s(source_etag: str, dest_etag: str) -> bool:
    """Whether both ETags are their objects' MD5: not a multipart ETag (``<md5>-<parts>``),
    which depends on the uploader's part size and says nothing of the other side's."""
    return "-" not in source_etag and "-" not in dest_etag


def listings_match(source: dict[str, dict], dest: dict[str, dict]) -> bool:
    """Same keys and sizes, and the same ETag where both are plain MD5s."""
    if source.keys() != dest.keys():
        return False
    return all(s["size"] == dest[k]["size"] and (not plain_md5s(s["etag"], dest[k]["etag"])
                                                 or s["etag"] == dest[k]["etag"])
               for k, s in source.items())


def md5_of(stream) -> str:
    digest = hashlib.md5()
    for chunk in iter(lambda: stream.read(MiB), b""):
        digest.update(chunk)
    return digest.hexdigest()


def compare(rig: Rig) -> dict[str, list]:
    """Every difference between the two buckets, by kind."""
    source, dest = list_source(rig.source_client), list_dest(rig.dest_client)
    diffs: dict[str, list] = {kind: [] for kind in ("missing_at_destination", "extra_at_destination", "size",
                                                    "bytes", "content_type", "metadata", "tags")}
    diffs["missing_at_destination"] = sorted(source.keys() - dest.keys())
    diffs["extra_at_destination"] = sorted(dest.keys() - source.keys())

    def one(key: str) -> None:
        s, d = source[key], dest[key]
        if s["size"] != d["size"]:
            diffs["size"].append({"key": key, "source": s["size"], "destination": d["size"]})
            return
        if not plain_md5s(s["etag"], d["etag"]) or s["etag"] != d["etag"]:
            response = rig.source_client.get_object(SOURCE_BUCKET, key)
            try:
                source_md5 = md5_of(response)
            finally:
                response.close()
                response.release_conn()
            dest_md5 = md5_of(rig.dest_client.get_object(Bucket=DEST_BUCKET, Key=key)["Body"])
            if source_md5 != dest_md5:
                diffs["bytes"].append({"key": key, "source_md5": source_md5, "destination_md5": dest_md5})
        stat = rig.source_client.stat_object(SOURCE_BUCKET, key)
        head = rig.dest_client.head_object(Bucket=DEST_BUCKET, Key=key)
        if stat.content_type != head.get("ContentType"):
            diffs["content_type"].append({"key": key, "source": stat.content_type,
                                          "destination": head.get("ContentType")})
        source_meta = {name.lower()[len("x-amz-meta-"):]: value for name, value in stat.metadata.items()
                       if name.lower().startswith("x-amz-meta-")}
        # The record replicator keeps of the source ETag it copied is its own, not the user's.
        dest_meta = {name.lower(): value for name, value in head.get("Metadata", {}).items()
                     if name.lower() != "replicator-source-etag"}
        if source_meta != dest_meta:
            diffs["metadata"].append({"key": key, "source": source_meta, "destination": dest_meta})
        source_tags = dict(rig.source_client.get_object_tags(SOURCE_BUCKET, key) or {})
        dest_tags = {t["Key"]: t["Value"] for t in
                     rig.dest_client.get_object_tagging(Bucket=DEST_BUCKET, Key=key)["TagSet"]}
        if source_tags != dest_tags:
            diffs["tags"].append({"key": key, "source": source_tags, "destination": dest_tags})

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(one, key) for key in sorted(source.keys() & dest.keys())]:
            future.result()
    for kind in ("size", "bytes", "content_type", "metadata", "tags"):
        diffs[kind].sort(key=lambda d: d["key"])
    return diffs


def wait_until(predicate: Callable[[], object], timeout: float, what: str, pause: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except Exception:  # noqa: BLE001 - a server or replicator between answers: ask again
            pass
        time.sleep(pause)
    log(f"timed out after {timeout:.0f}s waiting for {what}")
    return None


def epoch(iso_time: str) -> float:
    """``/status`` gives times as ISO-8601 UTC strings."""
    return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()


def settled_after(rig: Rig, since: float) -> Callable[[], dict | None]:
    """A check that holds once a reconcile that started after ``since`` succeeded, a
    metadata sweep started after that reconcile ended (and compared without failure),
    and no event work is left (queued, in flight, or kept for after a reconcile)."""

    def check() -> dict | None:
        status = rig.replicator.status()
        reconcile = status["reconcile"]["last"] or {}
        sweep = (status.get("metadata_sweep") or {}).get("last") or {}
        queue = status["queue"]
        if not reconcile.get("ok") or epoch(reconcile["finished_at"]) - reconcile["duration"] < since:
            return None
        if not sweep or sweep["failed"] or (epoch(sweep["finished_at"]) - sweep["duration_seconds"]
                                            < epoch(reconcile["finished_at"])):
            return None
        if queue["depth"] or queue["in_flight"] or queue["metadata_waiting"]:
            return None
        return {"reconcile": reconcile, "sweep": sweep}

    return check


def explain_uploads(uploads: list[dict], paths: list[Path]) -> None:
    """Mark each upload left at the destination whose CreateMultipartUpload answer was
    lost (the log shows that request failing and retried, within 2 s of the upload's
    start): the server started it, replicator never learned its id, so it can't abort
    it. The README names the case ("What it can't know, and the last net") and leaves it
    to a lifecycle rule. Any other upload left is replicator's to clean up."""
    lines = [line for path in paths for line in path.read_text(errors="replace").splitlines()
             if "destination: start multipart " in line and "retrying" in line]
    for upload in uploads:
        started = datetime.fromisoformat(upload["initiated"]).timestamp()
        needle = f"destination: start multipart {printable(upload['key'])}: "
        upload["answer_lost"] = any(
            needle in line and abs(datetime.strptime(line[1:20], "%Y-%m-%d %H:%M:%S")
                                   .replace(tzinfo=timezone.utc).timestamp() - started) <= 2
            for line in lines)


def scan_logs(paths: list[Path], secrets: list[str]) -> dict:
    found: dict = {"secrets": [], "this_is_a_bug": [], "tracebacks": 0, "errors": Counter()}
    for path in paths:
        text = path.read_text(errors="replace")
        for secret in secrets:
            if secret in text:
                # Which credential, by position only: the report must not carry it either.
                found["secrets"].append({"log": path.name, "credential": secrets.index(secret)})
        for line in text.splitlines():
            if BUG_WORDS in line:
                found["this_is_a_bug"].append(f"{path.name}: {line[:300]}")
            if line.startswith("Traceback"):
                found["tracebacks"] += 1
            if "] ✗ " in line:
                # Errors by their shape: keys and numbers vary, the words after the key don't.
                found["errors"][line.split("] ✗ ", 1)[1].split(": ")[-1][:80]] += 1
    found["errors"] = dict(found["errors"].most_common(12))
    return found


# -- the run --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", choices=("minio", "moto"), default="minio")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=480.0,
                        help="seconds over which the operations and the 20 faults are spread")
    parser.add_argument("--multipart-percent", type=float, default=2.0,
                        help="share of operations that are multipart uploads (5-8 MiB each)")
    parser.add_argument("--settle-timeout", type=float, default=420.0,
                        help="seconds to wait for convergence, then for a reconcile and a sweep")
    parser.add_argument("--workdir", type=Path, help="where servers, state and logs live (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory even when all is well")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="replicator-audit-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    settings = {
        "S3_SYNC_INTERVAL": "60",  # the shortest allowed
        "S3_SYNC_RECONCILE_COOLDOWN": "10",
        # Not the reconcile's 60: both would start together for good, and the audit waits
        # for a sweep that starts after a reconcile has ended.
        "S3_SYNC_METADATA_SWEEP_INTERVAL": "45",
        "S3_SYNC_METADATA_SWEEP_RATE": "500",
        "S3_SYNC_MAX_RETRIES": "3",
        "S3_SYNC_RETRY_DELAY": "0.5",
        "S3_SYNC_CONNECT_TIMEOUT": "2",
        "S3_SYNC_READ_TIMEOUT": "10",
        "S3_SYNC_LISTEN_TIMEOUT": "10",
        "S3_SYNC_WORKERS": "8",
        "S3_SYNC_MULTIPART_THRESHOLD": "5MiB",
        "S3_SYNC_MULTIPART_CHUNK_SIZE": "5MiB",
        "S3_SYNC_SHUTDOWN_TIMEOUT": "10",
    }
    rig = Rig(workdir, args.dest, settings)
    report: dict = {"dest": args.dest, "seed": args.seed, "ops": args.ops, "duration": args.duration,
                    "settings": settings, "workdir": str(workdir)}
    ok = False
    try:
        log(f"starting MinIO source, {args.dest} destination, proxies and replicator in {workdir}")
        rig.start()
        timeline = Timeline()
        workload = Workload(rig.source_client, random.Random(rng.random()), args.ops, args.duration,
                            args.multipart_percent, moto=args.dest == "moto", timeline=timeline)
        schedule = faults(rig, workload, random.Random(rng.random()))
        watcher = Watcher(rig.dest_client, timeline)
        fault_record: list[dict] = []
        stop_faults = threading.Event()
        threads = [threading.Thread(target=workload.run, name="workload"),
                   threading.Thread(target=run_faults, args=(schedule, args.duration, fault_record, stop_faults),
                                    name="faults"),
                   threading.Thread(target=watcher.run, name="watcher")]
        for thread in threads:
            thread.daemon = True  # an interrupted run exits: the servers are gone anyway
        begin = time.monotonic()
        log(f"workload: {args.ops} operations over {args.duration:.0f}s; {len(schedule)} faults")
        for thread in threads:
            thread.start()
        for thread in threads[:2]:
            thread.join()
        quiet_since = time.time()
        report["workload"] = {"seconds": round(time.monotonic() - begin, 1), "by_kind": dict(workload.counts),
                              "failed": dict(workload.failed), "keys_used": len(workload.names)}
        report["faults"] = fault_record
        log(f"workload and faults done after {report['workload']['seconds']}s; waiting for convergence")

        converged = wait_until(lambda: listings_match(list_source(rig.source_client), list_dest(rig.dest_client)),
                               args.settle_timeout, "the listings to match")
        report["convergence_seconds"] = round(time.time() - quiet_since, 1) if converged else None
        settled = wait_until(settled_after(rig, quiet_since), args.settle_timeout,
                             "a reconcile and a sweep after the faults")
        report["settled_seconds"] = round(time.time() - quiet_since, 1) if settled else None
        report["last_reconcile"], report["last_sweep"] = (settled or {}).get("reconcile"), (settled or {}).get("sweep")
        watcher.stop.set()
        threads[2].join()
        log("comparing every object: bytes, size, Content-Type, user metadata, tags")
        diffs = compare(rig)
        report["differences"] = diffs
        report["wrongful_deletes"] = watcher.wrongful
        report["watcher_looks"] = watcher.looks
        if any(diffs.values()):
            # Whether they are only late or stay wrong: one more reconcile and sweep.
            log("differences found; waiting for one more reconcile and sweep to see whether they stay")
            wait_until(settled_after(rig, time.time()), args.settle_timeout, "one more reconcile and sweep")
            report["differences_after_another_cycle"] = {k: len(v) for k, v in compare(rig).items()}
        report["exit_code_on_sigterm"] = rig.stop_replicator()
        report["dest_multipart_uploads_left"] = [
            {"key": u["Key"], "initiated": u["Initiated"].isoformat()}
            for u in rig.dest_client.list_multipart_uploads(Bucket=DEST_BUCKET).get("Uploads", ())]
        explain_uploads(report["dest_multipart_uploads_left"], rig.logs)
        report["logs"] = scan_logs(rig.logs, rig.secrets())
        report["replicator_lives"] = len(rig.lives)
        report["proxy_handler_errors"] = {"source": rig.source_faults.failed, "destination": rig.dest_faults.failed}
        report["source_objects"] = len(list_source(rig.source_client))
        ok = (settled is not None and not any(diffs.values()) and not watcher.wrongful
              and report["exit_code_on_sigterm"] == 0
              and not any(not u["answer_lost"] for u in report["dest_multipart_uploads_left"])
              and not report["logs"]["secrets"] and not report["logs"]["this_is_a_bug"]
              and not any(f["error"] for f in fault_record))
        report["ok"] = ok
    finally:
        rig.close()
        (workdir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    print_summary(report)
    if ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"kept {workdir} (report.json and every replicator log)")
    return 0 if ok else 1


def print_summary(report: dict) -> None:
    diffs = report.get("differences", {})
    lines = [
        f"audit: destination {report['dest']}, seed {report['seed']}, {report['ops']} operations",
        f"  source objects at the end: {report.get('source_objects')}",
        f"  operations: {report.get('workload', {}).get('by_kind')}",
        f"  operations the source refused or timed out: {report.get('workload', {}).get('failed')}",
        f"  faults: {len(report.get('faults', []))}, "
        f"failed to inject: {sum(1 for f in report.get('faults', []) if f['error'])}",
        f"  replicator processes: {report.get('replicator_lives')}, exit code on SIGTERM: "
        f"{report.get('exit_code_on_sigterm')}",
        f"  listings matched {report.get('convergence_seconds')}s after the faults; reconcile and sweep done "
        f"{report.get('settled_seconds')}s after",
        f"  wrongful deletes seen by the watcher ({report.get('watcher_looks')} looks): "
        f"{len(report.get('wrongful_deletes', []))}",
        *(f"  {kind.replace('_', ' ')}: {len(items)}" for kind, items in diffs.items()),
    ]
    if "differences_after_another_cycle" in report:
        lines.append(f"  after one more reconcile and sweep: {report['differences_after_another_cycle']}")
    logs = report.get("logs", {})
    uploads = report.get("dest_multipart_uploads_left", [])
    lines += [
        f"  multipart uploads left at the destination: {len(uploads)}, of which "
        f"{sum(1 for u in uploads if u.get('answer_lost'))} after a lost CreateMultipartUpload answer "
        f"(README: What it can't know; not counted as a failure)",
        f"  credentials in the logs: {len(logs.get('secrets', []))}; 'this is a bug': "
        f"{len(logs.get('this_is_a_bug', []))}; tracebacks: {logs.get('tracebacks')}",
        f"  most frequent errors logged: {logs.get('errors')}",
        f"  requests the fault proxies failed to forward (restarts, resets): {report.get('proxy_handler_errors')}",
        f"  RESULT: {'PASS' if report.get('ok') else 'FAIL'}",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
