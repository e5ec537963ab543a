"""One side's HTTP (stores/transport.py: a urllib3 pool, botocore's SigV4 signer)
against real MinIO servers: signed requests that land, a body other than the signed
one refused, connection reuse, a server restart under kept-alive connections, error
documents, a dead endpoint, and TLS verification (a MinIO serving a certificate from a
throwaway CA, tests/tls.py), end to end through a reconcile."""

from __future__ import annotations

import io
import os
import re

import pytest
from botocore.credentials import Credentials
from minio import Minio

from replicator.errors import FatalError, TransientError
from replicator.stores import transport
from replicator.stores.transport import Transport
from tests.conftest import run_cli, unique_bucket
from tests.servers import MinioServer, free_port
from tests.tls import make_ca

USER, PASSWORD = "http-admin", "http-secret-Tz8Qm1"


@pytest.fixture(scope="module")
def own_server():
    """A server of this module's own, since one test restarts it."""
    server = MinioServer("http-client", USER, PASSWORD).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tls():
    return make_ca()


@pytest.fixture(scope="module")
def tls_server(tls):
    server = MinioServer("tls", USER, PASSWORD, tls=tls).start()
    yield server
    server.close()


def _minio(server: MinioServer, tls=None) -> Minio:
    import urllib3

    http = urllib3.PoolManager(ca_certs=str(tls.ca_file)) if tls else None
    return Minio(server.host, USER, PASSWORD, secure=bool(tls), http_client=http)


def _transport(server: MinioServer | str, **kwargs) -> Transport:
    origin = server if isinstance(server, str) else server.endpoint
    options = {"verify": True, "ca_bundle": None, **kwargs}
    return Transport("source", origin, region="us-east-1", credentials=Credentials(USER, PASSWORD),
                     connect_timeout=2, read_timeout=30, maxsize=4, **options)


def _get(client: Transport, bucket: str, key: str, stream: bool = False):
    return client.request("get", key, "GET", transport.object_path(f"/{bucket}", key), stream=stream)


def _put(client: Transport, bucket: str, key: str, body: bytes):
    return client.request("put", key, "PUT", transport.object_path(f"/{bucket}", key), body=body)


def _idle(client: Transport) -> int:
    """Connections idle in the pool of the client's one origin (urllib3 fills the
    free slots of its queue with None)."""
    return sum(1 for conn in list(client.pool.connection_from_url(client.origin).pool.queue) if conn is not None)


def _bucket_with(server: MinioServer, objects: dict[str, bytes], tls=None) -> str:
    bucket = unique_bucket("http")
    mc = _minio(server, tls)
    mc.make_bucket(bucket)
    for key, data in objects.items():
        mc.put_object(bucket, key, io.BytesIO(data), len(data))
    return bucket


def test_a_signed_put_lands_with_its_bytes(own_server):
    bucket = _bucket_with(own_server, {})
    key = "odd key/ü+%?#~.bin"
    response = _put(_transport(own_server), bucket, key, b"payload-1234")
    assert response.status == 200, response.data
    assert _minio(own_server).get_object(bucket, key).read() == b"payload-1234"


def test_a_body_that_is_not_the_signed_one_is_refused(own_server):
    """Over plain HTTP the signed SHA-256 is the only integrity check: a body changed
    after signing (a corrupting middlebox, or a bug) must be refused, not stored."""
    bucket = _bucket_with(own_server, {})
    client = _transport(own_server)
    send = client.pool.urlopen
    client.pool.urlopen = lambda method, url, body=None, **kw: send(method, url, body=bytes(reversed(body)), **kw)
    response = _put(client, bucket, "k", b"abcdefgh")
    assert response.status == 400
    assert transport.raw_error("destination", "put", "k", response).code == "XAmzContentSHA256Mismatch"
    assert list(_minio(own_server).list_objects(bucket)) == []


def test_a_connection_is_reused_once_the_body_is_read(own_server):
    bucket = _bucket_with(own_server, {"a": b"alpha", "b": b"beta"})
    client = _transport(own_server)
    assert _get(client, bucket, "a").data == b"alpha"
    assert _idle(client) == 1
    pool = client.pool.connection_from_url(client.origin)
    assert _get(client, bucket, "b").data == b"beta"
    assert pool.num_connections == 1  # the same connection, back in the pool


def test_a_body_larger_than_one_read_arrives_whole(own_server):
    data = os.urandom(3 * 1024 * 1024 + 17)
    bucket = _bucket_with(own_server, {"big": data})
    assert _get(_transport(own_server), bucket, "big").data == data


def test_a_server_restart_under_kept_alive_connections_is_invisible(own_server):
    """The server closes every idle connection when it stops. urllib3 finds a pooled
    connection dropped before using it and opens a new one: no error, no retry delay."""
    bucket = _bucket_with(own_server, {"k": b"value"})
    client = _transport(own_server)
    assert _get(client, bucket, "k").data == b"value"
    own_server.stop()
    own_server.start()
    assert _get(client, bucket, "k").data == b"value"


def test_an_error_document_is_mapped_with_the_servers_message(own_server):
    bucket = _bucket_with(own_server, {})
    response = _get(_transport(own_server), bucket, "missing")
    assert response.status == 404
    error = transport.raw_error("source", "get", "missing", response)
    assert error.code == "NoSuchKey" and error.server_message


def test_a_dead_endpoint_is_a_transient_connect_failure():
    client = _transport(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientError, match=re.escape("cannot connect to http://127.0.0.1:")):
        _get(client, "bucket", "k")


# -- TLS --------------------------------------------------------------------------

def test_tls_is_verified_against_the_ca_bundle(tls, tls_server):
    bucket = _bucket_with(tls_server, {"k": b"over tls"}, tls)
    assert _get(_transport(tls_server, ca_bundle=str(tls.ca_file)), bucket, "k").data == b"over tls"


def test_an_untrusted_certificate_is_refused_by_default(tls, tls_server):
    bucket = _bucket_with(tls_server, {"k": b"x"}, tls)
    with pytest.raises(FatalError) as raised:
        _get(_transport(tls_server), bucket, "k")  # certifi's roots: the test CA is not among them
    assert "certificate verify failed" in str(raised.value) and tls_server.endpoint in str(raised.value)


def test_verification_can_be_switched_off(tls, tls_server):
    bucket = _bucket_with(tls_server, {"k": b"unverified"}, tls)
    assert _get(_transport(tls_server, verify=False), bucket, "k").data == b"unverified"


def _tls_env(server: MinioServer, source_bucket: str, dest_bucket: str) -> dict[str, str]:
    # Both sides are the one TLS server: the point is every client's TLS settings.
    return {
        "MINIO_ENDPOINT": server.endpoint, "MINIO_ACCESS_KEY": USER, "MINIO_SECRET_KEY": PASSWORD,
        "MINIO_BUCKET": source_bucket,
        "S3_SYNC_ENDPOINT": server.endpoint, "S3_SYNC_ACCESS_KEY": USER, "S3_SYNC_SECRET_KEY": PASSWORD,
        "S3_SYNC_BUCKET": dest_bucket, "S3_SYNC_RETRY_DELAY": "0.05", "S3_SYNC_MAX_RETRIES": "2",
        "S3_SYNC_CONNECT_TIMEOUT": "2", "NO_COLOR": "1",
    }


def test_a_reconcile_over_tls_uses_the_configured_ca_bundles(tls, tls_server):
    objects = {"a.txt": b"a" * 10, "dir/b.bin": os.urandom(5000)}
    source = _bucket_with(tls_server, objects, tls)
    dest = _bucket_with(tls_server, {}, tls)
    env = _tls_env(tls_server, source, dest)

    refused = run_cli(env, "reconcile")
    assert refused.code == 1, refused.output
    assert "certificate verify failed" in refused.output and "check MINIO_CA_BUNDLE" in refused.output

    dest_refused = run_cli({**env, "MINIO_CA_BUNDLE": str(tls.ca_file)}, "reconcile")
    assert dest_refused.code == 1, dest_refused.output
    assert "destination: check bucket" in dest_refused.output
    assert "certificate verify failed" in dest_refused.output and "check S3_SYNC_CA_BUNDLE" in dest_refused.output

    trusted = run_cli({**env, "MINIO_CA_BUNDLE": str(tls.ca_file), "S3_SYNC_CA_BUNDLE": str(tls.ca_file)},
                      "reconcile")
    assert trusted.code == 0, trusted.output
    mc = _minio(tls_server, tls)
    assert {o.object_name: mc.get_object(dest, o.object_name).read()
            for o in mc.list_objects(dest, recursive=True)} == objects

