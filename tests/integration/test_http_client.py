"""The data path's HTTP client (stores/http_client.py) against real MinIO servers:
connection reuse, a server restart under kept-alive connections, bodies larger than
one read, error documents, and TLS verification (a MinIO serving a certificate from a
throwaway CA, tests/tls.py), end to end through a reconcile."""

from __future__ import annotations

import io
import os
import ssl

import pytest
from minio import Minio
from minio.credentials import Credentials

from replicator.errors import FatalError, TransientError
from replicator.stores import transport
from replicator.stores.http_client import HttpClient
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


def _get(client: HttpClient, bucket: str, key: str):
    return transport.signed_request(client, "GET", transport.object_path(f"/{bucket}", key), region="us-east-1",
                                    credentials=Credentials(USER, PASSWORD))


def _client(server: MinioServer, **kwargs) -> HttpClient:
    return HttpClient(server.endpoint, connect_timeout=5, read_timeout=30, **kwargs)


def _bucket_with(server: MinioServer, objects: dict[str, bytes], tls=None) -> str:
    bucket = unique_bucket("http")
    mc = _minio(server, tls)
    mc.make_bucket(bucket)
    for key, data in objects.items():
        mc.put_object(bucket, key, io.BytesIO(data), len(data))
    return bucket


def test_a_connection_is_reused_once_the_body_is_read(own_server):
    bucket = _bucket_with(own_server, {"a": b"alpha", "b": b"beta"})
    client = _client(own_server)
    assert _get(client, bucket, "a").read() == b"alpha"
    first = list(client._idle)
    assert len(first) == 1
    assert _get(client, bucket, "b").read() == b"beta"
    assert list(client._idle) == first  # the same connection, back in the pool


def test_a_body_larger_than_one_read_arrives_whole(own_server):
    data = os.urandom(3 * 1024 * 1024 + 17)  # several recv() calls and parser feeds
    bucket = _bucket_with(own_server, {"big": data})
    client = _client(own_server)
    assert _get(client, bucket, "big").read() == data


def test_releasing_an_unread_body_drops_the_connection(own_server):
    bucket = _bucket_with(own_server, {"big": os.urandom(2 * 1024 * 1024), "small": b"x"})
    client = _client(own_server)
    response = _get(client, bucket, "big")
    assert response.status == 200 and response.headers["content-length"] == str(2 * 1024 * 1024)
    response.release()  # what a copy does with an object above the multipart threshold
    assert len(client._idle) == 0  # never reused with a body half read
    assert _get(client, bucket, "small").read() == b"x"


def test_an_error_document_is_read_and_the_connection_kept(own_server):
    bucket = _bucket_with(own_server, {})
    client = _client(own_server)
    response = _get(client, bucket, "missing")
    assert response.status == 404
    error = transport.raw_error("source", "get", "missing", response)
    assert error.code == "NoSuchKey"
    assert len(client._idle) == 1


def test_a_server_restart_under_kept_alive_connections_is_invisible(own_server):
    """The server closes every idle connection when it stops. The next request finds
    its pooled connection dead before any answer, and is sent again on a new one,
    without the caller seeing an error or waiting out a retry delay."""
    bucket = _bucket_with(own_server, {"k": b"value"})
    client = _client(own_server)
    assert _get(client, bucket, "k").read() == b"value"
    stale = client._idle[0]
    own_server.stop()
    own_server.start()
    assert _get(client, bucket, "k").read() == b"value"
    assert list(client._idle) != [stale]


def test_a_dead_endpoint_is_a_connect_failure():
    client = HttpClient(f"http://127.0.0.1:{free_port()}", connect_timeout=2, read_timeout=2)
    with pytest.raises(OSError) as raised:
        _get(client, "bucket", "k")
    error = transport.map_transport_error("source", "get", "k", client.origin, raised.value)
    assert isinstance(error, TransientError) and "cannot connect to" in str(error)


# -- TLS --------------------------------------------------------------------------

def test_tls_is_verified_against_the_ca_bundle(tls, tls_server):
    bucket = _bucket_with(tls_server, {"k": b"over tls"}, tls)
    assert _get(_client(tls_server, ca_bundle=str(tls.ca_file)), bucket, "k").read() == b"over tls"


def test_an_untrusted_certificate_is_refused_by_default(tls, tls_server):
    bucket = _bucket_with(tls_server, {"k": b"x"}, tls)
    with pytest.raises(ssl.SSLCertVerificationError) as raised:
        _get(_client(tls_server), bucket, "k")  # certifi's roots: the test CA is not among them
    error = transport.map_transport_error("source", "get", "k", tls_server.endpoint, raised.value)
    assert isinstance(error, FatalError)
    assert "certificate verify failed" in str(error) and tls_server.endpoint in str(error)


def test_verification_can_be_switched_off(tls, tls_server):
    bucket = _bucket_with(tls_server, {"k": b"unverified"}, tls)
    assert _get(_client(tls_server, verify=False), bucket, "k").read() == b"unverified"


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

