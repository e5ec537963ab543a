#!/usr/bin/env python3
"""Event-path benchmark (issue 3, section 9): replicator's sidecar vs ``mc mirror --watch``.

    python scripts/bench_events.py                    # 10, 50, 200 objects/s; 5 s each; 10 rounds
    python scripts/bench_events.py --quick            # 10, 50 objects/s; 8 s each; 1 round
    python scripts/bench_events.py --update-doc docs/benchmarks-events.md

What one run does, all on 127.0.0.1:

1. Starts two MinIO servers (tests/servers.py): a source and a destination.
2. Starts both tools, and keeps them running for the whole benchmark:
     replicator  python -m replicator run   (the sidecar; source bucket src-replicator
                 -> destination bucket dst-replicator; defaults except the settings below)
     mc          mc mirror --watch src/src-mc dst/dst-mc
   Each tool watches a source bucket of its own, so a phase loads only the tool it
   measures; the other sits idle, subscribed. Both are warmed up (``--warmup`` seconds
   each at 50/s, not measured) once they answer: /readyz for replicator, a probe
   object for mc.
3. For each rate (objects/s) and round, and for each tool in turn (the order alternates
   between rounds), a paced uploader (48 threads, replicator's own raw signed PUT,
   the cheapest in CPU at hand) writes ``rate x seconds`` new objects to that
   tool's source bucket, sizes log-uniform in [1 KiB, 1 MiB] from a seed shared by both
   tools, so both copy the very same byte counts in the same order.
4. Latency per object = the time the object is first seen at the destination minus the
   time the source PUT returned to the uploader. A watcher *process* (no GIL shared with
   the uploader) takes the time it first sees each object, in two ways:
   - the destination's bucket notification (s3:ObjectCreated), which MinIO sends once
     the object is written: sharp, a fraction of a millisecond late;
   - listings of the destination bucket (ListObjectsV2 from the oldest object not yet
     seen, a few ms apart), the fallback should a notification not come: an upper bound,
     late by up to one poll period.
   Both times are CLOCK_MONOTONIC, which is one clock across processes. (Until
   2026-11-27 only listings were used, and their ~10 ms resolution made differences
   between the tools below it invisible.) HEAD's Last-Modified has one-second
   granularity: useless here. Listings carry it to the millisecond, though, so a second
   figure is taken on the servers' clock: destination Last-Modified minus source
   Last-Modified, immune to this process being descheduled (which, on a loaded machine,
   makes a few latencies of the first figure come out negative: "early"). MinIO stamps
   Last-Modified when a PUT *starts*, so this figure favours a tool that opens its PUT
   before it has the body (mc streams; replicator reads a small object whole first).
5. After the uploads, the poller waits up to ``--drain`` seconds for stragglers; an
   object never seen is reported as missing (replicator's reconcile interval is an
   hour, so a missed event is not repaired within the run).

For diagnosis it also records, per phase: each tool's CPU seconds (psutil), and for
replicator the deltas of its /metrics (events received, copies, failures, and the
replication-lag histogram it measures itself, from the event's time to the write).

To try a change to the event path side by side, ``--variant NAME=DIR`` runs one more
sidecar from DIR (a directory holding a ``replicator/`` package), with settings of its
own from ``--variant-env NAME VAR=VALUE``; it gets its own bucket pair and rotates
through the phases like the others.

Outputs: JSON (every latency), a Markdown fragment, a PNG plot. ``--update-doc`` puts
the fragment between the markers of the given file and leaves the rest alone.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minio import Minio  # noqa: E402
from minio.credentials import Credentials  # noqa: E402

import benchlib  # noqa: E402
from importlib.metadata import version  # noqa: E402
from replicator.stores.http_client import HttpClient  # noqa: E402
from replicator.stores.notifications import Subscription  # noqa: E402
from replicator.stores.transport import object_path, signed_request  # noqa: E402
from tests.servers import HOST, MinioServer, find_tool, free_port  # noqa: E402

KiB, MiB = 1024, 1024 * 1024
SRC_USER, SRC_PASS = "bench-src-admin", "bench-src-secret-9fQ2"
DST_USER, DST_PASS = "bench-dst-admin", "bench-dst-secret-4kW7"
TOOLS = ("replicator", "mc")  # plus any --variant: another replicator build, for an experiment
MARK_BEGIN = "<!-- BEGIN events-results (generated by scripts/bench_events.py) -->"
MARK_END = "<!-- END events-results -->"
POLL_PAUSE = 0.005  # between destination listings, per poller
UPLOAD_THREADS = 48
PERCENTILES = (50, 95, 99)


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def key_name(prefix: str, index: int) -> str:
    return f"{prefix}{index:06d}"


def sizes(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    lo, hi = math.log(KiB), math.log(MiB)
    return [int(round(math.exp(rng.uniform(lo, hi)))) for _ in range(n)]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation): p99 of 250 values is the 248th."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


# -- the poller: its own process -------------------------------------------------------

def poller_main(host: str, user: str, password: str, bucket: str, prefix: str, total: int,
                started, finish, drain_deadline, ready, out) -> None:
    """Watch ``bucket`` under ``prefix`` until every object up to ``total`` has been seen,
    or ``finish`` is set and the drain deadline passed. Two watchers, each taking the time
    an object first shows:
    - a notification listener on the destination bucket: MinIO announces an object once it
      is written, so this is the sharp figure (well under a millisecond late);
    - listings from the oldest unseen index, a few ms apart: the fallback should an event
      go missing, and the source of each object's Last-Modified (to the millisecond; HEAD
      gives only the second).
    ``started`` (shared int) is how many uploads have begun: nothing at or beyond it can
    exist yet. Sends {index: (monotonic time listed, destination Last-Modified)},
    {index: monotonic time announced}, polls, mean period."""
    client = Minio(host, user, password, secure=False)
    seen: dict[int, tuple[float, float]] = {}
    announced: dict[int, float] = {}
    probe = f"{prefix}probe"
    subscribed = threading.Event()

    def listen() -> None:
        # replicator's own stream reader. minio-py's iterator reads its lines a byte at a
        # time (IOBase.readline on urllib3): 1.7 ms of CPU per 670-byte event, a third of a
        # core at 200 events/s, taken from the machine under test (a 200/s trial with it
        # had p99s of seconds for both tools, against tens of ms without).
        response = client._execute(  # noqa: SLF001 - as replicator/stores/notifications.py
            "GET", bucket, query_params={"events": ["s3:ObjectCreated:*"], "prefix": prefix, "suffix": "",
                                         "ping": "2"}, preload_content=False)
        for record in Subscription(response, host).records():
            now = time.monotonic()
            name = record["s3"]["object"]["key"]  # raw on this stream: not URL-escaped
            if name == probe:
                subscribed.set()
            elif name[len(prefix):].isdigit():
                announced.setdefault(int(name[len(prefix):]), now)

    threading.Thread(target=listen, daemon=True).start()
    # Subscribed once an object of our own is announced: before that, uploads could pass
    # unannounced (the listings would still catch them, less sharply).
    while not subscribed.is_set():
        client.put_object(bucket, probe, io.BytesIO(b""), 0)
        subscribed.wait(0.2)
    client.remove_object(bucket, probe)
    low = 0  # every index below has been seen
    polls = 0
    first_poll = time.monotonic()
    ready.set()
    while len(seen) < total:
        if finish.is_set() and time.monotonic() > drain_deadline.value:
            break
        limit = started.value
        if low >= limit:
            time.sleep(POLL_PAUSE)
            continue
        start_after = key_name(prefix, low - 1) if low > 0 else None
        polls += 1
        try:
            for obj in client.list_objects(bucket, prefix=prefix, start_after=start_after, recursive=True):
                now = time.monotonic()
                if not obj.object_name[len(prefix):].isdigit():
                    continue  # the probe, not yet removed
                index = int(obj.object_name[len(prefix):])
                if index >= limit:
                    break
                if index not in seen:
                    seen[index] = (now, obj.last_modified.timestamp())
        except Exception as exc:  # noqa: BLE001 - a failed poll is retried; the bench reports coverage
            print(f"poller {bucket}: {exc}", file=sys.stderr, flush=True)
        while low in seen:
            low += 1
        time.sleep(POLL_PAUSE)
    period = (time.monotonic() - first_poll) / polls if polls else 0.0
    out.put({"seen": seen, "announced": dict(announced), "polls": polls, "period": period})


class Poller:
    def __init__(self, ctx, dst: MinioServer, bucket: str, prefix: str, total: int):
        self.started = ctx.Value("i", 0, lock=False)
        self.finish = ctx.Event()
        self.drain_deadline = ctx.Value("d", float("inf"), lock=False)
        self.ready = ctx.Event()
        self.out = ctx.Queue()
        self.proc = ctx.Process(target=poller_main, daemon=True, args=(
            dst.host, DST_USER, DST_PASS, bucket, prefix, total, self.started, self.finish,
            self.drain_deadline, self.ready, self.out))
        self.proc.start()
        if not self.ready.wait(60):
            raise RuntimeError("poller did not start")

    def result(self, drain: float) -> dict:
        self.drain_deadline.value = time.monotonic() + drain
        self.finish.set()
        result = self.out.get(timeout=drain + 120)
        self.proc.join(30)
        return result


# -- the tools ------------------------------------------------------------------------

class Tools:
    """The tools, started once, against the same two servers. Each has its own bucket
    pair (src-<name> -> dst-<name>); replicator builds each their own HTTP port."""

    def __init__(self, args, src: MinioServer, dst: MinioServer, workdir: Path, replicator_dirs: dict[str, Path]):
        self.args = args
        self.src, self.dst = src, dst
        self.workdir = workdir
        self.names = ["replicator", "mc", *(n for n in replicator_dirs if n != "replicator")]
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.cwd: dict[str, Path] = {"mc": workdir}
        self.ports: dict[str, int] = {}
        self.env: dict[str, dict] = {}
        self.argv: dict[str, list[str]] = {}
        base = {k: v for k, v in os.environ.items() if not k.startswith(("S3_SYNC_", "MINIO_", "MC_", "AWS_"))}
        for name, directory in replicator_dirs.items():
            self.ports[name] = free_port()
            self.cwd[name] = directory
            self.argv[name] = [sys.executable, "-m", "replicator", "run"]
            self.env[name] = {
                **base,
                "S3_SYNC_ENABLED": "true",
                "S3_SYNC_ENDPOINT": dst.endpoint, "S3_SYNC_ACCESS_KEY": DST_USER, "S3_SYNC_SECRET_KEY": DST_PASS,
                "S3_SYNC_BUCKET": f"dst-{name}", "S3_SYNC_REGION": "us-east-1",
                "MINIO_ENDPOINT": src.endpoint, "MINIO_ACCESS_KEY": SRC_USER, "MINIO_SECRET_KEY": SRC_PASS,
                "MINIO_BUCKET": f"src-{name}",
                "S3_SYNC_HTTP_HOST": HOST, "S3_SYNC_HTTP_PORT": str(self.ports[name]),
                "S3_SYNC_INTERVAL": "3600", "S3_SYNC_LOG_LEVEL": args.replicator_log_level, "NO_COLOR": "1",
                **dict(kv.split("=", 1) for kv in args.replicator_env),
                **{kv.split("=", 1)[0]: kv.split("=", 1)[1] for n, kv in args.variant_env if n == name},
            }
        self.env["mc"] = {
            **base,
            "MC_CONFIG_DIR": str(workdir / "mc-config"),
            "MC_HOST_src": f"http://{SRC_USER}:{SRC_PASS}@{src.host}",
            "MC_HOST_dst": f"http://{DST_USER}:{DST_PASS}@{dst.host}",
        }
        self.argv["mc"] = [find_tool("mc"), "mirror", "--watch", "src/src-mc", "dst/dst-mc"]

    @staticmethod
    def shown() -> dict[str, str]:
        return {
            "replicator": ("python -m replicator run  (S3_SYNC_ENABLED=true, S3_SYNC_INTERVAL=3600, "
                           "S3_SYNC_LOG_LEVEL=warning, S3_SYNC_HTTP_HOST=127.0.0.1, other settings default: "
                           "16 workers)"),
            "mc": "mc mirror --watch src/src-mc dst/dst-mc  (defaults; aliases from MC_HOST_*, temp MC_CONFIG_DIR)",
        }

    def start(self) -> None:
        for tool in self.names:
            self.logs[tool] = self.workdir / f"{tool}.log"
            with open(self.logs[tool], "wb") as out:
                self.procs[tool] = subprocess.Popen(
                    self.argv[tool], env=self.env[tool], stdout=out, stderr=subprocess.STDOUT,
                    cwd=self.cwd[tool], start_new_session=True)
        deadline = time.monotonic() + 120
        for tool in self.ports:
            while self.get(tool, "/readyz")[0] != 200:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{tool} not ready after 120 s: {self.get(tool, '/readyz')}")
                time.sleep(0.2)

    def check_alive(self) -> None:
        for tool, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{tool} exited with {proc.returncode}:\n"
                                   f"{self.logs[tool].read_text(errors='replace')[-3000:]}")

    def get(self, tool: str, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.ports[tool]}{path}", timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError as exc:
            return 0, str(exc).encode()

    def metrics(self, tool: str) -> dict[str, float]:
        """A replicator's /metrics as {series: value} (only the replicator_* series); {} for mc."""
        if tool not in self.ports:
            return {}
        code, body = self.get(tool, "/metrics")
        values: dict[str, float] = {}
        if code != 200:
            return values
        for line in body.decode().splitlines():
            if line.startswith("replicator_"):
                name, _, value = line.rpartition(" ")
                try:
                    values[name] = float(value)
                except ValueError:
                    pass
        return values

    def cpu_seconds(self, tool: str) -> float:
        import psutil

        try:
            proc = psutil.Process(self.procs[tool].pid)
            times = proc.cpu_times()
            return times.user + times.system
        except psutil.Error:
            return float("nan")

    def stop(self) -> None:
        for tool, proc in self.procs.items():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for tool, proc in self.procs.items():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- the benchmark ----------------------------------------------------------------------

class Bench:
    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.results: list[dict] = []
        self.src = self.dst = None
        self.tools: Tools | None = None
        self.ctx = mp.get_context("spawn")  # the poller must not inherit our threads or locks
        self.payload = os.urandom(MiB)
        self.replicator_commit = ""

    def replicator_dirs(self) -> dict[str, Path]:
        dirs = {"replicator": self.export_replicator()}
        for spec in self.args.variant:
            name, _, directory = spec.partition("=")
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]{1,40}", name) or name in TOOLS or not directory:
                raise SystemExit(f"--variant {spec!r}: expected NAME=DIR, NAME in a-z0-9- and not {TOOLS}")
            dirs[name] = Path(directory).resolve()
        return dirs

    def export_replicator(self) -> Path:
        """The package at ``--replicator-rev`` (default HEAD), exported to the work dir, so
        the measurement doesn't pick up someone's half-saved edit. 'worktree' measures the
        working tree."""
        rev = self.args.replicator_rev
        if rev == "worktree":
            self.replicator_commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                                    capture_output=True, text=True).stdout.strip() + " (worktree)"
            return REPO
        self.replicator_commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev],
                                                capture_output=True, text=True, check=True).stdout.strip()
        target = self.workdir / "replicator-src"
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", self.replicator_commit, "replicator"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        return target

    def start(self) -> None:
        replicator_dirs = self.replicator_dirs()
        self.src = MinioServer("bench-events-src", SRC_USER, SRC_PASS, workdir=str(self.workdir / "src")).start()
        self.dst = MinioServer("bench-events-dst", DST_USER, DST_PASS, workdir=str(self.workdir / "dst")).start()
        self.sc = Minio(self.src.host, SRC_USER, SRC_PASS, secure=False)  # buckets, and one listing per phase
        # The uploads go through replicator's own raw PUT (a fifth of minio-py's CPU per
        # PUT): at 200 objects/s the uploader shares the 2 cores with both servers and
        # the tool measured, and every millisecond it burns is taken from all of them.
        self.uploads = HttpClient(self.src.endpoint, connect_timeout=10, read_timeout=60, maxsize=UPLOAD_THREADS)
        self.upload_credentials = Credentials(SRC_USER, SRC_PASS)
        self.dc = Minio(self.dst.host, DST_USER, DST_PASS, secure=False)
        log(f"source {self.src.endpoint}, destination {self.dst.endpoint}, work dir {self.workdir}")
        self.tools = Tools(self.args, self.src, self.dst, self.workdir, replicator_dirs)
        for tool in self.tools.names:
            self.sc.make_bucket(f"src-{tool}")
            self.dc.make_bucket(f"dst-{tool}")
        self.tools.start()
        log("replicator /readyz: 200; waiting for mc to watch")
        self.wait_mc_watching()
        # Unmeasured, at a measured rate, long enough for the connection pools, the
        # servers' caches and background start-up work to settle: a 2 s warm-up left
        # stalls of 100-175 ms in whichever tool came first (its server-clock p99 88 ms,
        # the same build's 18 ms two phases later).
        rate = min(50, max(self.args.rates))
        log(f"warming up every tool: {self.args.warmup:g} s at {rate}/s each, not measured")
        for tool in self.tools.names:
            self.phase(tool, rate=rate, seconds=self.args.warmup, round_=0, label="warmup", record=False)

    def wait_mc_watching(self, timeout: float = 120.0) -> None:
        """mc gives no readiness signal: upload probes until one arrives. Probes live
        outside the measured prefixes."""
        deadline = time.monotonic() + timeout
        n = 0
        while time.monotonic() < deadline:
            assert self.tools is not None
            self.tools.check_alive()
            self.upload("src-mc", f"probe/{n:04d}", 16)
            n += 1
            for _ in range(10):
                if any(True for _ in self.dc.list_objects("dst-mc", prefix="probe/")):
                    return
                time.sleep(0.1)
        raise RuntimeError(f"mc mirror --watch copied no probe within {timeout:g}s; see {self.tools.logs['mc']}")

    def stop(self) -> None:
        if self.tools is not None:
            self.tools.stop()
        for server in (self.src, self.dst):
            if server is not None:
                server.close()

    def upload(self, bucket: str, key: str, size: int) -> float:
        response = signed_request(self.uploads, "PUT", object_path(f"/{bucket}", key), region="us-east-1",
                                  credentials=self.upload_credentials, body=self.payload[:size])
        response.read()
        if response.status != 200:
            raise RuntimeError(f"PUT {key}: HTTP {response.status}")
        return time.monotonic()

    def phase(self, tool: str, *, rate: int, seconds: float, round_: int, label: str = "",
              record: bool = True) -> dict | None:
        assert self.tools is not None
        self.tools.check_alive()
        total = max(1, int(round(rate * seconds)))
        prefix = f"{label or 'r'}{rate:03d}-{round_}/"
        object_sizes = sizes(total, seed=rate * 1000 + round_)
        bucket = f"src-{tool}"
        poller = Poller(self.ctx, self.dst, f"dst-{tool}", prefix, total)
        uploaded = [float("nan")] * total
        lateness: list[float] = []
        errors: list[str] = []
        metrics_before = self.tools.metrics(tool)
        cpu_before = {t: self.tools.cpu_seconds(t) for t in self.tools.names}

        def one(index: int, scheduled: float) -> None:
            lateness.append(time.monotonic() - scheduled)
            try:
                uploaded[index] = self.upload(bucket, key_name(prefix, index), object_sizes[index])
            except Exception as exc:  # noqa: BLE001 - reported; the object then counts as missing
                errors.append(f"{key_name(prefix, index)}: {exc}")

        t0 = time.monotonic() + 0.2
        with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="upload") as pool:
            for index in range(total):
                scheduled = t0 + index / rate
                pause = scheduled - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                poller.started.value = index + 1  # before the PUT: the poller may look for it now
                pool.submit(one, index, scheduled)
        upload_span = time.monotonic() - t0
        result = poller.result(self.args.drain)
        cpu_after = {t: self.tools.cpu_seconds(t) for t in self.tools.names}
        metrics_after = self.tools.metrics(tool)
        # First seen: announced by the destination, else listed (an event gone missing).
        announced = result["announced"]
        seen = {i: min(t, announced.get(i, t)) for i, (t, _) in result["seen"].items()}
        for i, t in announced.items():
            seen.setdefault(i, t)
        listing_lead = [t - announced[i] for i, (t, _) in result["seen"].items() if i in announced]
        if not record:
            log(f"{tool:<10} warm-up: {len(seen)}/{total} objects arrived")
            if len(seen) < total:
                raise RuntimeError(f"{tool} did not replicate its warm-up objects; see {self.tools.logs[tool]}")
            return None
        latencies = [seen[i] - uploaded[i] for i in range(total) if i in seen and not math.isnan(uploaded[i])]
        # The cross-check on the servers' clock: destination Last-Modified minus source
        # Last-Modified (both from listings, to the millisecond). Immune to this process
        # being descheduled; it measures from write to write, not from PUT return to
        # visibility, so it reads a little lower.
        source_mtime = {int(o.object_name[len(prefix):]): o.last_modified.timestamp()
                        for o in self.sc.list_objects(bucket, prefix=prefix, recursive=True)}
        server = [result["seen"][i][1] - source_mtime[i] for i in range(total)
                  if i in result["seen"] and i in source_mtime]
        phase = {
            "tool": tool, "rate": rate, "round": round_, "objects": total, "seconds": seconds,
            "bytes": sum(object_sizes), "upload_span": upload_span,
            "achieved_rate": total / upload_span if upload_span else 0.0,
            "upload_late_p99": percentile(lateness, 99), "upload_errors": errors[:10],
            "missing": total - len(latencies), "polls": result["polls"], "poll_period": result["period"],
            "announced": sum(1 for i in seen if i in announced),
            "listed_after_announced_p50": statistics.median(listing_lead) if listing_lead else float("nan"),
            "latencies": latencies, "server_latencies": server,
            "early": sum(1 for x in latencies if x < 0),
            "cpu": {t: cpu_after[t] - cpu_before[t] for t in self.tools.names},
            "metrics": {k: metrics_after.get(k, 0) - metrics_before.get(k, 0)
                        for k in metrics_after if _interesting(k)},
        }
        stats = {f"p{p}": percentile(latencies, p) for p in PERCENTILES}
        phase.update(stats)
        phase.update({f"server_p{p}": percentile(server, p) for p in PERCENTILES})
        log(f"{tool:<10} {rate:>3}/s round {round_}: n={len(latencies)}/{total} "
            + " ".join(f"p{p}={stats[f'p{p}'] * 1000:.0f}ms" for p in PERCENTILES)
            + f" max={max(latencies, default=float('nan')) * 1000:.0f}ms, achieved {phase['achieved_rate']:.1f}/s, "
            f"announced {phase['announced']}/{total} (listed {phase['listed_after_announced_p50'] * 1000:.1f}ms later), "
            f"poll every {result['period'] * 1000:.1f}ms, cpu {phase['cpu'][tool]:.1f}s; "
            f"server clock p50={phase['server_p50'] * 1000:.0f}ms p99={phase['server_p99'] * 1000:.0f}ms")
        return phase

    def run(self) -> None:
        assert self.tools is not None
        names = self.tools.names
        for round_ in range(1, self.args.rounds + 1):
            for n, rate in enumerate(self.args.rates):
                # Rotate the order, so a slow spell on this shared machine doesn't always hit one tool.
                shift = (round_ - 1 + n) % len(names)
                order = names[shift:] + names[:shift]
                for tool in order:
                    self.results.append(self.phase(tool, rate=rate, seconds=self.args.seconds, round_=round_))
                    time.sleep(self.args.settle)


def _interesting(series: str) -> bool:
    return series.startswith((
        "replicator_replication_lag_seconds", "replicator_events_received_total",
        "replicator_objects_copied_total", "replicator_failures_total", "replicator_retries_total",
        "replicator_listener_reconnects_total"))


# -- reporting --------------------------------------------------------------------------

def summarize(results: list[dict]) -> dict:
    """Per (rate, tool): every round's latencies pooled, plus each round's p99 (noise)."""
    out: dict = {}
    for r in results:
        cell = out.setdefault(r["rate"], {}).setdefault(r["tool"], {
            "latencies": [], "server_latencies": [], "round_p99": [], "missing": 0, "objects": 0, "cpu": 0.0,
            "bytes": 0, "early": 0,
            "achieved": [], "poll_period": [], "announced": 0, "listed_after": [], "metrics": {}})
        cell["latencies"] += r["latencies"]
        cell["server_latencies"] += r["server_latencies"]
        cell["early"] += r["early"]
        cell["round_p99"].append(r["p99"])
        cell["missing"] += r["missing"]
        cell["objects"] += r["objects"]
        cell["bytes"] += r["bytes"]
        cell["cpu"] += r["cpu"][r["tool"]]
        cell["achieved"].append(r["achieved_rate"])
        cell["poll_period"].append(r["poll_period"])
        cell["announced"] += r.get("announced", 0)
        cell["listed_after"].append(r.get("listed_after_announced_p50", float("nan")))
        for k, v in r["metrics"].items():
            cell["metrics"][k] = cell["metrics"].get(k, 0) + v
    for rate in out.values():
        for cell in rate.values():
            lat = cell["latencies"]
            for p in PERCENTILES:
                cell[f"p{p}"] = percentile(lat, p)
                cell[f"server_p{p}"] = percentile(cell["server_latencies"], p)
            cell["max"] = max(lat, default=float("nan"))
            cell["mean"] = statistics.fmean(lat) if lat else float("nan")
    return out


def names_in(summary: dict) -> list[str]:
    found = {tool for cells in summary.values() for tool in cells}
    return [t for t in TOOLS if t in found] + sorted(found - set(TOOLS))


def ms(x: float) -> str:
    return "–" if x != x else f"{x * 1000:.0f}"


def lag_from_metrics(metrics: dict) -> str:
    """replicator's own lag histogram (event time -> write), as 'mean, share <= 0.5 s'."""
    count = metrics.get("replicator_replication_lag_seconds_count", 0)
    if not count:
        return "–"
    mean = metrics.get("replicator_replication_lag_seconds_sum", 0) / count
    within = metrics.get('replicator_replication_lag_seconds_bucket{le="0.5"}', 0) / count
    return f"{mean * 1000:.0f} ms mean, {within:.1%} ≤ 0.5 s"


def markdown(summary: dict, meta: dict) -> str:
    lines = [
        "Latency from the source PUT's return to the object's first appearance at the destination (its "
        "notification that the object was written; a listing, should that not come), in milliseconds; "
        "every round pooled. \"rounds p99\" lists each round's own p99 (the spread is the "
        "noise). CPU = the tool's user+system time over its phases, per object copied. \"achieved\" is "
        "the upload rate the uploader really held.\n",
        "| rate (obj/s) | tool | objects | p50 | p95 | p99 | max | rounds p99 | missing | CPU ms/object | "
        "achieved (obj/s) |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    names = names_in(summary)
    for rate in sorted(summary):
        for tool in names:
            c = summary[rate].get(tool)
            if not c:
                continue
            lines.append(
                f"| {rate} | {tool} | {c['objects']} | {ms(c['p50'])} | {ms(c['p95'])} | **{ms(c['p99'])}** | "
                f"{ms(c['max'])} | {', '.join(ms(x) for x in c['round_p99'])} | {c['missing']} | "
                f"{c['cpu'] * 1000 / max(1, c['objects']):.1f} | {statistics.fmean(c['achieved']):.1f} |")
    lines.append("")
    lines.append("Side by side (p50 / p95 / p99, ms):\n")
    lines.append("| rate (obj/s) | replicator | mc mirror --watch | replicator p99 / mc p99 |")
    lines.append("|---:|---|---|---:|")
    for rate in sorted(summary):
        r, m = summary[rate].get("replicator"), summary[rate].get("mc")
        if not r or not m:
            continue
        ratio = r["p99"] / m["p99"] if m["p99"] else float("nan")
        lines.append(f"| {rate} | {ms(r['p50'])} / {ms(r['p95'])} / {ms(r['p99'])} | "
                     f"{ms(m['p50'])} / {ms(m['p95'])} / {ms(m['p99'])} | {ratio:.2f} |")
    lines.append("")
    lines.append("Cross-check on the servers' clock: destination Last-Modified − source Last-Modified, from "
                 "listings (ms precision), p50 / p95 / p99 in ms. It doesn't depend on when this benchmark's "
                 "own threads got the CPU. \"early\" counts objects the poller saw before the uploader had "
                 "recorded its PUT's return: that thread was descheduled (negative latency), a measure of the "
                 "noise in the first table.\n")
    lines.append("| rate (obj/s) | " + " | ".join(names) + " | early (" + " / ".join(names) + ") |")
    lines.append("|---:|" + "---|" * len(names) + "---|")
    for rate in sorted(summary):
        cells = [summary[rate].get(t) for t in names]
        lines.append(f"| {rate} | " + " | ".join(
            f"{ms(c['server_p50'])} / {ms(c['server_p95'])} / {ms(c['server_p99'])}" if c else "–" for c in cells)
            + " | " + " / ".join(str(c["early"]) if c else "–" for c in cells) + " |")
    lines.append("")
    lines.append("replicator's own view, from its /metrics (replication-lag histogram: source event time → "
                 "destination write; events received):\n")
    lines.append("| rate (obj/s) | build | lag (its histogram) | events received | copied by events | failures |")
    lines.append("|---:|---|---|---:|---:|---:|")
    for rate in sorted(summary):
        for tool in names:
            c = summary[rate].get(tool)
            if not c or not c["metrics"]:
                continue
            mt = c["metrics"]
            events = sum(v for k, v in mt.items() if k.startswith("replicator_events_received_total"))
            copied = mt.get('replicator_objects_copied_total{trigger="event"}', 0)
            failures = sum(v for k, v in mt.items() if k.startswith("replicator_failures_total"))
            lines.append(f"| {rate} | {tool} | {lag_from_metrics(mt)} | {events:.0f} | {copied:.0f} | "
                         f"{failures:.0f} |")
    lines.append("")
    period = [p for rate in summary.values() for c in rate.values() for p in c["poll_period"]]
    announced = sum(c["announced"] for rate in summary.values() for c in rate.values())
    seen = sum(len(c["latencies"]) for rate in summary.values() for c in rate.values())
    later = [x for rate in summary.values() for c in rate.values() for x in c["listed_after"] if x == x]
    lines.append(f"Objects first seen through the destination's notification: {announced} of {seen}. A listing "
                 f"showed them a median {statistics.median(later) * 1000:.1f} ms later (rounds' medians; "
                 f"listings every {statistics.median(period) * 1000:.1f} ms, median): the resolution that "
                 "notifications add.\n" if later else
                 f"Poll period (the measurement's resolution): median {statistics.median(period) * 1000:.1f} ms, "
                 f"max {max(period) * 1000:.1f} ms.\n")
    return "\n".join(lines)


def targets(summary: dict) -> list[tuple[str, str, bool]]:
    rows = []
    at50 = summary.get(50, {}).get("replicator")
    if at50:
        rows.append(("replicator p99 ≤ 500 ms at 50 objects/s", f"{ms(at50['p99'])} ms", at50["p99"] <= 0.5))
    for rate in sorted(summary):
        r, m = summary[rate].get("replicator"), summary[rate].get("mc")
        if r and m:
            rows.append((f"replicator p99 < mc mirror p99 at {rate} objects/s",
                         f"{ms(r['p99'])} vs {ms(m['p99'])} ms", r["p99"] < m["p99"]))
    return rows


def plot(summary: dict, path: Path, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = names_in(summary)
    palette = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    colors = {tool: palette[i % len(palette)] for i, tool in enumerate(names)}
    rates = sorted(summary)
    fig, axes = plt.subplots(1, 1 + len(rates), figsize=(5 + 4.2 * len(rates), 4.6))
    ax = axes[0]
    width = 0.8 / len(names)
    for t, tool in enumerate(names):
        # A bar for p99, markers for p95 and p50 on it.
        xs = [i + (t - (len(names) - 1) / 2) * width for i in range(len(rates))]
        value = {p: [summary[r][tool][f"p{p}"] * 1000 if tool in summary[r] else float("nan") for r in rates]
                 for p in PERCENTILES}
        ax.bar(xs, value[99], width * 0.92, color=colors[tool], label=f"{tool} p99", zorder=2)
        ax.scatter(xs, value[95], marker="v", color="black", s=18, zorder=3, label="p95" if t == 0 else None)
        ax.scatter(xs, value[50], marker="o", color="white", edgecolors="black", s=18, zorder=3,
                   label="p50" if t == 0 else None)
    ax.axhline(500, color="red", linestyle=":", linewidth=1, label="target p99 at 50/s")
    ax.set_xticks(range(len(rates)), [f"{r}/s" for r in rates])
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (log)")
    ax.set_title("p50 / p95 / p99 by upload rate")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", which="both", alpha=0.3)
    for ax, rate in zip(axes[1:], rates):
        for tool in names:
            # Clipped at 1 ms: a few "early" objects have a negative latency (see the doc).
            lat = sorted(max(1.0, x * 1000) for x in summary[rate].get(tool, {}).get("latencies", []))
            if lat:
                ax.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], color=colors[tool], label=tool)
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms (log)")
        ax.set_ylabel("fraction of objects")
        ax.set_title(f"CDF at {rate} objects/s")
        ax.axhline(0.99, color="grey", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"Upload-to-destination latency: replicator sidecar vs mc mirror --watch "
                 f"({meta['nproc']} cores, {meta['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine_info() -> dict:
    return {
        **benchlib.machine_info(),
        "urllib3": version("urllib3"),
        "loadavg_start": os.getloadavg(),
    }


def report(results: list[dict], meta: dict, args) -> None:
    summary = summarize(results)
    fragment = "\n".join([
        f"Run: {meta['date']}, {meta['total_seconds']:.0f} s; `python scripts/bench_events.py "
        f"{' '.join(meta['argv'])}`. Machine: {meta['nproc']} cores ({meta['cpu']}), kernel {meta['kernel']}, "
        f"Python {meta['python']}; load average at start {meta['loadavg_start'][0]:.2f}, at end "
        f"{meta['loadavg_end'][0]:.2f}. replicator at `{meta['replicator_commit']}`; minio `{meta['minio']}`; "
        f"mc `{meta['mc']}`; minio-py {meta['minio_py']}, boto3 {meta['boto3']}, urllib3 {meta['urllib3']}. "
        f"{meta['rounds']} round(s) of {meta['seconds']:g} s per rate and tool.\n",
        "```\n$ free -h\n" + meta["free_h"] + "\n```\n",
        "Commands:\n",
        "\n".join(f"- {tool}: `{cmd}`" for tool, cmd in meta["commands"].items()) + "\n",
        markdown(summary, meta),
        "Targets:\n",
        benchlib.targets_markdown(targets(summary), ("target", "measured", "met")),
    ])
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, default=str))
    plot(summary, Path(args.plot), meta)
    fragment_file = out.with_suffix(".md")
    fragment_file.write_text(fragment)
    print("\n" + fragment)
    log(f"results: {out}; fragment: {fragment_file}; plot: {args.plot}")
    if args.update_doc:
        if benchlib.update_doc(Path(args.update_doc), fragment, MARK_BEGIN, MARK_END):
            log(f"updated the generated section of {args.update_doc}")
        else:
            log(f"{args.update_doc} has no generated-section markers; left alone")


def variant_shown(spec: str, settings: list[list[str]]) -> str:
    name, _, directory = spec.partition("=")
    extra = " ".join(kv for n, kv in settings if n == name)
    return f"python -m replicator run, from {directory} ({extra or 'same settings'})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", type=int, nargs="+", default=None, help="objects/s (default 10 50 200)")
    parser.add_argument("--seconds", type=float, default=None, help="upload time per phase (default 5)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every rate and tool (default 10)")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to wait for stragglers (default 60)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="unmeasured seconds per tool before the first phase (default 10; 2 with --quick)")
    parser.add_argument("--settle", type=float, default=2.0, help="pause between phases (default 2 s)")
    parser.add_argument("--quick", action="store_true", help="10 and 50 objects/s, 8 s, 1 round: validate the script")
    parser.add_argument("--replicator-rev", default="HEAD", help="git revision to measure (default HEAD) or 'worktree'")
    parser.add_argument("--replicator-log-level", default="warning", help="S3_SYNC_LOG_LEVEL (default warning)")
    parser.add_argument("--replicator-env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra settings for the sidecar, e.g. S3_SYNC_WORKERS=16")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                        help="also measure the replicator package in DIR (a directory holding replicator/), "
                             "side by side: for trying a change to the event path")
    parser.add_argument("--variant-env", nargs=2, action="append", default=[], metavar=("NAME", "VAR=VALUE"),
                        help="a setting for one replicator build only, e.g. fastpath S3_SYNC_WORKERS=16")
    parser.add_argument("--workdir", help="server data and tool logs (default: a new temp dir, removed at the end); "
                        "under /dev/shm the servers keep their data in RAM, which takes disk stalls out of the "
                        "comparison (about 4 GB per round on each side)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--results", help="JSON results, every latency (default /tmp/benchmarks-events.json)")
    parser.add_argument("--plot", help="PNG plot (default docs/benchmarks-events.png; /tmp/... with --quick)")
    parser.add_argument("--update-doc", help="replace the generated section of this Markdown file (between markers)")
    args = parser.parse_args()
    args.rates = args.rates or ([10, 50] if args.quick else [10, 50, 200])
    # Short phases, many rounds: a slow spell of the machine (tens of seconds) then falls
    # on both tools' phases in turn, not on one tool's whole round (docs, run 11).
    args.seconds = args.seconds or (8.0 if args.quick else 5.0)
    args.rounds = args.rounds or (1 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if args.quick else 10.0)
    default_dir = Path("/tmp") if args.quick else REPO / "docs"
    args.results = args.results or ("/tmp/bench-events-quick.json" if args.quick else "/tmp/benchmarks-events.json")
    args.plot = args.plot or str(default_dir / ("bench-events-quick.png" if args.quick else "benchmarks-events.png"))

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-events-"))
    workdir.mkdir(parents=True, exist_ok=True)
    meta = machine_info()
    meta.update(rates=args.rates, seconds=args.seconds, rounds=args.rounds, drain=args.drain,
                commands={**Tools.shown(), **{v.partition("=")[0]: variant_shown(v, args.variant_env)
                                              for v in args.variant}},
                argv=sys.argv[1:])
    log(f"rates {args.rates} objects/s, {args.seconds:g} s each, {args.rounds} round(s); {meta['nproc']} cores, "
        f"load {os.getloadavg()[0]:.2f}")

    def on_term(*_) -> None:  # a SIGTERM must still stop the servers and tools
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args, workdir)
    started = time.monotonic()
    ok = False
    try:
        bench.start()
        bench.run()
        ok = True
    finally:
        bench.stop()
        meta["replicator_commit"] = bench.replicator_commit
        meta["total_seconds"] = time.monotonic() - started
        meta["loadavg_end"] = os.getloadavg()
        if ok:
            report(bench.results, meta, args)
        if args.keep or not ok:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
