"""Durable events (``S3_SYNC_EVENTS=jetstream``): MinIO publishes every bucket
notification to a NATS JetStream stream, and each destination reads it through a
durable pull consumer of its own.

Why: MinIO's listen stream drops events for slow readers and loses whatever happens
while nobody listens; only a full reconcile repairs that. A JetStream stream keeps the
events (for ``S3_SYNC_NATS_RETENTION``), and a durable consumer remembers what each
destination has acknowledged, so an event published while replicator was stopped,
crashed or cut off is delivered when it is back.

The rules:

- A message is acknowledged only once its key has converged at the destination
  (workers.py settles each item's receipts). A failure hands it back with a delay
  that grows with its deliveries, the retry policy's backoff; a full queue hands it
  back too (it is durable: no reconcile needed for it). A stop leaves it unacknowledged,
  for redelivery after ``ACK_WAIT`` to whoever reads next.
- Events stay hints: each message's work is the same per-key convergence as the
  listen stream's, re-reading the source, so a redelivery or a duplicate is harmless.
  A key's lock across the processes (keylocks.py) spares their duplicate work only.
- No finite ``max_deliver``: a message past it would stay in the stream, skipped,
  never replicated. A key that keeps failing is retried with the growing delay until
  its message is ``S3_SYNC_NATS_DEAD_LETTER_AGE`` old; then it is published to the
  dead-letter stream, and only once JetStream has stored it there is it taken off the
  consumer (terminated), and its key handed to the destination's reconcile.
- At start, the stream is created (limits retention, ``S3_SYNC_NATS_RETENTION``, file
  storage) or checked: a stream that doesn't take MinIO's subject would lose every
  event, so it is refused with a clear error, as is a consumer whose filter differs.

nats-py is asyncio's; replicator is threads. One thread runs the event loop: the
connection, one fetch loop per destination, and the acknowledgements the worker
threads ask for (thread-safe, through the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from urllib.parse import quote

import nats
import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from .config import Settings
from .errors import ConfigError, TransientError
from .events import Intake, received, to_item
from .keylocks import BUCKET as KEY_LOCKS
from .keylocks import HELD_ELSEWHERE_DELAY, KeyLocks
from .lease import Conflict
from .observability import context, metrics
from .observability.logging import Redactor
from .printable import printable
from .progress import iso
from .workqueue import KeyedQueue

# The reconcile of a destination runs in one process at a time, its lease's holder
# (lease.py): renewed every third of lease.TTL, lost a TTL after its holder stops.
LEASES = "replicator-leases"  # KV bucket: one lease per destination, aged out after lease.TTL
RESULTS = "replicator-results"  # KV bucket: each destination's last reconcile, as its holder saw it
ACK_WAIT = 60.0  # seconds a delivered message may go unacknowledged before it is delivered again
FETCH_BATCH = 256
# Messages a process holds per worker, unsettled (queued or being copied). Bounded so
# that several processes share a backlog: without it the first to fetch takes what its
# queue holds (S3_SYNC_QUEUE_SIZE, 10,000) and the others idle (docs/benchmarks.md,
# "JetStream"). Four per worker keep every worker busy between two fetches.
PREFETCH_PER_WORKER = 4
# A range task unacknowledged this long (its process killed mid-range) goes to another
# process; a range in work says so every third of it.
RANGE_ACK_WAIT = 30.0
RETENTION_CHECK = 30.0  # seconds between checks that no event aged out of the stream unread
FETCH_WAIT = 1.0  # seconds a fetch waits for messages: how soon a stop is noticed
LOCK_WAIT = 5.0  # seconds a worker waits to take a key's lock before it works without
NAK_DELAY_MAX = 600.0
# A message is dead-lettered only once it has failed this many deliveries, past its age:
# a backlog delivered late (replicator down for days) isn't dead-lettered at its first hiccup.
DEAD_LETTER_DELIVERIES = 3
DEAD_LETTER_ERROR_MAX = 1000  # characters of the last error a dead letter's header keeps
SIDE = "events"  # errors name the NATS side so


def publishes(targets: list[tuple[str, list[str]]]) -> str | None:
    """PURE: what is missing for MinIO to publish a bucket's changes to a NATS target,
    given its queue notification rules; None if nothing is. The target's subject is the
    server's setting (MINIO_NOTIFY_NATS_SUBJECT_<ID>), which the bucket doesn't show."""
    events: set[str] = set()
    for arn, names in targets:
        if arn.endswith(":nats"):
            events.update(names)
    missing = [wanted for wanted in ("s3:ObjectCreated:*", "s3:ObjectRemoved:*") if wanted not in events]
    if not missing:
        return None
    if not events:
        return "no notification rule sends its events to a NATS target"
    return f"its NATS notification rules don't send {' or '.join(missing)}"


def aged_out(first_sequence: int, ack_floor: int) -> bool:
    """PURE: whether messages left the stream (its limits: age, size) before the consumer
    acknowledged them: the stream now begins after a message the consumer never got done
    with. Their keys are then only the reconcile's to repair."""
    return first_sequence - 1 > ack_floor


def durable_name(prefix: str, mirror: str, destination: str) -> str:
    """PURE: the durable consumer of one destination. JetStream's names take no '.',
    '*', '>', whitespace or path separators; the configured names may hold dots."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", f"{prefix}-{mirror}-{destination}")[:200]


def dead_letter_stream(stream: str) -> tuple[str, str]:
    """PURE: the dead-letter stream of ``stream``, and the subjects it takes. Not under
    MinIO's subject: S3_SYNC_NATS_SUBJECT is a literal, and a stream taking a wildcard
    over it (``minio.>``) must not take dead letters too, and read them as events."""
    return f"{stream}-dead-letter", f"replicator.dead-letter.{stream}.>"


def range_stream(stream: str) -> tuple[str, str]:
    """PURE: the work-queue stream the ranges of shared reconcile passes go through
    (shared_reconcile.py), and its subjects: like the dead letters', not under MinIO's."""
    return f"{stream}-ranges", f"replicator.ranges.{stream}.>"


def range_subject(stream: str, durable: str) -> str:
    """PURE: where one destination's ranges are published, and its range consumer reads."""
    return f"replicator.ranges.{stream}.{durable}"


def dead_letter_subject(stream: str, durable: str) -> str:
    """PURE: where one destination's dead letters go: filterable by its consumer."""
    return f"replicator.dead-letter.{stream}.{durable}"


def past_age(published: float, now: float, deliveries: int, age: float) -> bool:
    """PURE: whether a message that failed again is to be dead-lettered: published
    ``age`` seconds ago or more, and failed at least DEAD_LETTER_DELIVERIES times."""
    return deliveries >= DEAD_LETTER_DELIVERIES and now - published >= age


def dead_letter_headers(*, destination: str, consumer: str, key: str, stream: str, sequence: int, deliveries: int,
                        published: float, error: str, redact: Callable[[str], str]) -> dict[str, str]:
    """PURE: what a dead letter says of itself, beside the MinIO event it carries as it
    came. A header holds no line break, and a key may hold any character: the key is
    percent-encoded (``urllib.parse.unquote`` gives it back), the error printable, cut,
    and with every configured credential replaced."""
    return {
        "Replicator-Destination": destination,
        "Replicator-Consumer": consumer,
        "Replicator-Key": quote(key, safe="/"),
        "Replicator-Stream": stream,
        "Replicator-Sequence": str(sequence),
        "Replicator-Deliveries": str(deliveries),
        "Replicator-Published": f"{published:.3f}",
        "Replicator-Error": printable(redact(error))[:DEAD_LETTER_ERROR_MAX],
        # JetStream drops a second copy within its duplicate window: a publish whose
        # acknowledgement was lost, tried again at the message's next failure.
        "Nats-Msg-Id": f"{stream}-{sequence}-{consumer}",
    }


def nak_delay(deliveries: int, base: float) -> float:
    """PURE: how long a failed message waits before it is delivered again: the retry
    policy's doubling backoff, by the number of deliveries so far, capped."""
    return min(NAK_DELAY_MAX, max(1.0, base) * 2 ** min(max(deliveries - 1, 0), 10))


@dataclass(eq=False)
class Receipt:
    """One message's settlement, asked for from a worker thread, done on the loop.
    Settled once: a retried item carries receipts already handed back."""

    message: Msg
    consumer: Consumer
    jetstream: JetStream
    key: str = ""  # the key of the record it stands for, once an item carries it
    # When NATS last heard of it (delivered, or in progress: a heartbeat it confirmed).
    heard: float = field(default_factory=time.monotonic, init=False)
    _settled: bool = field(default=False, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.jetstream.outstanding.add(self)
        self.consumer.held.add(self)

    def settle(self, converged: bool, why: str | None = None) -> None:
        """Acknowledge the message, or hand it back; ``why`` its key failed, if it did
        (not for a full queue, or a stop): a failure past the age is dead-lettered."""
        if not self._first_settlement():
            return
        metadata = self.message.metadata
        if converged:
            settling = self.message.ack()
        elif why is not None and past_age(metadata.timestamp.timestamp(), time.time(), metadata.num_delivered,
                                          self.jetstream.settings.nats_dead_letter_age):
            settling = self.jetstream.dead_letter(self, why)
        else:
            settling = self.message.nak(delay=nak_delay(metadata.num_delivered, self.consumer.settings.retry_delay))
        self._send(settling)

    def lapsed(self) -> bool:
        """Whether NATS has heard nothing of the message for its ack wait: heartbeats
        lost (the connection down, or cut off) for two rounds and more. It is then
        delivered to whoever reads next, another process perhaps."""
        return time.monotonic() - self.heard > ACK_WAIT

    def hand_back(self, delay: float) -> None:
        """Have the message delivered again after ``delay`` seconds: no failure of its key's."""
        if self._first_settlement():
            self._send(self.message.nak(delay=delay))

    def _first_settlement(self) -> bool:
        """Mark it settled, if it wasn't: no more heartbeats, and room for its consumer to fetch."""
        with self._lock:
            if self._settled:
                return False
            self._settled = True
        self.jetstream.outstanding.discard(self)
        self.consumer.held.discard(self)
        return True

    def _send(self, settling) -> None:
        try:
            asyncio.run_coroutine_threadsafe(settling, self.jetstream.loop)
            self.jetstream.loop.call_soon_threadsafe(self.consumer.room.set)  # room to fetch
        except RuntimeError:  # the loop is gone (shutdown): the message is delivered again after ACK_WAIT
            settling.close()


@dataclass(eq=False)
class Consumer:
    """One destination's end: its durable consumer and the intake its events go to."""

    settings: Settings
    queue: KeyedQueue
    intake: Intake
    on_gap: Callable[[str], None]
    connected: threading.Event = field(default_factory=threading.Event)
    reconnects: int = 0
    durable: str = ""  # its consumer's name, once subscribed
    dead_lettered: int = 0  # messages this process moved to the dead-letter stream
    # What NATS last said of the consumer, and who held its reconcile lease (None: no
    # reconcile ran), as of ``checked``: read with each retention check, not per /status.
    info: ConsumerInfo | None = None
    lease_holder: str | None = None
    checked: float | None = None
    held: set[Receipt] = field(default_factory=set)  # its messages delivered here and not settled yet
    room: asyncio.Event = field(default_factory=asyncio.Event)  # set when one of them settles

    @property
    def prefetch(self) -> int:
        """How many of its messages this process may hold: what its workers start soon,
        not what its queue could take (the rest stays in the stream for other processes)."""
        return max(PREFETCH_PER_WORKER, PREFETCH_PER_WORKER * self.settings.workers)

    def fetchable(self) -> int:
        return min(self.queue.maxsize - self.queue.depth(), self.prefetch - len(self.held))

    @property
    def scope(self) -> context.Scope:
        s = self.settings
        return context.Scope(s.source_bucket, s.mirror, s.destination)

    def status(self) -> dict:
        """The JetStream section of this destination's /status: counts as of the last
        check (None before the first), connected and dead-lettered as of now."""
        info = self.info
        return {
            "consumer": self.durable,
            "connected": self.connected.is_set(),
            "pending": info.num_pending if info else None,  # in the stream, not delivered yet
            "ack_pending": info.num_ack_pending if info else None,  # delivered, not settled yet
            "redelivered": info.num_redelivered if info else None,  # of those, delivered more than once
            "dead_lettered": self.dead_lettered,
            "lease_holder": self.lease_holder,
            "checked_at": iso(self.checked),
        }

    def watch(self) -> Callable[[], bool]:
        """As Listener.watch: has this consumer stayed connected since? A durable consumer
        loses nothing across a reconnect, so only being connected at both ends counts."""
        was = self.connected.is_set()
        return lambda: was and self.connected.is_set()


class JetStream:
    """The NATS connection and every destination's consumer, on one event-loop thread."""

    def __init__(self, settings: Settings, stopping: threading.Event):
        self.settings = settings
        self.stopping = stopping
        self.consumers: list[Consumer] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="jetstream", daemon=True)
        self._nc: nats.NATS | None = None
        self._tasks: list[asyncio.Task] = []
        # Messages delivered here and not yet settled: queued, or being copied. Each is
        # told to NATS as still in progress every third of ACK_WAIT, so a copy longer than
        # ACK_WAIT isn't delivered to another process meanwhile; a process that dies
        # stops telling, and its messages are delivered again ACK_WAIT later.
        self.outstanding: set[Receipt] = set()
        # Who this process is, as the holder of leases and key locks: visible in the KV
        # buckets, and the same for a container restarted under its name (pid 1 again).
        self.holder = f"{socket.gethostname()}-{os.getpid()}"
        self._locks: list[KeyLocks] = []  # every destination's key locks, renewed with the heartbeats

    # -- the loop's thread ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def _call(self, coroutine, timeout: float | None = None):
        future: Future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    # -- start-up ------------------------------------------------------------------------

    def connect(self, timeout: float = 30.0, *, create: bool = True) -> None:
        """Connect and check the stream, creating it if missing (unless not ``create``:
        ``check`` changes nothing). Raises a ReplicatorError or ConfigError naming the cause."""
        self._call(_mapped("stream", self._connect(create)), timeout)

    async def _connect(self, create: bool) -> None:
        s = self.settings
        options: dict = {
            "servers": [url.strip() for url in s.nats_url.split(",")],
            "name": "replicator",
            "connect_timeout": min(s.connect_timeout, 10),
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
            "error_cb": self._error,
        }
        if s.nats_user:
            options["user"] = s.nats_user
            options["password"] = s.nats_password.reveal() if s.nats_password else ""
        if s.nats_ca_bundle or any(url.strip().startswith("tls://") for url in s.nats_url.split(",")):
            options["tls"] = ssl.create_default_context(cafile=s.nats_ca_bundle)
        try:
            self._nc = await nats.connect(**options)
        except (TimeoutError, OSError, nats.errors.Error) as error:
            raise TransientError(SIDE, "connect", None, f"NATS at {s.nats_url} unreachable: "
                                 f"{type(error).__name__}: {error}") from None
        await self._ensure_stream(create)
        await self._ensure_dead_letters(create)

    async def _ensure_stream(self, create: bool) -> None:
        s = self.settings
        assert self._nc is not None
        js = self._nc.jetstream()
        try:
            info = await js.stream_info(s.nats_stream)
        except nats.js.errors.NotFoundError:
            if not create:
                logger.info("JetStream: no stream {} yet; `run` creates it for {}", s.nats_stream, s.nats_subject)
                return
            await js.add_stream(StreamConfig(
                name=s.nats_stream, subjects=[s.nats_subject], retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE, max_age=s.nats_retention))
            logger.info("JetStream: created stream {} for {} (events kept {:g} days)", s.nats_stream,
                        s.nats_subject, s.nats_retention / 86400)
            return
        except nats.errors.Error as error:
            raise TransientError(SIDE, "stream info", None, f"{type(error).__name__}: {error}") from None
        subjects = list(info.config.subjects or [])
        if not any(_subject_matches(pattern, s.nats_subject) for pattern in subjects):
            raise ConfigError(
                f"S3_SYNC_NATS_STREAM={s.nats_stream}: the stream takes {', '.join(subjects) or 'no subjects'}, not "
                f"S3_SYNC_NATS_SUBJECT={s.nats_subject}, where MinIO publishes: every event would be lost (MinIO "
                "can't store into it). Add the subject to the stream, or name the stream that has it")

    async def _ensure_dead_letters(self, create: bool) -> None:
        """The stream dead letters go to, created like the main one (and kept as long):
        without it a poison message could only be retried forever or dropped."""
        s = self.settings
        assert self._nc is not None
        js = self._nc.jetstream()
        name, subjects = dead_letter_stream(s.nats_stream)
        try:
            await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            if not create:
                logger.info("JetStream: no dead-letter stream {} yet; `run` creates it", name)
                return
            await js.add_stream(StreamConfig(
                name=name, subjects=[subjects], retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
                max_age=s.nats_retention))
            logger.info("JetStream: created dead-letter stream {} for {}", name, subjects)

    async def dead_letter(self, receipt: Receipt, why: str) -> None:
        """Move a message that kept failing past its age to the dead-letter stream; take
        it off the consumer only once JetStream has stored the copy (a publish that
        fails hands it back, to be tried again at its next failure). Its key isn't
        forgotten: logged, counted, and the destination's reconcile asked for."""
        assert self._nc is not None
        consumer, message = receipt.consumer, receipt.message
        metadata = message.metadata
        deliveries = metadata.num_delivered
        headers = dead_letter_headers(
            destination=f"{consumer.settings.mirror}/{consumer.settings.destination}", consumer=consumer.durable,
            key=receipt.key, stream=self.settings.nats_stream, sequence=metadata.sequence.stream,
            deliveries=deliveries, published=metadata.timestamp.timestamp(), error=why,
            redact=Redactor(consumer.settings.secrets()))
        with context.working_for(consumer.scope):
            try:
                await self._nc.jetstream().publish(dead_letter_subject(self.settings.nats_stream, consumer.durable),
                                                   message.data, headers=headers, timeout=10.0)
            except (TimeoutError, nats.errors.Error, OSError) as error:
                logger.warning("{}: could not move its message to the dead-letter stream ({}: {}); handed back",
                               receipt.key, type(error).__name__, error)
                await message.nak(delay=nak_delay(deliveries, consumer.settings.retry_delay))
                return
            await message.term()
            consumer.dead_lettered += 1
            metrics.events_dead_lettered.inc()
            logger.warning("{}: its event failed {} deliveries over {:.0f}s (last: {}); moved to the dead-letter "
                           "stream {} and left for the reconcile", receipt.key, deliveries,
                           time.time() - metadata.timestamp.timestamp(), why,
                           dead_letter_stream(self.settings.nats_stream)[0])
            consumer.on_gap("an event was dead-lettered")

    def subscribe(self, consumer: Consumer) -> None:
        """Create or check the destination's durable consumer, and start fetching for it."""
        self._call(_mapped("consumer", self._subscribe(consumer)), 30.0)
        self.consumers.append(consumer)

    async def _subscribe(self, consumer: Consumer) -> None:
        s = self.settings
        assert self._nc is not None
        js = self._nc.jetstream()
        durable = durable_name(s.nats_consumer, consumer.settings.mirror, consumer.settings.destination)
        wanted = ConsumerConfig(
            durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT, max_deliver=-1,
            filter_subject=s.nats_subject, max_ack_pending=max(1000, 2 * consumer.settings.queue_size),
            # A consumer made now starts from now: what came before is the initial reconcile's.
            deliver_policy=DeliverPolicy.NEW)
        try:
            info = await js.consumer_info(s.nats_stream, durable)
            if info.config.filter_subject not in (None, "", s.nats_subject):
                raise ConfigError(f"JetStream consumer {durable} of stream {s.nats_stream} filters "
                                  f"{info.config.filter_subject}, not S3_SYNC_NATS_SUBJECT={s.nats_subject}: delete "
                                  "it (nats consumer rm) and let replicator create it")
        except nats.js.errors.NotFoundError:
            await js.add_consumer(s.nats_stream, wanted)
            logger.info("JetStream: created durable consumer {} on stream {}", durable, s.nats_stream)
            # What was published before it (or while another mode listened) is no event of
            # its: a reconcile must run, not a predecessor's result stand for one.
            consumer.on_gap("JetStream consumer created")
        subscription = await js.pull_subscribe_bind(durable=durable, stream=s.nats_stream)
        consumer.durable = durable
        consumer.connected.set()
        with context.working_for(consumer.scope):
            task = self.loop.create_task(self._fetch(consumer, subscription))
            self._tasks.append(task)
            self._tasks.append(self.loop.create_task(self._watch_retention(consumer)))
        if len(self._tasks) == 2:
            self._tasks.append(self.loop.create_task(self._heartbeats()))

    async def _watch_retention(self, consumer: Consumer) -> None:
        """Ask for a reconcile when messages aged out of the stream before this consumer
        was done with them (a replicator down longer than the stream keeps events)."""
        assert self._nc is not None
        js = self._nc.jetstream()
        reported = -1
        while not self.stopping.is_set():
            try:
                stream = await js.stream_info(self.settings.nats_stream)
                info = await js.consumer_info(self.settings.nats_stream, consumer.durable)
            except (TimeoutError, nats.errors.Error, OSError) as error:
                logger.debug("JetStream: retention check: {}: {}", type(error).__name__, error)
            else:
                metrics.events_pending.set((info.num_pending or 0) + (info.num_ack_pending or 0))
                await self._observe(consumer, info)
                first, floor = stream.state.first_seq, info.ack_floor.stream_seq if info.ack_floor else 0
                if aged_out(first, floor) and first != reported:
                    reported = first
                    logger.warning("JetStream: events {}-{} of stream {} aged out before they were replicated; "
                                   "reconciling", floor + 1, first - 1, self.settings.nats_stream)
                    consumer.on_gap("events aged out of the JetStream stream")
            await asyncio.sleep(RETENTION_CHECK)

    async def _observe(self, consumer: Consumer, info: ConsumerInfo) -> None:
        """Keep what /status shows of the consumer: its counts, and its lease's holder
        (the lease bucket is made once the consumer is: absent at the first check)."""
        assert self._nc is not None
        holder = None
        try:
            entry = await (await self._nc.jetstream().key_value(LEASES)).get(consumer.durable)
            holder = entry.value.decode(errors="replace") if entry.value else None
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            pass
        except (TimeoutError, nats.errors.Error, OSError) as error:
            logger.debug("JetStream: lease holder: {}: {}", type(error).__name__, error)
        consumer.info, consumer.lease_holder, consumer.checked = info, holder, time.time()

    async def _heartbeats(self) -> None:
        assert self._nc is not None
        while not self.stopping.is_set():
            await asyncio.sleep(ACK_WAIT / 3)
            sent = []
            for receipt in list(self.outstanding):
                try:
                    await receipt.message.in_progress()
                    sent.append(receipt)
                except (nats.errors.Error, OSError) as error:
                    logger.debug("JetStream: in-progress for message {}: {}", receipt.message.metadata.sequence.stream,
                                 error)
            # in_progress() is sent without an answer; buffered while disconnected, it may
            # reach NATS after the ack wait. A flush answered while connected says NATS
            # has them: only then do they count as heard.
            if sent and self.connected:
                try:
                    await self._nc.flush(timeout=max(1, int(ACK_WAIT / 6)))
                except (TimeoutError, nats.errors.Error, OSError) as error:
                    logger.debug("JetStream: heartbeats unconfirmed: {}: {}", type(error).__name__, error)
                else:
                    heard = time.monotonic()
                    for receipt in sent:
                        receipt.heard = heard
            for locks in list(self._locks):
                await locks.renew()

    def publish(self, subject: str, data: bytes) -> None:
        """Publish to a stream, and wait for JetStream to have stored it."""
        async def publish():
            assert self._nc is not None
            await self._nc.jetstream().publish(subject, data, timeout=10.0)

        self._call(_mapped(f"publish to {subject}", publish()), 30.0)

    def range_tasks(self, durable: str) -> RangeTasks:
        """One destination's queue of reconcile ranges: a work-queue stream (each task
        delivered to one process at a time, and removed once acknowledged), read by a
        durable consumer every process shares."""
        return self._call(_mapped("range work queue", self._range_tasks(durable)), 30.0)

    async def _range_tasks(self, durable: str) -> RangeTasks:
        assert self._nc is not None
        js = self._nc.jetstream()
        name, subjects = range_stream(self.settings.nats_stream)
        try:
            await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            # Age-limited like the events: a task nobody took for a day belongs to a pass
            # long given up.
            await js.add_stream(StreamConfig(name=name, subjects=[subjects], retention=RetentionPolicy.WORK_QUEUE,
                                             storage=StorageType.FILE, max_age=86400.0))
        subject = range_subject(self.settings.nats_stream, durable)
        consumer = f"{durable}-ranges"
        try:
            await js.consumer_info(name, consumer)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(name, ConsumerConfig(
                durable_name=consumer, ack_policy=AckPolicy.EXPLICIT, ack_wait=RANGE_ACK_WAIT, max_deliver=-1,
                filter_subject=subject, max_ack_pending=-1))
        return RangeTasks(self, subject, await js.pull_subscribe_bind(durable=consumer, stream=name))

    def key_locks(self, name: str, *, bucket: str = KEY_LOCKS, ttl: float = ACK_WAIT) -> SharedKeys:
        """The key locks of one destination's consumer (``name``), for its worker threads.
        Their entries age out ``ttl`` after their holder's last renewal: by default the
        ack wait, when NATS would deliver that holder's messages to another process anyway."""
        kv = self._call(_mapped(f"key-value bucket {bucket}", self._key_value(bucket, ttl)), 30.0)
        locks = KeyLocks(_AsyncStore(kv), name, self.holder)
        self._locks.append(locks)
        return SharedKeys(self, locks)

    def key_value(self, bucket: str, ttl: float | None = None) -> KeyValue:
        """The KV bucket, created if missing (with ``ttl``: every key ages out after it)."""
        return KeyValue(self, self._call(_mapped(f"key-value bucket {bucket}", self._key_value(bucket, ttl)), 30.0))

    async def _key_value(self, bucket: str, ttl: float | None):
        assert self._nc is not None
        js = self._nc.jetstream()
        try:
            return await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            return await js.create_key_value(bucket=bucket, history=1, ttl=ttl, storage=StorageType.FILE)

    # -- delivery ------------------------------------------------------------------------

    async def _fetch(self, consumer: Consumer, subscription) -> None:
        bucket = consumer.settings.source_bucket
        while not self.stopping.is_set():
            room = consumer.fetchable()
            if room <= 0:
                # The workers are behind: the stream holds the rest. Woken by a settlement;
                # the timeout covers a queue that emptied by other means (a reconcile's claim).
                consumer.room.clear()
                if consumer.fetchable() <= 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(consumer.room.wait(), 0.1)
                continue
            try:
                messages = await subscription.fetch(min(FETCH_BATCH, room), timeout=FETCH_WAIT)
            except nats.errors.TimeoutError:
                continue
            except (nats.errors.Error, OSError) as error:
                if not self.stopping.is_set():
                    logger.warning("JetStream: fetch failed ({}: {}); retrying", type(error).__name__, error)
                    await asyncio.sleep(1.0)
                continue
            for message in messages:
                self._deliver(consumer, bucket, message)

    def _deliver(self, consumer: Consumer, bucket: str, message: Msg) -> None:
        receipt = Receipt(message, consumer, self)
        try:
            event = json.loads(message.data)
            records = event.get("Records") or []
        except (ValueError, AttributeError):
            logger.warning("JetStream: message {} of {} is not a MinIO event; acknowledged and skipped",
                           message.metadata.sequence.stream, message.subject)
            receipt.settle(True)
            return
        items = []
        for record in records:
            if ((record.get("s3") or {}).get("bucket") or {}).get("name") != bucket:
                continue  # another bucket's event: its mirrors have consumers of their own
            item = to_item(record, escaped=True)
            if item is not None:
                items.append(item)
        if not items:
            receipt.settle(True)
            return
        for n, item in enumerate(items):
            # One receipt per message: the last item of it carries it (a MinIO event has one record).
            if n == len(items) - 1:
                receipt.key = item.key
                item = replace(item, receipts=(receipt,))
            received(item)
            consumer.intake.offer(item, 0.0, self.stopping)

    # -- connection state ------------------------------------------------------------------

    async def _disconnected(self) -> None:
        for consumer in self.consumers:
            consumer.connected.clear()
        if not self.stopping.is_set():
            logger.warning("JetStream: disconnected from NATS; reconnecting (the stream keeps the events)")

    async def _reconnected(self) -> None:
        for consumer in self.consumers:
            consumer.reconnects += 1
            consumer.connected.set()
        logger.info("JetStream: reconnected to NATS; delivery resumes where each consumer left off")

    async def _error(self, error: Exception) -> None:
        if not self.stopping.is_set():
            logger.debug("JetStream: {}: {}", type(error).__name__, error)

    # -- stop ------------------------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        """End the fetch loops, send what is asked for already (acks), and close."""
        if not self._thread.is_alive():
            return
        try:
            self._call(self._close(), timeout)
        except Exception as error:  # noqa: BLE001 - a stop must end however NATS is
            logger.debug("JetStream: close: {}", error)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._nc is not None and not self._nc.is_closed:
            # Not drain(): it waits up to 30 s for subscriptions; the acks the workers asked
            # for are queued on the connection already, and a flush sends them.
            try:
                await self._nc.flush(timeout=2)
            finally:
                await self._nc.close()


@dataclass(eq=False)
class SharedKeys:
    """One destination's key locks (keylocks.py), for its worker threads: taking one
    waits for NATS (one round trip, more after a release: see keylocks); releasing
    doesn't, it is sent after the acks the worker asked for."""

    jetstream: JetStream
    locks: KeyLocks
    retry_after: float = HELD_ELSEWHERE_DELAY

    def take(self, key: str) -> bool:
        if not self.jetstream.connected:
            return True  # cut off: no answer would come before LOCK_WAIT, and the work needs none
        future: Future = asyncio.run_coroutine_threadsafe(self.locks.take(key), self.jetstream.loop)
        try:
            return future.result(LOCK_WAIT)
        except TimeoutError:
            future.cancel()  # not held then: the lock, if created, ages out
            return True  # correctness doesn't depend on the lock: work without it

    def release(self, key: str) -> None:
        release = self.locks.release(key)
        try:
            asyncio.run_coroutine_threadsafe(release, self.jetstream.loop)
        except RuntimeError:  # the loop is gone (shutdown): the entry ages out
            release.close()


@dataclass(eq=False)
class RangeTasks:
    """One destination's range tasks, for threads: publish them, take one at a time."""

    jetstream: JetStream
    subject: str
    subscription: object

    def publish(self, data: bytes) -> None:
        self.jetstream.publish(self.subject, data)

    def take(self, wait: float) -> RangeTask | None:
        """The next task, or None if none came within ``wait`` seconds (or NATS is away)."""
        async def fetch():
            try:
                return (await self.subscription.fetch(1, timeout=wait))[0]  # type: ignore[attr-defined]
            except (TimeoutError, nats.errors.Error, OSError):
                return None

        message = self.jetstream._call(fetch(), wait + 30.0)  # noqa: SLF001
        return None if message is None else RangeTask(self.jetstream, message)


@dataclass(eq=False)
class RangeTask:
    jetstream: JetStream
    message: Msg
    ack_wait: float = RANGE_ACK_WAIT

    @property
    def data(self) -> bytes:
        return self.message.data

    def working(self) -> None:
        """Still at it: NATS gives it to nobody else for another RANGE_ACK_WAIT."""
        self._send(self.message.in_progress())

    def done(self) -> None:
        self._send(self.message.ack())

    def _send(self, work) -> None:
        with contextlib.suppress(Exception):  # unsent: NATS delivers it again, and the range is redone
            self.jetstream._call(work, 10.0)  # noqa: SLF001


class _AsyncStore:
    """A KV bucket as keylocks.Store: on the loop, NATS's errors as Conflict or TransientError."""

    def __init__(self, kv):
        self._kv = kv

    async def create(self, name: str, value: bytes) -> int:
        return await self._mapped(f"create {name}", self._kv.create(name, value))

    async def update(self, name: str, value: bytes, last: int) -> int:
        return await self._mapped(f"update {name}", self._kv.update(name, value, last=last))

    async def delete(self, name: str, last: int) -> None:
        await self._mapped(f"delete {name}", self._kv.delete(name, last=last))

    async def entry(self, name: str) -> tuple[bytes, int] | None:
        try:
            found = await self._mapped(f"get {name}", self._kv.get(name))
        except Conflict:
            return None
        return found.value or b"", found.revision

    @staticmethod
    async def _mapped(what: str, work):
        try:
            return await work
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError,
                nats.js.errors.KeyDeletedError):
            raise Conflict(what) from None
        except (TimeoutError, nats.errors.Error, OSError) as error:
            raise TransientError(SIDE, what, None, f"{type(error).__name__}: {error}") from None


class KeyValue:
    """A KV bucket, for threads (lease.Store and plain reads and writes): each call runs
    on the loop and waits for it."""

    def __init__(self, jetstream: JetStream, kv):
        self._jetstream, self._kv = jetstream, kv

    def _run(self, what: str, work):
        return self._jetstream._call(_mapped(what, work), 30.0)  # noqa: SLF001 - the one loop both share

    def create(self, key: str, value: bytes) -> int:
        try:
            return self._run(f"create {key}", self._kv.create(key, value))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise Conflict(key) from None

    def update(self, key: str, value: bytes, last: int) -> int:
        try:
            return self._run(f"update {key}", self._kv.update(key, value, last=last))
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError,
                nats.js.errors.KeyDeletedError):
            raise Conflict(key) from None  # moved on, or aged out: not ours any more

    def delete(self, key: str, last: int) -> None:
        try:
            self._run(f"delete {key}", self._kv.delete(key, last=last))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise Conflict(key) from None

    def get(self, key: str) -> bytes | None:
        found = self.entry(key)
        return None if found is None else found[0]

    def entry(self, key: str) -> tuple[bytes, int] | None:
        """The value of ``key`` and its revision (ranges.Store), or None if absent."""
        try:
            entry = self._run(f"get {key}", self._kv.get(key))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return entry.value or b"", entry.revision

    def put(self, key: str, value: bytes) -> int:
        return self._run(f"put {key}", self._kv.put(key, value))


async def _mapped(what: str, work):
    """``work``, with NATS's errors as ours: JetStream refusing a request (a stream whose
    subjects overlap another's, limits) is a setting to fix; anything else may pass."""
    try:
        return await work
    except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError,
            nats.js.errors.KeyDeletedError, nats.js.errors.BucketNotFoundError):
        raise  # the caller's to read
    except nats.js.errors.APIError as error:
        raise ConfigError(f"JetStream refused the {what}: {error.description or error} (code {error.err_code})"
                          ) from None
    except (TimeoutError, nats.errors.Error, OSError) as error:
        raise TransientError(SIDE, what, None, f"{type(error).__name__}: {error}") from None


def _subject_matches(pattern: str, subject: str) -> bool:
    """PURE: whether a stream subject (with NATS wildcards: ``*`` one token, ``>`` the
    rest) takes ``subject``."""
    wanted, parts = pattern.split("."), subject.split(".")
    for n, part in enumerate(wanted):
        if part == ">":
            return len(parts) > n
        if n >= len(parts) or part not in ("*", parts[n]):
            return False
    return len(wanted) == len(parts)

