"""Command line: subcommands, exit codes, signal and garbage-collector wiring; nothing else.

Exit codes:
  0  the destination is in sync (or, for ``run``, a clean shutdown; for ``sweep``,
     every object compared and every repair made)
  1  the run failed (an endpoint, a listing, a copy or a delete; for ``sweep``, a
     comparison or a repair); for ``verify``, also: the mirror differs
  2  bad configuration or usage; for ``run`` also an S3_SYNC_HTTP_HOST or
     S3_SYNC_HTTP_PORT that can't be bound (not this machine's address, port in use)
  3  a delete guard refused the run's deletions (nothing was deleted)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

from loguru import logger

from . import __version__, config
from .errors import ConfigError, ReplicatorError
from .observability import logging as logsetup
from .retry import Stopped

if TYPE_CHECKING:
    from .app import App

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_GUARD = 0, 1, 2, 3
# verify's drift shares 1 with a failure: either way the mirror is not proven whole,
# and a cron job or a CronJob alerts on anything but 0. The summary line says which.
EXIT_DRIFT = EXIT_FAILED

CONFIGURED = ("Configuration comes from the S3_SYNC_* and MINIO_* environment variables, or from the TOML file "
              "S3_SYNC_CONFIG names; see the README.")

VERIFY_DESCRIPTION = """\
Prove that the destination is a whole mirror of the source, as a reconcile judges it,
and change nothing: no write, no delete, no bucket created, no upload aborted.

Both buckets are listed and compared as a reconcile compares them: sizes, ETags, the
source ETag each copy records (one HEAD where the ETags can't be compared), and
attributes where S3_SYNC_LIST_METADATA=true lists them. Every key that is missing
(only at the source), extra (only at the destination, even where S3_SYNC_DELETE=false
keeps it) or different is printed on stdout, one line each, in key order:

  missing   photos/a.jpg  (1048576 bytes)
  extra     old/b.txt  (12 bytes; kept: S3_SYNC_DELETE=false)
  different report.csv  (size: source 812 bytes, destination 640)

then a summary line in the log (stderr). Keys are printed escaped, as in every output."""

VERIFY_EPILOG = """\
exit codes:
  0  in sync: every key compared, no difference
  1  the mirror differs; or a key or a listing could not be compared, an endpoint
     failed, or the verify was interrupted (the summary line says which)
  2  bad configuration or usage

""" + CONFIGURED


def _exit_codes(*lines: str) -> str:
    return "exit codes:\n" + "\n".join(f"  {line}" for line in lines) + "\n\n" + CONFIGURED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replicator", description="Keep an S3-compatible bucket an exact mirror of a MinIO bucket.",
        epilog=CONFIGURED)
    parser.add_argument("--version", action="version", version=f"replicator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str, description: str, *codes: str) -> argparse.ArgumentParser:
        # Raw: the exit codes stay one per line; so the description is wrapped here.
        return sub.add_parser(name, help=summary, description=textwrap.fill(description, 88),
                              epilog=_exit_codes(*codes), formatter_class=argparse.RawDescriptionHelpFormatter)

    config_error = "2  bad configuration or usage (the message names the variable)"
    command("run", "the sidecar: replicate events as they happen, reconcile every S3_SYNC_INTERVAL",
            "The sidecar. Copies each change MinIO notifies as it happens, reconciles the whole bucket "
            "at start and every S3_SYNC_INTERVAL seconds, and serves /healthz, /readyz, /status and "
            "/metrics. The first SIGTERM or SIGINT finishes the copies in flight (up to "
            "S3_SYNC_SHUTDOWN_TIMEOUT), a second exits at once.",
            "0  stopped cleanly after a signal",
            f"{config_error}, or an S3_SYNC_HTTP_HOST/S3_SYNC_HTTP_PORT that can't be bound",
            "1  an unexpected error")
    rec = command("reconcile", "one full reconciliation, then exit",
                  "One full reconciliation: list both buckets, copy what is missing or different, then "
                  "delete what the source lacks (S3_SYNC_DELETE, behind the delete guards), and exit. "
                  "On a terminal it shows a live progress display.",
                  "0  the destination is in sync",
                  "1  the run failed (an endpoint, a listing, a copy or a delete), or was interrupted",
                  config_error,
                  "3  a delete guard refused the run's deletions (nothing was deleted)")
    _pair_flags(rec)
    rec.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    rec.add_argument("--allow-mass-delete", action="store_true",
                     help="delete even past S3_SYNC_DELETE_MAX_PERCENT or with an empty source, this once")
    rec.add_argument("--no-progress", action="store_true",
                     help="no live progress display on a terminal: log progress lines instead, every "
                          "S3_SYNC_PROGRESS_INTERVAL seconds, as when stdout is not a terminal")
    chk = command("check", "check both endpoints and buckets, then exit",
            "Check that both endpoints answer, the credentials are accepted, both buckets exist and "
            "the destination bucket's region is the one signed for; change nothing.",
            "0  both sides are usable",
            "1  one is not: the message names the side, the endpoint or bucket, and the cause",
            config_error)
    _pair_flags(chk)
    ver = sub.add_parser("verify", help="prove the mirror is whole: print what is missing, extra or different; "
                                        "change nothing", description=VERIFY_DESCRIPTION, epilog=VERIFY_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _pair_flags(ver)
    reading = ver.add_mutually_exclusive_group()
    reading.add_argument("--content", action="store_true",
                         help="also read every object both sides have with the same size, on both sides, and compare "
                              "their bytes (SHA-256, streamed: memory stays bounded)")
    reading.add_argument("--sample", type=_positive, metavar="N",
                         help="read and compare the bytes of N random objects the listings show in sync")
    ver.add_argument("--metrics-file", metavar="PATH",
                     help="after a verify that compared every key, write the replicator_verify_* gauges to PATH in "
                          "Prometheus' text format, atomically (for node_exporter's textfile collector: a .prom file "
                          "in its directory); a failed verify leaves the file as it was")
    swp = command("sweep", "one metadata sweep: compare tags, Content-Type, user metadata, retention and "
                     "legal hold object by object, repair what differs, then exit",
            "One metadata sweep: compare what a listing can't show (tags, Content-Type, user metadata, "
            "retention, legal hold) object by object, at most S3_SYNC_METADATA_SWEEP_RATE objects a "
            "second, repair what differs, and exit.",
            "0  every object compared and every repair made",
            "1  a comparison or a repair failed, or the sweep was interrupted",
            config_error)
    _pair_flags(swp)
    return parser


def _pair_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--mirror", metavar="NAME", action="append",
                         help="only this mirror of S3_SYNC_CONFIG's file (again for more); default: every mirror")
    command.add_argument("--destination", metavar="NAME", action="append",
                         help="only the destinations of this name (again for more); default: every destination")


def _select(pairs: tuple[config.Settings, ...], mirrors: list[str] | None,
            destinations: list[str] | None) -> tuple[config.Settings, ...]:
    """The pairs --mirror and --destination name; ConfigError for a name that matches none."""
    for flag, names, known in (("--mirror", mirrors, [p.mirror for p in pairs]),
                               ("--destination", destinations, [p.destination for p in pairs])):
        for name in names or ():
            if name not in known:
                raise ConfigError(f"{flag} {name}: no such {flag.removeprefix('--')} (configured: "
                                  f"{', '.join(dict.fromkeys(known))})")
    chosen = tuple(p for p in pairs if (not mirrors or p.mirror in mirrors)
                   and (not destinations or p.destination in destinations))
    if not chosen:
        raise ConfigError(f"no destination is both --mirror {' '.join(mirrors or [])} and --destination "
                          f"{' '.join(destinations or [])}")
    return chosen


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of objects, at least 1: {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        every = config.load_all(os.environ)
    except ConfigError as error:
        logsetup.setup()
        _warn_unknown_variables()  # first: a misspelt name is often why a setting is missing
        logger.error("{}", error)
        return EXIT_CONFIG
    settings = every[0]  # the process's own settings (log, HTTP) are every pair's
    secrets = tuple(dict.fromkeys(secret for pair in every for secret in pair.secrets()))
    logsetup.setup(settings.log_level, settings.log_format, settings.timezone, secrets)
    _warn_unknown_variables()
    # The file's mirrors are named in log lines and metric labels; one pair from the
    # environment logs and counts exactly as it always did.
    from .observability import metrics

    metrics.name_pairs(bool((os.environ.get(config.CONFIG_FILE) or "").strip()))
    try:
        if args.command == "run":
            from .service import Service

            service = Service(every)
            with _start_up_heap_frozen():
                return service.run_until_signalled(_install_signals)
        pairs = _select(every, args.mirror, args.destination)
        if args.command == "check":
            return _each(pairs, _check)
        if args.command == "sweep":
            return _each(pairs, _sweep)
        if args.command == "verify":
            if args.metrics_file is not None and len(pairs) > 1:
                raise ConfigError(f"--metrics-file: the gauges are one destination's, and {len(pairs)} are chosen; "
                                  "choose one with --mirror and --destination")
            return _each(pairs, functools.partial(_verify, content=args.content, sample=args.sample or 0,
                                                  metrics_file=args.metrics_file))
        return _each(pairs, functools.partial(_reconcile, dry_run=args.dry_run,
                                              allow_mass_delete=args.allow_mass_delete,
                                              live=not args.no_progress and logsetup.isatty(sys.stdout)))
    except ConfigError as error:  # found only on use: an HTTP address or port that can't be bound
        logger.error("{}", error)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        logger.warning("interrupted")
        return EXIT_FAILED
    except Exception:  # a bug; Python's own traceback would bypass the redaction
        logger.exception("unexpected error; this is a bug, please report it")
        return EXIT_FAILED


# The worst first: a usage error; any failure; else a refused guard; else in sync.
_SEVERITY = (EXIT_CONFIG, EXIT_FAILED, EXIT_GUARD, EXIT_OK)


def _each(pairs: tuple[config.Settings, ...], command: Callable[[config.Settings, threading.Event], int]) -> int:
    """A one-shot command for each pair in turn, each in its own context (its log lines
    name it, where the file has several), until a signal stops the lot. The exit code is
    the worst of theirs."""
    from .observability import context

    stopping = threading.Event()
    codes = []
    for settings in pairs:
        if stopping.is_set():
            codes.append(EXIT_FAILED)  # not done: a stop is never a success
            break
        with context.working_for(context.Scope(settings.source_bucket, settings.mirror, settings.destination)):
            codes.append(command(settings, stopping))
    return min(codes, key=_SEVERITY.index)


def _warn_unknown_variables() -> None:
    for message in config.unknown_variables(os.environ):
        logger.warning("{}", message)


@contextmanager
def _start_up_heap_frozen() -> Iterator[None]:
    """Keep the garbage collector off what exists once the clients are built.

    boto3 and minio-py build their models into ~80,000 tracked objects that live as
    long as the process. A listing's entries, held a few thousand at a time in the
    listing buffers, survive into the oldest generation and set off full collections,
    each of which walked all of those again: a third of a 100,000-object no-op
    reconcile's CPU (3.5 -> 2.5 s, measured with and without this). ``gc.freeze``
    takes them out of the collector's view; ``gc.unfreeze`` gives them back, so a
    caller in the same process (the tests) loses nothing."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _install_signals(on_signal) -> None:
    """Route SIGTERM/SIGINT to ``on_signal(count)``: the first drains, the second aborts."""
    count = 0

    def handler(signum, _frame) -> None:
        nonlocal count
        count += 1
        on_signal(signal.Signals(signum).name, count)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def _check(settings: config.Settings, _stopping: threading.Event) -> int:
    from .app import build
    from .reconcile import check_endpoints

    app = build(settings)
    try:
        check_endpoints(app.source, app.dest, create=False)
        if settings.events == "jetstream":
            _check_jetstream(settings, app)
    except (ReplicatorError, ConfigError) as error:
        logger.error("{}", error)
        return EXIT_FAILED
    finally:
        app.close()
    return EXIT_OK


def _check_jetstream(settings: config.Settings, app: App) -> None:
    """S3_SYNC_EVENTS=jetstream: the bucket publishes to NATS, and NATS is reachable with a
    stream that takes MinIO's subject (or none yet: run creates it); and whether MinIO's
    count of failed events is readable."""
    from .failed_events import counts, unreadable_message
    from .jetstream import JetStream, publishes

    missing = publishes(app.source.notification_targets())
    if missing:
        raise ConfigError(f"S3_SYNC_EVENTS=jetstream: bucket {settings.source_bucket} publishes nothing to NATS: "
                          f"{missing}")
    jetstream = JetStream(settings, threading.Event())
    jetstream.start()
    try:
        jetstream.connect(create=False)
    finally:
        jetstream.stop()
    logger.info("✓ JetStream reachable at {}: stream {} takes {}", settings.nats_url, settings.nats_stream,
                settings.nats_subject)
    # MinIO's count, as run reads it: unreadable, it stops nothing there, so it fails no check.
    try:
        counts(app.source.metrics())
    except (ReplicatorError, ValueError) as error:
        logger.warning("{}", unreadable_message(error))
    else:
        logger.info("✓ MinIO's count of failed events readable: a rise asks for a reconcile")


def _stop_on_signals(app, stopping: threading.Event) -> None:
    """First signal: stop starting new work, let what runs finish; ``stopping`` is set.
    Second: exit now."""

    def on_signal(name: str, count: int) -> None:
        if count > 1:
            logger.warning("{} again: exiting immediately", name)
            os._exit(EXIT_FAILED)
        logger.warning("{}: finishing copies in flight, then stopping (again to abort)", name)
        stopping.set()
        app.stop.set()

    _install_signals(on_signal)


def _sweep(settings: config.Settings, stopping: threading.Event) -> int:
    from .app import build
    from .reconcile import check_endpoints
    from .sweep import sweep_and_repair
    from .workqueue import KeyedQueue

    queue = KeyedQueue(settings.queue_size)
    app = build(settings, key_lock=queue.claim)

    def work(stopping: threading.Event) -> int:
        check_endpoints(app.source, app.dest, create=False, policy=app.policy)
        stats, failed_repairs = sweep_and_repair(app, queue)
        return EXIT_FAILED if stats.failed or failed_repairs or stopping.is_set() else EXIT_OK

    return _one_shot(app, work, stopping, stopped="stopped before the sweep was done")


def _one_shot(app: App, work: Callable[[threading.Event], int], stopping: threading.Event, *, stopped: str) -> int:
    """A one-shot command's ``work`` on ``app``, which it gets ``stopping``, the event a
    first signal sets: a failure is logged, a stop while backing off is said, and the
    app is closed whatever happened. Returns the exit code."""
    _stop_on_signals(app, stopping)
    try:
        return work(stopping)
    except ReplicatorError as error:
        logger.error("{}", error)
        return EXIT_FAILED
    except Stopped:
        logger.warning("{}", stopped)
        return EXIT_FAILED
    finally:
        app.close()


def _verify(settings: config.Settings, stopping: threading.Event, *, content: bool, sample: int,
            metrics_file: str | None) -> int:
    from .app import build
    from .observability import metrics
    from .verify import Verifier

    if metrics_file is not None:
        # Said now, not after an hour of reading: the file is how the result is seen.
        directory = os.path.dirname(os.path.abspath(metrics_file))
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK | os.X_OK):
            logger.error("--metrics-file {}: can't write into {} (missing, or not writable)", metrics_file, directory)
            return EXIT_CONFIG
    # The app's graph as a reconcile builds it; of it, verify uses the stores and the
    # retry policy only, and calls nothing that writes (Reconciler.run would create the
    # bucket and abort crashed uploads).
    app = build(settings)

    def work(stopping: threading.Event) -> int:
        with _start_up_heap_frozen():
            tally = Verifier(app.source, app.dest, app.policy, settings, content=content, sample=sample).run()
        if not tally.complete or stopping.is_set():
            return EXIT_FAILED
        if metrics_file is not None:
            try:
                metrics.write_verify_metrics(metrics_file)
            except OSError as error:
                logger.error("--metrics-file {}: {}", metrics_file, error.strerror or error)
                return EXIT_FAILED
        return EXIT_OK if tally.in_sync else EXIT_DRIFT

    return _one_shot(app, work, stopping, stopped="stopped before the verify began")


def _reconcile(settings: config.Settings, stopping: threading.Event, *, dry_run: bool, allow_mass_delete: bool,
               live: bool) -> int:
    from .app import build

    display = None
    if live:
        from .observability.terminal import LiveProgress

        display = LiveProgress(f"Reconciling {settings.source_bucket} → {settings.dest_bucket}"
                               + (" (dry run)" if dry_run else ""))
        settings = dataclasses.replace(settings, progress_interval=0)  # the display shows what they would
    with display if display is not None else nullcontext():
        app = build(settings)
        if display is not None:
            display.follow(lambda: app.reconciler.last_progress)

        def work(stopping: threading.Event) -> int:
            with _start_up_heap_frozen():
                stats = app.reconciler.run(dry_run=dry_run, allow_mass_delete=allow_mass_delete)
            if stats.failed or stopping.is_set():
                return EXIT_FAILED
            return EXIT_GUARD if stats.guard else EXIT_OK

        return _one_shot(app, work, stopping, stopped="stopped before the run began")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
