"""uploads.py: the registry of multipart uploads in flight. Its file format by tables,
its files in a temporary directory, and its locks against real child processes: one
that is alive and holds its lock, one that was SIGKILLed (the kernel released it).
Then the copier's use of it over the in-memory store: what it records, and the sweep
that aborts a dead process's uploads and nobody else's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from loguru import logger
from prometheus_client import REGISTRY

from replicator import config
from replicator.copier import Copier
from replicator.errors import PermanentError, TransientError
from replicator.model import SourceObject
from replicator.retry import RetryPolicy
from replicator.stores.memory import MemoryStore
from replicator.uploads import Owner, Record, Registry, Upload, decode, encode

ROOT = Path(__file__).resolve().parents[2]
DEST = "http://127.0.0.1:9000/mirror"

# A replicator process in miniature: records uploads, says so, then either holds its
# lock until its stdin closes or dies by SIGKILL, as the fault-injection audit's did.
CHILD = """
import os, signal, sys
from replicator.uploads import Registry
registry = Registry(sys.argv[1], sys.argv[2])
for arg in sys.argv[3:]:
    key, upload_id = arg.split("=", 1)
    registry.started(key, upload_id)
print(registry.owner.pid, flush=True)
if os.environ.get("DIE"):
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()
"""


class Child:
    def __init__(self, directory: Path, destination: str, uploads: dict[str, str], *, die: bool):
        env = {**os.environ, **({"DIE": "1"} if die else {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory), destination, *(f"{k}={u}" for k, u in uploads.items())],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.pid = int(self.proc.stdout.readline())  # its uploads are on disk
        if die:
            assert self.proc.wait(30) == -signal.SIGKILL

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.communicate("", timeout=30)


@pytest.fixture
def children():
    made: list[Child] = []

    def start(directory: Path, uploads: dict[str, str], *, die: bool, destination: str = DEST) -> Child:
        child = Child(directory, destination, uploads, die=die)
        made.append(child)
        return child

    yield start
    for child in made:
        child.close()


@pytest.fixture
def warnings():
    seen: list[str] = []
    sink = logger.add(lambda message: seen.append(str(message)), level="WARNING", format="{message}")
    yield seen
    logger.remove(sink)


class Offered:
    """An abort callback that records what it was offered, and says each is gone
    unless its upload id is in ``keep``."""

    def __init__(self, keep: tuple[str, ...] = ()):
        self.keep = keep
        self.calls: list[tuple[Upload, Owner]] = []

    def __call__(self, upload: Upload, owner: Owner) -> bool:
        self.calls.append((upload, owner))
        return upload.upload_id not in self.keep

    @property
    def ids(self) -> list[str]:
        return [upload.upload_id for upload, _ in self.calls]


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --- the file format ---------------------------------------------------------------------

OWNER = Owner(42, "sidecar", "2026-11-27T21:00:00Z")
GOOD = Record(DEST, OWNER, (Upload("video/raw.bin", "id-1", "2026-11-27T21:01:23Z"),))


@pytest.mark.parametrize("key", ["video/raw.bin", "new\nline", "日本/é", "lone\ud800surrogate", "quote\"back\\slash"])
def test_a_record_reads_back_as_written(key):
    record = Record(DEST, OWNER, (Upload(key, "id-1", "2026-11-27T21:01:23Z"), Upload("b", "id-2", "2026")))
    assert decode(encode(record)) == record


def _good() -> dict:
    return json.loads(encode(GOOD))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: "{", "not JSON"),
        (lambda d: [], "not a JSON object"),
        (lambda d: {**d, "version": 2}, "version 2"),
        (lambda d: {k: v for k, v in d.items() if k != "version"}, "version None"),
        (lambda d: {**d, "destination": ""}, "no destination"),
        (lambda d: {**d, "owner": {"pid": "42", "host": "h", "since": "t"}}, "no owner"),
        (lambda d: {**d, "owner": None}, "no owner"),
        (lambda d: {**d, "uploads": {}}, "no list of uploads"),
        (lambda d: {**d, "uploads": [{"key": "a", "upload_id": "", "started": "t"}]}, "an upload without"),
        (lambda d: {**d, "uploads": [{"key": "a", "started": "t"}]}, "an upload without"),
        (lambda d: {**d, "uploads": ["a"]}, "an upload without"),
    ],
)
def test_a_malformed_record_is_refused_saying_why(change, why):
    changed = change(_good())
    text = changed if isinstance(changed, str) else json.dumps(changed)
    with pytest.raises(ValueError, match=why):
        decode(text)


# --- this process's file --------------------------------------------------------------------


def test_an_upload_is_on_disk_from_its_start_until_it_is_finished(tmp_path):
    registry = Registry(tmp_path, DEST, clock=lambda: 1_795_000_000)
    upload = registry.started("video/raw.bin", "id-1")
    assert upload == Upload("video/raw.bin", "id-1", "2026-11-18T11:06:40Z")
    assert registry.path is not None
    assert decode(registry.path.read_text()) == Record(DEST, registry.owner, (upload,))
    registry.finished(upload)
    assert decode(registry.path.read_text()).uploads == ()
    registry.close()
    assert files(tmp_path) == []  # a clean stop leaves nothing behind


def test_the_state_directory_is_created(tmp_path):
    registry = Registry(tmp_path / "state" / "uploads", DEST)
    registry.started("a", "id-1")
    assert files(tmp_path / "state" / "uploads") == [f"{registry.name}.json", f"{registry.name}.lock"]
    registry.close()


def test_uploads_left_at_close_stay_recorded_for_the_next_start(tmp_path, warnings):
    registry = Registry(tmp_path, DEST)
    registry.started("a", "id-1")
    registry.abandoned(registry.started("b", "id-2"))
    registry.close()
    assert any("2 multipart uploads at the destination are unfinished" in w for w in warnings)
    offered = Offered()
    Registry(tmp_path, DEST).reclaim(offered)  # the lock went with close: a later process takes them
    assert offered.ids == ["id-1", "id-2"]
    assert [owner for _, owner in offered.calls] == [registry.owner] * 2


def test_an_upload_whose_abort_failed_is_offered_again_by_its_own_process(tmp_path):
    registry = Registry(tmp_path, DEST)
    in_flight = registry.started("a", "id-1")
    registry.abandoned(registry.started("b", "id-2"))
    offered = Offered(keep=("id-2",))
    registry.reclaim(offered)
    assert offered.ids == ["id-2"]  # not the one a copy is still working on
    assert offered.calls[0][1] == registry.owner
    registry.reclaim(gone := Offered())
    assert gone.ids == ["id-2"]  # still failing last time: offered again
    registry.reclaim(again := Offered())
    assert again.ids == []
    assert [u.upload_id for u in decode(registry.path.read_text()).uploads] == [in_flight.upload_id]
    registry.close()


# --- the sweep, against real processes ----------------------------------------------------------


def test_a_dead_process_uploads_are_offered_and_its_files_removed(tmp_path, children):
    dead = children(tmp_path, {"video/raw.bin": "id-1", "other.bin": "id-2"}, die=True)
    offered = Offered()
    registry = Registry(tmp_path, DEST)
    registry.reclaim(offered)
    assert offered.ids == ["id-1", "id-2"]
    assert {owner.pid for _, owner in offered.calls} == {dead.pid}
    assert [u.key for u, _ in offered.calls] == ["video/raw.bin", "other.bin"]
    assert files(tmp_path) == [f"{registry.name}.json", f"{registry.name}.lock"]  # only ours
    registry.close()


def test_a_live_process_uploads_are_left_alone(tmp_path, children):
    children(tmp_path, {"video/raw.bin": "id-1"}, die=False)
    before = {name: (tmp_path / name).read_bytes() for name in files(tmp_path)}
    offered = Offered()
    registry = Registry(tmp_path, DEST)
    registry.reclaim(offered)
    assert offered.ids == []
    registry.close()
    assert {name: (tmp_path / name).read_bytes() for name in files(tmp_path)} == before


def test_a_live_registry_in_this_same_process_is_left_alone(tmp_path):
    # flock locks belong to open files, not processes: a second registry here (the tests
    # build several apps) can't take the first one's lock either.
    first = Registry(tmp_path, DEST)
    first.started("a", "id-1")
    Registry(tmp_path, DEST).reclaim(offered := Offered())
    assert offered.ids == []
    first.close()


def test_uploads_that_could_not_be_aborted_stay_recorded_for_the_next_start(tmp_path, children):
    dead = children(tmp_path, {"a": "id-1", "b": "id-2", "c": "id-3"}, die=True)
    Registry(tmp_path, DEST).reclaim(Offered(keep=("id-2",)))
    Registry(tmp_path, DEST).reclaim(offered := Offered())
    assert offered.ids == ["id-2"]
    assert offered.calls[0][1].pid == dead.pid
    Registry(tmp_path, DEST).reclaim(none_left := Offered())
    assert none_left.ids == []


def test_another_destination_uploads_are_left_for_its_own_process(tmp_path, children):
    children(tmp_path, {"a": "id-1"}, die=True, destination="https://s3.amazonaws.com/other")
    before = files(tmp_path)
    ours = Registry(tmp_path, DEST)
    ours.reclaim(offered := Offered())
    ours.close()
    assert offered.ids == []
    assert files(tmp_path) == before
    Registry(tmp_path, "https://s3.amazonaws.com/other").reclaim(theirs := Offered())
    assert theirs.ids == ["id-1"]


def test_a_file_that_is_no_registry_is_left_alone_with_a_warning(tmp_path, warnings):
    (tmp_path / "stranger.json").write_text("{not json")
    Registry(tmp_path, DEST).reclaim(offered := Offered())
    assert offered.ids == []
    assert (tmp_path / "stranger.json").read_text() == "{not json"
    assert any("stranger.json: not a registry of multipart uploads (not JSON" in w for w in warnings)


def test_a_dead_process_lock_file_without_uploads_is_removed(tmp_path):
    (tmp_path / "123-deadbeef.lock").touch()  # died before recording anything
    registry = Registry(tmp_path, DEST)
    registry.reclaim(Offered())
    assert "123-deadbeef.lock" not in files(tmp_path)
    registry.close()


def test_a_registry_file_whose_lock_file_is_gone_counts_as_dead(tmp_path):
    record = Record(DEST, OWNER, (Upload("a", "id-1", "2026-11-27T21:01:23Z"),))
    (tmp_path / "42-cafe.json").write_text(encode(record))
    Registry(tmp_path, DEST).reclaim(offered := Offered())
    assert offered.ids == ["id-1"]
    assert [name for name in files(tmp_path) if name.startswith("42-cafe")] == []


# --- a state directory that can't be written -----------------------------------------------------


def test_an_unusable_directory_warns_once_and_records_nothing(tmp_path, warnings):
    (tmp_path / "a-file").write_text("")
    registry = Registry(tmp_path / "a-file" / "uploads", DEST)  # even root can't make a directory there
    first = registry.started("a", "id-1")
    registry.finished(first)
    registry.started("b", "id-2")
    registry.reclaim(offered := Offered())
    registry.close()
    assert offered.ids == []
    assert len(warnings) == 1
    assert "is not usable" in warnings[0] and "can't be cleaned up" in warnings[0]
    assert "lifecycle rule" in warnings[0]


def test_no_directory_records_nothing_and_says_nothing(warnings):
    registry = Registry(None, DEST)
    registry.finished(registry.started("a", "id-1"))
    registry.reclaim(offered := Offered())
    registry.close()
    assert (offered.ids, warnings) == ([], [])


# --- the copier's use of it, over the in-memory store ---------------------------------------------

MiB = 1024 * 1024


@pytest.fixture
def copier(tmp_path):
    """A copier recording into ``tmp_path``, with 5 MiB parts, over in-memory stores."""
    settings = config.replace(config.load({"S3_SYNC_ACCESS_KEY": "a", "S3_SYNC_SECRET_KEY": "b",
                                           "S3_SYNC_BUCKET": "mirror"}),
                              multipart_threshold=5 * MiB, multipart_chunk_size=5 * MiB, retry_delay=0.0)
    made = Copier(MemoryStore("source"), MemoryStore("destination"), settings,
                  RetryPolicy(2, 0.0, stop=threading.Event()), uploads=Registry(tmp_path, DEST))
    yield made
    made.close()


def recorded(registry: Registry) -> list[str]:
    assert registry.path is not None
    return [u.upload_id for u in decode(registry.path.read_text()).uploads] if registry.path.exists() else []


def test_a_multipart_copy_is_recorded_before_its_first_part_until_it_completes(copier):
    seen: list[list[str]] = []
    real = copier.dest.upload_part

    def upload_part(key, upload_id, number, data):
        seen.append(recorded(copier.uploads))
        return real(key, upload_id, number, data)

    copier.dest.upload_part = upload_part
    copier.source.add("big", os.urandom(12 * MiB))
    assert copier.copy("big") is not None
    assert seen == [["upload-1"]] * 3  # on disk while every part went
    assert recorded(copier.uploads) == []
    assert copier.dest.incomplete_uploads() == {}


def test_an_aborted_copy_is_forgotten(copier):
    copier.source.add("big", os.urandom(12 * MiB))
    copier.dest.fail("put part", "big", PermanentError("destination", "put part", "big", "InvalidPart"))
    with pytest.raises(PermanentError):
        copier.copy("big")
    assert copier.dest.incomplete_uploads() == {}
    assert recorded(copier.uploads) == []


def test_an_abort_that_failed_is_tried_again_by_the_next_sweep(copier):
    copier.source.add("big", os.urandom(12 * MiB))
    down = TransientError("destination", "abort multipart", "big", "cannot connect")
    copier.dest.fail("put part", "big", PermanentError("destination", "put part", "big", "InvalidPart"))
    copier.dest.fail("abort multipart", "big", down, times=2)  # both of the copier's attempts
    with pytest.raises(PermanentError):
        copier.copy("big")
    assert copier.dest.incomplete_uploads() == {"upload-1": "big"}
    assert recorded(copier.uploads) == ["upload-1"]
    assert copier.abort_abandoned_uploads() == 1
    assert copier.dest.incomplete_uploads() == {}
    assert recorded(copier.uploads) == []


def dead_process_upload(copier, tmp_path, children, key: str = "big") -> str:
    """An upload at the destination that a replicator process started and recorded
    before it was SIGKILLed."""
    src = SourceObject(key, 12 * MiB, "etag")
    upload_id = copier.dest.start_multipart(key, src, None)
    children(tmp_path, {key: upload_id}, die=True)
    return upload_id


def test_the_sweep_aborts_a_dead_process_upload_and_never_anyone_elses(copier, tmp_path, children):
    foreign = copier.dest.start_multipart("big", SourceObject("big", 1, "e"), None)  # someone's own, same key
    ours = dead_process_upload(copier, tmp_path, children)
    live = copier.dest.start_multipart("big", SourceObject("big", 1, "e"), None)
    children(tmp_path, {"big": live}, die=False)  # a replicator still running
    before = REGISTRY.get_sample_value("replicator_orphaned_uploads_aborted_total")
    assert copier.abort_abandoned_uploads() == 1
    assert copier.dest.incomplete_uploads() == {foreign: "big", live: "big"}
    assert ours not in copier.dest.incomplete_uploads()
    assert REGISTRY.get_sample_value("replicator_orphaned_uploads_aborted_total") == before + 1
    assert copier.abort_abandoned_uploads() == 0  # forgotten once aborted


def test_a_dry_run_names_what_it_would_abort_and_aborts_nothing(copier, tmp_path, children):
    ours = dead_process_upload(copier, tmp_path, children)
    infos: list[str] = []
    sink = logger.add(lambda message: infos.append(str(message)), level="INFO", format="{message}")
    try:
        assert copier.abort_abandoned_uploads(dry_run=True) == 0
    finally:
        logger.remove(sink)
    assert copier.dest.incomplete_uploads() == {ours: "big"}
    assert any(line.startswith(f"big: would abort unfinished multipart upload {ours}") for line in infos)
    assert copier.abort_abandoned_uploads() == 1  # still recorded


def test_an_upload_gone_already_is_forgotten_without_counting(copier, tmp_path, children):
    ours = dead_process_upload(copier, tmp_path, children)
    copier.dest.abort_multipart("big", ours)  # a lifecycle rule was quicker
    assert copier.abort_abandoned_uploads() == 0
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(copier.uploads.name)] == []


def test_with_the_destination_down_the_sweep_stops_and_keeps_every_record(copier, tmp_path, children, warnings):
    dead_process_upload(copier, tmp_path, children, "a")
    dead_process_upload(copier, tmp_path, children, "b")
    copier.dest.fail("abort multipart", None, TransientError("destination", "abort multipart", "a", "cannot connect"))
    assert copier.abort_abandoned_uploads() == 0
    assert copier.dest.ops("abort multipart") == ["a"]  # one try, then it waits for the next start
    assert any("left for the next reconcile" in w and "lifecycle rule" in w for w in warnings)
    copier.dest.heal()
    assert copier.abort_abandoned_uploads() == 2
    assert copier.dest.incomplete_uploads() == {}


def test_a_refused_abort_keeps_the_record_and_goes_on_with_the_others(copier, tmp_path, children):
    dead_process_upload(copier, tmp_path, children, "a")
    dead_process_upload(copier, tmp_path, children, "b")
    copier.dest.fail("abort multipart", "a", PermanentError("destination", "abort multipart", "a", "AccessDenied"))
    assert copier.abort_abandoned_uploads() == 1
    assert copier.dest.incomplete_uploads() == {"upload-1": "a"}
    copier.dest.heal()
    assert copier.abort_abandoned_uploads() == 1
