"""The registry of multipart uploads in flight: which incomplete uploads at the
destination are replicator's own, so that the uploads a crashed process left behind
are aborted later, and never anyone else's.

The destination can't tell. ListMultipartUploads shows an incomplete upload's key,
id and initiation time, never its metadata, and others may write to the same bucket
with the same credentials: a ``run`` sidecar and an operator's ``reconcile``, several
replicas, a person's own upload of a large file. "Initiated before I started, under a
key I mirror" would abort a live process's upload. So each process writes down the
uploads it starts, in ``S3_SYNC_STATE_DIR/uploads/``::

    <owner>.lock   flock()ed by its process for the whole of its life
    <owner>.json   that process's uploads in flight: destination, key, upload id, time

A record is written and fsynced as soon as CreateMultipartUpload answers, before the
first part is sent, and dropped once the upload is completed or aborted. The kernel
releases a flock when its process dies, however it dies (SIGKILL, the OOM killer, a
power cut), so a lock that can be taken belongs to a dead process: the uploads its
file lists were replicator's, for the destination it names, and nobody else's. The
upload ids are the destination's own, never reused, so aborting them can't touch
another upload. A lock that can't be taken belongs to a live process, whose uploads
are left alone.

Not covered, and the reason a lifecycle rule for incomplete uploads stays the last net:
an upload whose CreateMultipartUpload answer was lost (a timeout after the server had
started it) or arrived just before the process died, before its record was written;
and a state directory that can't be written, or is lost with its container.

flock() is local to one kernel: processes sharing a directory on one host (containers
on one volume, included) see each other's locks; across hosts over NFS they may not,
so each host keeps its own state directory on a local disk.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

VERSION = 1
LIFECYCLE_HINT = ("give the destination bucket a lifecycle rule that aborts incomplete multipart uploads "
                  "(AbortIncompleteMultipartUpload) after a day or so")


@dataclass(frozen=True)
class Upload:
    key: str
    upload_id: str
    started: str  # UTC, ISO 8601 to the second: when CreateMultipartUpload answered


@dataclass(frozen=True)
class Owner:
    """The process a registry file belongs to, as its log lines would name it."""

    pid: int
    host: str
    since: str  # when it started

    def __str__(self) -> str:
        return f"replicator pid {self.pid} on {self.host}"


@dataclass(frozen=True)
class Record:
    """What one registry file holds."""

    destination: str
    owner: Owner
    uploads: tuple[Upload, ...]


def utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


# --- the file format (pure) --------------------------------------------------------


def encode(record: Record) -> str:
    return json.dumps({
        "version": VERSION,
        "destination": record.destination,
        "owner": {"pid": record.owner.pid, "host": record.owner.host, "since": record.owner.since},
        "uploads": [{"key": u.key, "upload_id": u.upload_id, "started": u.started} for u in record.uploads],
    }, indent=1) + "\n"


def decode(text: str) -> Record:
    """A registry file's contents; ValueError saying what is wrong with them."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("version") != VERSION:
        raise ValueError(f"version {data.get('version')!r}, not {VERSION}")
    destination, owner, uploads = data.get("destination"), data.get("owner"), data.get("uploads")
    if not isinstance(destination, str) or not destination:
        raise ValueError("no destination")
    if not (isinstance(owner, dict) and isinstance(owner.get("pid"), int)
            and isinstance(owner.get("host"), str) and isinstance(owner.get("since"), str)):
        raise ValueError("no owner (pid, host, since)")
    if not isinstance(uploads, list):
        raise ValueError("no list of uploads")
    parsed = []
    for entry in uploads:
        if not (isinstance(entry, dict) and all(isinstance(entry.get(f), str) and entry[f]
                                                for f in ("key", "upload_id", "started"))):
            raise ValueError(f"an upload without key, upload_id and started: {entry!r}")
        parsed.append(Upload(entry["key"], entry["upload_id"], entry["started"]))
    return Record(destination, Owner(owner["pid"], owner["host"], owner["since"]), tuple(parsed))


# --- files ---------------------------------------------------------------------------


def _write_durably(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: a reader sees the old contents or the new, never
    a mix, and once this returns the new contents survive a power cut."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(*paths: Path) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _try_lock(path: Path) -> int | None:
    """An fd holding ``path``'s exclusive flock, or None when a live process holds it
    (or the file can't be opened). O_CREAT: a registry file whose lock file is gone
    still needs a lock, so that two processes never clean up the same file at once."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held by a live process
        os.close(fd)
        return None
    return fd


# Aborts one upload a dead process left; True when it is gone (aborted now, or already
# gone), False to keep it recorded for the next start.
Abort = Callable[[Upload, Owner], bool]


class Registry:
    """This process's registry file, and the sweep of dead processes' files.

    ``directory`` None records nothing (unit tests that don't look). Every method is
    safe from any thread and never raises: a registry that can't be written costs the
    clean-up after a crash, not the replication, and says so once."""

    def __init__(self, directory: Path | str | None, destination: str, *, clock: Callable[[], float] = time.time):
        self.directory = Path(directory) if directory is not None else None
        self.destination = destination
        self._clock = clock
        self.owner = Owner(os.getpid(), socket.gethostname(), utc(clock()))
        self.name = f"{self.owner.pid}-{secrets.token_hex(4)}"
        self._uploads: dict[str, Upload] = {}  # by upload id
        self._abandoned: set[str] = set()  # ids whose abort failed: the next sweep tries again
        self._fd: int | None = None  # holds our lock file's flock
        self._usable: bool | None = None  # None: not opened yet
        self._warned = False
        self._lock = threading.Lock()

    # -- this process's uploads -------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        return self.directory / f"{self.name}.json" if self.directory is not None else None

    def started(self, key: str, upload_id: str) -> Upload:
        """Record an upload CreateMultipartUpload has just started. Returns once the
        record is on disk (or the registry has said it can't keep one)."""
        upload = Upload(key, upload_id, utc(self._clock()))
        with self._lock:
            self._uploads[upload_id] = upload
            if self._open():
                self._save(f"{key}: could not record multipart upload {upload_id}")
        return upload

    def finished(self, upload: Upload) -> None:
        """The upload was completed or aborted: forget it. (Written without waiting for
        a new record to matter: at worst a power cut brings the record back, and the
        next start's abort of an upload that is gone changes nothing.)"""
        with self._lock:
            if self._uploads.pop(upload.upload_id, None) is None:
                return
            self._abandoned.discard(upload.upload_id)
            if self._usable:
                self._save(f"{upload.key}: could not update the registry of multipart uploads")

    def abandoned(self, upload: Upload) -> None:
        """Its abort failed: keep the record, and let the next sweep try again."""
        with self._lock:
            if upload.upload_id in self._uploads:
                self._abandoned.add(upload.upload_id)

    def close(self) -> None:
        """Remove this process's files, unless uploads are still recorded (aborts that
        failed, copies that didn't stop): those stay for the next start, and the lock
        goes (so it can take them)."""
        with self._lock:
            if self._fd is None:
                return
            assert self.directory is not None and self.path is not None
            if self._uploads:
                logger.warning("{} multipart uploads at the destination are unfinished; recorded in {} for the "
                               "next start to abort", len(self._uploads), self.path)
            else:
                _unlink(self.path, self.path.with_name(self.path.name + ".tmp"), self.directory / f"{self.name}.lock")
            os.close(self._fd)
            self._fd = None
            self._usable = False

    # -- the sweep --------------------------------------------------------------------------

    def reclaim(self, abort: Abort) -> None:
        """Offer ``abort`` every upload that no live process of replicator owns: this
        process's own abandoned ones, then those recorded by dead processes for this
        destination. Files of live processes, and of other destinations, are left as
        they are."""
        with self._lock:
            if not self._open():
                return
            mine = [self._uploads[i] for i in sorted(self._abandoned) if i in self._uploads]
        for upload in mine:
            if abort(upload, self.owner):
                self.finished(upload)
        assert self.directory is not None
        try:
            names = {p.name[:-len(".lock")] for p in self.directory.glob("*.lock")}
            names |= {p.name[:-len(".json")] for p in self.directory.glob("*.json")}
        except OSError as exc:
            logger.warning("{}: can't be listed ({}); uploads of crashed runs are not cleaned up", self.directory, exc)
            return
        for name in sorted(names - {self.name}):
            self._reclaim_file(name, abort)

    def _reclaim_file(self, name: str, abort: Abort) -> None:
        assert self.directory is not None
        path, lock = self.directory / f"{name}.json", self.directory / f"{name}.lock"
        fd = _try_lock(lock)
        if fd is None:
            return  # a live process's
        try:
            try:
                text = path.read_text()
            except FileNotFoundError:
                # It recorded nothing (died at start, or between its last removals), or
                # another process cleaned it up a moment ago.
                _unlink(path.with_name(path.name + ".tmp"), lock)
                return
            try:
                record = decode(text)
            except ValueError as exc:
                logger.warning("{}: not a registry of multipart uploads ({}); left alone", path, exc)
                return
            if record.destination != self.destination:
                return  # another bucket's: the process configured for it cleans it up
            kept = tuple(upload for upload in record.uploads if not abort(upload, record.owner))
            if kept:
                if kept != record.uploads:
                    _write_durably(path, encode(Record(record.destination, record.owner, kept)))
                return
            _unlink(path, path.with_name(path.name + ".tmp"), lock)
        except OSError as exc:
            logger.warning("{}: {}; its uploads are tried again at the next start", path, exc)
        finally:
            os.close(fd)  # the lock goes with it

    # -- internals (self._lock held) ------------------------------------------------------

    def _open(self) -> bool:
        """Create and lock this process's file, once. The lock file appears under its
        name already locked (created under another, renamed): a sweep that found it
        unlocked would take its owner for dead."""
        if self._usable is not None:
            return self._usable
        if self.directory is None:
            self._usable = False
            return False
        tmp = self.directory / f"{self.name}.lock.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(tmp, self.directory / f"{self.name}.lock")
            except OSError:
                os.close(fd)
                _unlink(tmp)
                raise
            self._fd = fd
            self._usable = True
            assert self.path is not None
            _write_durably(self.path, encode(self._record()))
        except OSError as exc:
            self._usable = False
            self._warn(f"S3_SYNC_STATE_DIR: {self.directory} is not usable ({exc})")
        return self._usable

    def _record(self) -> Record:
        return Record(self.destination, self.owner, tuple(self._uploads.values()))

    def _save(self, what: str) -> None:
        assert self.path is not None
        try:
            _write_durably(self.path, encode(self._record()))
        except OSError as exc:
            self._warn(f"{what} in {self.path} ({exc})")

    def _warn(self, problem: str) -> None:
        if self._warned:
            return
        self._warned = True
        logger.warning("{}: replication goes on, but multipart uploads left by a crash can't be cleaned up at the "
                       "next start; {}", problem, LIFECYCLE_HINT)
