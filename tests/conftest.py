"""Shared fixtures: real servers once per session, a fresh bucket pair per test.

``pair`` is parametrized over the destinations: a second MinIO, and moto's server
(AWS-flavoured). A test that takes ``pair`` runs against both. ``minio_kms`` is a third
MinIO, over HTTPS and with a KMS key, for destination encryption (``kms_pair``).
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import boto3
import pytest
from botocore.config import Config
from minio import Minio

from replicator import config
from tests.servers import PROXY_VARIABLES, MinioServer, MotoServer, replicator_environ

SOURCE_USER, SOURCE_PASSWORD = "source-admin", "source-secret-Kq7Zp2"
DEST_USER, DEST_PASSWORD = "dest-admin", "dest-secret-Wm4Rt9"
MOTO_KEY, MOTO_SECRET = "moto-access-key", "moto-secret-Hx3Jv8"

_counter = itertools.count()


@pytest.fixture(scope="session")
def minio_source() -> Iterator[MinioServer]:
    server = MinioServer("source", SOURCE_USER, SOURCE_PASSWORD).start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def minio_dest() -> Iterator[MinioServer]:
    server = MinioServer("dest", DEST_USER, DEST_PASSWORD).start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    yield server
    server.close()


def unique_bucket(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


@dataclass
class Pair:
    """A source bucket and a destination bucket, with clients to set up and inspect them."""

    kind: str  # "minio" or "moto"
    env: dict[str, str]
    source: Minio
    source_bucket: str
    dest: object  # a boto3 S3 client
    dest_bucket: str
    servers: dict = field(default_factory=dict)

    def settings(self, **overrides) -> config.Settings:
        env = {**self.env, **{k: str(v) for k, v in overrides.items()}}
        return config.load(env)

    def with_object_lock(self, *, dest: bool = True) -> Pair:
        """A fresh pair on the same servers: the source bucket with object lock (which
        makes it versioned), the destination bucket with it too unless ``dest`` is False."""
        source_bucket = unique_bucket("src-lock")
        self.source.make_bucket(source_bucket, object_lock=True)
        dest_bucket = unique_bucket("dst-lock" if dest else "dst")
        self.dest.create_bucket(Bucket=dest_bucket, **({"ObjectLockEnabledForBucket": True} if dest else {}))
        env = {**self.env, "MINIO_BUCKET": source_bucket, "S3_SYNC_BUCKET": dest_bucket}
        return dataclasses.replace(self, env=env, source_bucket=source_bucket, dest_bucket=dest_bucket)

    def dest_keys(self) -> list[str]:
        keys = []
        for page in self.dest.get_paginator("list_objects_v2").paginate(Bucket=self.dest_bucket):
            keys.extend(item["Key"] for item in page.get("Contents", ()))
        return keys

    def source_keys(self) -> list[str]:
        return [o.object_name for o in self.source.list_objects(self.source_bucket, recursive=True)]

    def dest_body(self, key: str) -> bytes:
        return self.dest.get_object(Bucket=self.dest_bucket, Key=key)["Body"].read()

    def source_body(self, key: str) -> bytes:
        response = self.source.get_object(self.source_bucket, key)
        try:
            return response.read(decode_content=False)
        finally:
            response.close()
            response.release_conn()

    def dest_snapshot(self) -> dict[str, bytes]:
        return {key: self.dest_body(key) for key in self.dest_keys()}

    def source_snapshot(self) -> dict[str, bytes]:
        return {key: self.source_body(key) for key in self.source_keys()}


def boto_client(endpoint: str, key: str, secret: str, *, verify: str | None = None):
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1",
        verify=verify,
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"),
    )


@pytest.fixture(params=["minio", "moto"])
def pair(request, minio_source: MinioServer, tmp_path) -> Pair:
    if request.param == "minio":
        server = request.getfixturevalue("minio_dest")
        endpoint, key, secret = server.endpoint, DEST_USER, DEST_PASSWORD
    else:
        server = request.getfixturevalue("moto_server")
        endpoint, key, secret = server.endpoint, MOTO_KEY, MOTO_SECRET
    return make_pair(request.param, minio_source, server, boto_client(endpoint, key, secret),
                     {"S3_SYNC_ACCESS_KEY": key, "S3_SYNC_SECRET_KEY": secret, "S3_SYNC_ENDPOINT": endpoint}, tmp_path)


def make_pair(kind: str, minio_source: MinioServer, server, dest, dest_env: dict[str, str], tmp_path) -> Pair:
    """A fresh source bucket and a fresh destination bucket on ``server``, whose client is
    ``dest`` and whose settings are ``dest_env``."""
    source = Minio(minio_source.host, SOURCE_USER, SOURCE_PASSWORD, secure=False)
    source_bucket = unique_bucket("src")
    source.make_bucket(source_bucket)
    dest_bucket = unique_bucket("dst")
    dest.create_bucket(Bucket=dest_bucket)
    env = {
        **dest_env,
        "S3_SYNC_BUCKET": dest_bucket,
        "MINIO_ENDPOINT": minio_source.endpoint,
        "MINIO_ACCESS_KEY": SOURCE_USER,
        "MINIO_SECRET_KEY": SOURCE_PASSWORD,
        "MINIO_BUCKET": source_bucket,
        "S3_SYNC_RETRY_DELAY": "0.05",
        "S3_SYNC_CONNECT_TIMEOUT": "2",
        "S3_SYNC_READ_TIMEOUT": "10",
        # The registry of uploads in flight (uploads.py): each test its own, never the
        # machine's /var/lib/replicator.
        "S3_SYNC_STATE_DIR": str(tmp_path / "state"),
    }
    return Pair(kind, env, source, source_bucket, dest, dest_bucket, servers={"source": minio_source, "dest": server})


# MinIO's built-in KMS key (MINIO_KMS_SECRET_KEY, name:base64 of 32 bytes): SSE-S3 and
# SSE-KMS need a KMS, and SSE-C needs TLS, so this destination has both.
KMS_KEY_NAME = "replicator-test-key"


@pytest.fixture(scope="session")
def minio_kms(tmp_path_factory) -> Iterator[MinioServer]:
    from tests.tls import make_ca

    key = base64.b64encode(os.urandom(32)).decode()
    server = MinioServer("dest-kms", DEST_USER, DEST_PASSWORD, tls=make_ca(str(tmp_path_factory.mktemp("kms-tls"))),
                         env={"MINIO_KMS_SECRET_KEY": f"{KMS_KEY_NAME}:{key}"}).start()
    yield server
    server.close()


def kms_pair(minio_source: MinioServer, server: MinioServer, tmp_path) -> Pair:
    """A pair whose destination is ``minio_kms``: over HTTPS, with a KMS."""
    ca = str(server.tls.ca_file)
    dest = boto_client(server.endpoint, DEST_USER, DEST_PASSWORD, verify=ca)
    return make_pair("minio-kms", minio_source, server, dest,
                     {"S3_SYNC_ACCESS_KEY": DEST_USER, "S3_SYNC_SECRET_KEY": DEST_PASSWORD,
                      "S3_SYNC_ENDPOINT": server.endpoint, "S3_SYNC_CA_BUNDLE": ca}, tmp_path)


# --- helpers for the reconcile and CLI suites -------------------------------------

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def make_app(pair: Pair):
    """Build the in-process object graph for ``pair`` (settings overridable); closed at teardown."""
    from replicator.app import build

    apps = []

    def make(**overrides):
        app = build(pair.settings(**overrides))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def secret_values(env: dict[str, str]) -> list[str]:
    """Every credential in ``env`` (configured or the MinIO defaults)."""
    names = ("S3_SYNC_ACCESS_KEY", "S3_SYNC_SECRET_KEY", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY")
    return [env[name] for name in names if env.get(name)]


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> CliResult:
    """``python -m replicator *args`` with exactly ``env`` as its S3_SYNC_*/MINIO_* settings
    (and, unless ``env`` names one, a throwaway S3_SYNC_STATE_DIR: never the machine's).

    Every run also checks the rule that holds for all output: no credential from ``env``
    appears in stdout or stderr, whatever happened."""
    import subprocess
    import sys
    import tempfile

    clean = replicator_environ()
    with tempfile.TemporaryDirectory(prefix="replicator-state-") as state:
        proc = subprocess.run([sys.executable, "-m", "replicator", *args],
                              env={**clean, "S3_SYNC_STATE_DIR": state, **env}, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout, check=False)
    result = CliResult(proc.returncode, proc.stdout, proc.stderr)
    for secret in secret_values(env):
        assert secret not in result.output, f"a credential leaked into the output of {args}:\n{result.output}"
    return result


@pytest.fixture
def sidecars():
    """Start real sidecars (tests/sidecar.py: ``python -m replicator run``); each is
    killed at teardown if it still runs."""
    from tests.sidecar import Sidecar

    started: list[Sidecar] = []

    def start(env, **overrides) -> Sidecar:
        sidecar = Sidecar(env, **overrides).start()
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        sidecar.close()


@pytest.fixture
def in_process_cli(capfd, monkeypatch, tmp_path):
    """Run ``cli.main`` in this process, so a test can reach into the object graph (by
    patching ``replicator.app.build``). Returns (exit code, stdout, stderr). The signal
    handlers and log sink main installs are put back afterwards."""
    import signal
    import sys

    from replicator import cli
    from replicator.observability import logging as logsetup

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def main(env: dict[str, str], *args: str) -> CliResult:
        for name in list(os.environ):
            if name.startswith(("S3_SYNC_", "MINIO_", "AWS_")) or name.lower() in PROXY_VARIABLES:
                monkeypatch.delenv(name)
        for name, value in {"S3_SYNC_STATE_DIR": str(tmp_path / "state"), **env}.items():
            monkeypatch.setenv(name, value)
        code = cli.main(list(args))
        out, err = capfd.readouterr()
        return CliResult(code, out, err)

    yield main
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    logsetup.setup(stream=sys.__stderr__)  # not capfd's stream, which closes with the test
