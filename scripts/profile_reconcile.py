#!/usr/bin/env python3
"""Where replicator's reconcile time goes: evidence for performance work.

    python scripts/profile_reconcile.py noop  --objects 100000   # in-sync pass
    python scripts/profile_reconcile.py copy  --objects 2000     # initial copy, small objects
    python scripts/profile_reconcile.py large --mib 256          # initial copy, one object

Starts its own two MinIO servers on 127.0.0.1 (tests/servers.py), fills the source the
way scripts/bench_reconcile.py does, then:

1. times the pieces of a reconcile in isolation, without a profiler (``noop`` only):
   interpreter start-up and imports, the source listing through minio-py, the
   destination listing through boto3, the merge-join (diff.plan) over in-memory
   listings, and the prefetch thread hand-off;
   For ``copy``, the same for one object's GET (minio-py), PUT (boto3) and retry
   wrapper (tenacity), single-threaded, as CPU per object;
2. runs ``replicator reconcile`` in this process under cProfile, with one profiler
   per thread (cProfile only sees the thread that enabled it, and the reconcile's work
   happens on listing and copy threads), each timing its own thread's CPU
   (``time.thread_time``: a thread waiting for the GIL or the network is not
   charged), and prints the merged top functions by own and by cumulative CPU.

cProfile inflates call-heavy code, so read its output as shares, and the isolated
timings of step 1 as the absolute figures.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from minio import Minio  # noqa: E402

import bench_reconcile as bench  # noqa: E402
from tests.servers import MinioServer  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Timer:
    def __init__(self, label: str):
        self.label = label

    def __enter__(self):
        self.wall, self.cpu = time.monotonic(), cpu()
        return self

    def __exit__(self, *exc):
        wall, used = time.monotonic() - self.wall, cpu() - self.cpu
        print(f"  {self.label:<58} wall {wall:7.2f}s  cpu {used:7.2f}s")


def env_for(src: MinioServer, dst: MinioServer, src_bucket: str, dst_bucket: str) -> dict[str, str]:
    return {
        "MINIO_ENDPOINT": src.endpoint, "MINIO_ACCESS_KEY": bench.SRC_USER, "MINIO_SECRET_KEY": bench.SRC_PASS,
        "MINIO_BUCKET": src_bucket,
        "S3_SYNC_ENDPOINT": dst.endpoint, "S3_SYNC_ACCESS_KEY": bench.DST_USER, "S3_SYNC_SECRET_KEY": bench.DST_PASS,
        "S3_SYNC_BUCKET": dst_bucket, "S3_SYNC_REGION": "us-east-1", "NO_COLOR": "1",
    }


def pieces(src: MinioServer, dst: MinioServer, env: dict[str, str]) -> None:
    """Each part of a no-op reconcile, alone, without a profiler."""
    from replicator import config, diff
    from replicator.pool import prefetch
    from replicator.stores.destination import S3Destination
    from replicator.stores.source import MinioSource

    print("Pieces of a no-op, each alone (no profiler):")
    for label, code in (("python -c pass", "pass"),
                        ("python: import replicator.app (boto3, minio, ...)", "import replicator.app"),
                        ("python -m replicator --version", None)):
        argv = [sys.executable, "-m", "replicator", "--version"] if code is None else [sys.executable, "-c", code]
        t = time.monotonic()
        for _ in range(3):
            subprocess.run(argv, check=True, capture_output=True, cwd=REPO)
        print(f"  {label:<58} wall {(time.monotonic() - t) / 3:7.2f}s  (mean of 3)")
    settings = config.load(env)
    source, dest = MinioSource(settings), S3Destination(settings)
    with Timer("source listing, minio-py list_objects (MinioSource.list_from)"):
        src_items = list(source.list_from(None))
    with Timer("destination listing, boto3 list_objects_v2 (S3Destination.list_from)"):
        dst_items = list(dest.list_from(None))
    with Timer(f"diff.plan over the two in-memory listings ({len(src_items):,})"):
        for _ in diff.plan(src_items, dst_items):
            pass
    with Timer("prefetch(): the listing-thread hand-off alone, one side"):
        for _ in prefetch(iter(src_items)):
            pass
    with Timer("both listings in parallel threads + diff (what reconcile does)"):
        for _ in diff.plan(prefetch(source.list_from(None)), prefetch(dest.list_from(None))):
            pass
    import xml.etree.ElementTree as ET

    raw = Minio(src.host, bench.SRC_USER, bench.SRC_PASS, secure=False)
    with Timer("for scale: the raw ListObjectsV2 pages only (minio-py, no parsing)"):
        token, pages = None, 0
        while True:
            query = {"list-type": "2", "max-keys": "1000", "prefix": ""}
            if token:
                query["continuation-token"] = token
            # minio-py's own request path, without its parsing: what the profile compares with.
            response = raw._url_open("GET", "us-east-1", bucket_name=settings.source_bucket,  # noqa: SLF001
                                     query_params=query)
            pages += 1
            root = ET.fromstring(response.data)
            ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
            token = root.findtext(f"{ns}NextContinuationToken")
            if root.findtext(f"{ns}IsTruncated") != "true" or not token:
                break
    print(f"  ({pages} pages)")


def pieces_copy(src: MinioServer, dst: MinioServer, env: dict[str, str], count: int = 500) -> None:
    """One small object's copy, in parts, single-threaded: CPU per object."""
    from replicator import config
    from replicator.retry import RetryPolicy
    from replicator.stores.destination import S3Destination
    from replicator.stores.source import MinioSource

    Minio(dst.host, bench.DST_USER, bench.DST_PASS, secure=False).make_bucket("scratch")
    settings = config.load({**env, "S3_SYNC_BUCKET": "scratch"})
    source, dest = MinioSource(settings), S3Destination(settings)
    keys = [bench.small_key(i) for i in range(count)]
    bodies = {}
    print(f"Pieces of a small-object copy, single-threaded, {count} objects (CPU per object):")

    def per_object(label: str, fn) -> None:
        t, c = time.monotonic(), time.thread_time()
        for key in keys:
            fn(key)
        wall, used = time.monotonic() - t, time.thread_time() - c
        print(f"  {label:<58} {used / count * 1e3:6.2f} ms cpu  {wall / count * 1e3:6.2f} ms wall")

    def get(key):
        with source.open(key) as (info, body):
            bodies[key] = (info, body.read())

    per_object("GET through MinioSource.open (signed raw request)", get)
    per_object("PUT through S3Destination.put (signed raw request, Content-MD5)",
               lambda k: dest.put(k, bodies[k][1], bodies[k][0], None))
    plain = Minio(dst.host, bench.DST_USER, bench.DST_PASS, secure=False)
    per_object("for scale: PUT through minio-py put_object",
               lambda k: plain.put_object("scratch", k, io.BytesIO(bodies[k][1]), len(bodies[k][1])))
    policy = RetryPolicy(3, 1.0)
    per_object("RetryPolicy.call(lambda: None) (tenacity)", lambda k: policy.call(lambda: None))


def profiled_reconcile(env: dict[str, str], top: int, dump: str | None) -> None:
    """replicator reconcile in this process; a cProfile per thread, merged."""
    profiles: list[tuple[str, cProfile.Profile]] = []
    lock = threading.Lock()
    original = threading.Thread.run

    def run(self):
        profile = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append((self.name, profile))
        profile.enable()
        try:
            original(self)
        finally:
            profile.disable()

    threading.Thread.run = run
    os.environ.update(env)
    from replicator import cli

    main_profile = cProfile.Profile(time.thread_time)
    started, used = time.monotonic(), cpu()
    main_profile.enable()
    code = cli.main(["reconcile"])
    main_profile.disable()
    print(f"\nreconcile under cProfile: exit {code}, wall {time.monotonic() - started:.2f}s, "
          f"cpu {cpu() - used:.2f}s (profiler overhead included), maxrss "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (this process)")
    threading.Thread.run = original
    stats = pstats.Stats(main_profile)
    by_thread: dict[str, float] = {"MainThread": pstats.Stats(main_profile).total_tt}
    for name, profile in profiles:
        try:
            stats.add(profile)
            group = name.rstrip("0123456789_").rstrip("-_") or name
            by_thread[group] = by_thread.get(group, 0.0) + pstats.Stats(profile).total_tt
        except TypeError:  # a thread that never ran any Python function
            pass
    print("Profiled time by thread group (s): " +
          ", ".join(f"{k}={v:.2f}" for k, v in sorted(by_thread.items(), key=lambda kv: -kv[1])))
    if dump:
        stats.dump_stats(dump)
    stats.strip_dirs()
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        stats.stream = out
        stats.sort_stats(order).print_stats(top)
        text = out.getvalue()
        print(f"\n=== top {top} by {order} (all threads merged) ===")
        print(text[text.find("   ncalls"):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=("noop", "copy", "large"))
    parser.add_argument("--objects", type=int, default=None, help="noop: 100000; copy: 2000")
    parser.add_argument("--mib", type=int, default=256, help="large: object size in MiB")
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--dump", help="write the merged pstats here")
    args = parser.parse_args()
    n = args.objects or (100_000 if args.scenario == "noop" else 2_000)

    work = Path(tempfile.mkdtemp(prefix="profile-reconcile-"))
    src = MinioServer("prof-src", bench.SRC_USER, bench.SRC_PASS, workdir=str(work / "src")).start()
    dst = MinioServer("prof-dst", bench.DST_USER, bench.DST_PASS, workdir=str(work / "dst")).start()
    try:
        sc = Minio(src.host, bench.SRC_USER, bench.SRC_PASS, secure=False)
        dc = Minio(dst.host, bench.DST_USER, bench.DST_PASS, secure=False)
        sc.make_bucket("src")
        dc.make_bucket("dst")
        t = time.monotonic()
        if args.scenario == "large":
            size = args.mib * bench.MiB
            sc.put_object("src", "large.bin", bench.RandomStream(size, seed=3), size, part_size=16 * bench.MiB)
        else:
            bench.populate_small(sc, "src", n, seed=1, workdir=work)
            if args.scenario == "noop":  # the destination: same objects, same ETags
                bench.populate_small(dc, "dst", n, seed=1, workdir=work)
        print(f"setup: {time.monotonic() - t:.1f}s ({args.scenario}, "
              f"{f'{args.mib} MiB' if args.scenario == 'large' else f'{n:,} objects'})")
        env = env_for(src, dst, "src", "dst")
        if args.scenario == "noop":
            pieces(src, dst, env)
        elif args.scenario == "copy":
            pieces_copy(src, dst, env)
        profiled_reconcile(env, args.top, args.dump)
    finally:
        src.close()
        dst.close()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
