"""Fixtures of the JetStream tests: per module, a nats-server and a MinIO source
publishing its buckets' events to it."""

from __future__ import annotations

import pytest

from tests.conftest import SOURCE_PASSWORD, SOURCE_USER
from tests.servers import MinioServer, NatsServer, minio_nats_env

SUBJECT = "minio.events"


@pytest.fixture(scope="module")
def nats_server():
    server = NatsServer().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def publishing_minio(nats_server, tmp_path_factory):
    """A MinIO source whose NATS target publishes to ``SUBJECT``."""
    queue = tmp_path_factory.mktemp("minio-nats-queue")
    server = MinioServer("source-nats", SOURCE_USER, SOURCE_PASSWORD,
                         env=minio_nats_env(nats_server, SUBJECT, queue)).start()
    yield server
    server.close()
