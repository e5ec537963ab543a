"""uploads.py: the registry of multipart uploads in flight. Its file format by tables,
its files in a temporary directory, and its locks against real child processes: one
that is alive and holds its lock, one that was SIGKILLed (the kernel released it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from loguru import logger

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

