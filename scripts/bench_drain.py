#!/usr/bin/env python3
"""Drain capacity of the event path: how many objects per second each tool replicates
while uploads keep arriving as fast as they can.

    python scripts/bench_drain.py --objects 3000 --rounds 2
    git archive HEAD replicator | tar -x -C /tmp/w16
    python scripts/bench_drain.py --variant w16=/tmp/w16 --variant-env w16 S3_SYNC_WORKERS=16

The latency benchmark (bench_events.py) paces uploads at a fixed rate; near the
machine's limit its p99 says more about what else had the CPU than about the tools.
This one asks the other question. It sets up exactly what bench_events.py sets up, with
its code: two MinIO servers on 127.0.0.1, ``python -m replicator run`` exported from
``--replicator-rev`` (default HEAD) and ``mc mirror --watch``, each watching a source
bucket of its own, both ready and warmed up. Then, per round and tool (the order
alternating), it uploads N objects with bench_events' uploader from 16 threads at once
(sizes log-uniform in [1 KiB, 1 MiB], one sequence per round shared by every tool), and
times from the first upload until a listing of the destination shows all N (listed every
``--poll`` seconds: the resolution). objects/s = N / that time. The upload rate is
printed too: a drain rate well below it means the tool, not the uploader, was the limit.
Nothing is written to the docs; docs/benchmarks-events.md quotes the printed table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_events import Bench, log, sizes  # noqa: E402

UPLOAD_THREADS = 16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=3000, help="objects per tool and round (default 3000)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between destination listings (default 0.25)")
    parser.add_argument("--timeout", type=float, default=300, help="give up on a tool after this many seconds")
    parser.add_argument("--replicator-rev", default="HEAD", help="git revision to measure (default HEAD) or 'worktree'")
    parser.add_argument("--replicator-env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra settings for every replicator build")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                        help="also measure the replicator package in DIR, as in bench_events.py")
    parser.add_argument("--variant-env", nargs=2, action="append", default=[], metavar=("NAME", "VAR=VALUE"),
                        help="a setting for one replicator build only, e.g. w16 S3_SYNC_WORKERS=16")
    parser.add_argument("--workdir", help="server data and tool logs (default: a new temp dir, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()
    # What bench_events' Bench reads besides the options above: its warm-up phase (2 s
    # at 10/s: a drain round is long enough not to need bench_events' longer one).
    args.drain, args.replicator_log_level, args.rates, args.warmup = 60.0, "warning", [10], 2.0

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-drain-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, workdir)
    results: dict[str, list[tuple[float, float]]] = {}
    try:
        bench.start()
        assert bench.tools is not None
        names = list(bench.tools.names)
        results = {name: [] for name in names}
        log(f"replicator at {bench.replicator_commit}; {args.objects} objects per tool and round")
        for round_ in range(args.rounds):
            object_sizes = sizes(args.objects, seed=round_)
            for name in names if round_ % 2 == 0 else names[::-1]:
                prefix, bucket = f"drain{round_}/", f"src-{name}"
                cpu = bench.tools.cpu_seconds(name)
                started = time.monotonic()
                with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
                    # B023: pool.map's list() has run every call before the loop moves on.
                    list(pool.map(lambda i: bench.upload(bucket, f"{prefix}o{i:06d}", object_sizes[i]),  # noqa: B023
                                  range(args.objects)))
                uploaded = time.monotonic() - started
                while sum(1 for _ in bench.dc.list_objects(f"dst-{name}", prefix=prefix, recursive=True)) \
                        < args.objects:
                    if time.monotonic() - started > args.timeout:
                        raise SystemExit(f"{name}: not all {args.objects} objects arrived in {args.timeout:g} s")
                    time.sleep(args.poll)
                took = time.monotonic() - started
                results[name].append((args.objects / took, args.objects / uploaded))
                log(f"{name:<12} round {round_ + 1}: uploads {args.objects / uploaded:.0f}/s; all at the "
                    f"destination after {took:.1f} s: {args.objects / took:.0f} objects/s; "
                    f"tool CPU {bench.tools.cpu_seconds(name) - cpu:.1f} s")
                time.sleep(2)
    finally:
        bench.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nreplicator at {bench.replicator_commit}, {args.objects} objects per round, "
          f"destination listed every {args.poll:g} s\n")
    print("| tool | objects/s drained, per round | uploads/s meanwhile |\n|---|---|---|")
    for name, rounds in results.items():
        print(f"| {name} | {', '.join(f'{d:.0f}' for d, _ in rounds)} | {', '.join(f'{u:.0f}' for _, u in rounds)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
