"""The data path's raw signed requests (stores/transport.py over stores/http_client.py)
against a real MinIO.

Over plain HTTP a PUT carries no Content-MD5 unless a provider demands one: the signed
SHA-256 of the payload is the integrity check. These tests hold the server to that."""

from __future__ import annotations

import hashlib
import uuid

from minio import Minio
from minio.credentials import Credentials

from replicator.stores import transport
from replicator.stores.http_client import HttpClient
from tests.conftest import DEST_PASSWORD, DEST_USER


class _Tamper(HttpClient):
    """A client that sends a different body of the same length from the one signed:
    what a corrupting middlebox (or a bug) would do."""

    def request(self, method, path, headers, body=None):
        return super().request(method, path, headers, bytes(reversed(body)))


def _client(server, cls=HttpClient) -> HttpClient:
    return cls(server.endpoint, connect_timeout=5, read_timeout=30)


def _bucket(server) -> str:
    name = f"signed-{uuid.uuid4().hex[:10]}"
    Minio(server.host, DEST_USER, DEST_PASSWORD, secure=False).make_bucket(name)
    return name


def _put(client, bucket: str, key: str, body: bytes):
    return transport.signed_request(client, "PUT", transport.object_path(f"/{bucket}", key),
                                    region="us-east-1", credentials=Credentials(DEST_USER, DEST_PASSWORD), body=body)


def test_a_signed_put_lands_with_its_bytes(minio_dest):
    bucket = _bucket(minio_dest)
    key = "odd key/ü+%?#~.bin"
    response = _put(_client(minio_dest), bucket, key, b"payload-1234")
    assert response.status == 200
    response.release()
    got = Minio(minio_dest.host, DEST_USER, DEST_PASSWORD, secure=False).get_object(bucket, key)
    assert got.read() == b"payload-1234"


def test_a_body_that_is_not_the_signed_one_is_refused(minio_dest):
    bucket = _bucket(minio_dest)
    response = _put(_client(minio_dest, _Tamper), bucket, "k", b"abcdefgh")
    assert response.status == 400
    error = transport.raw_error("destination", "put", "k", response)
    assert error.code == "XAmzContentSHA256Mismatch"
    names = [o.object_name for o in Minio(minio_dest.host, DEST_USER, DEST_PASSWORD, secure=False).list_objects(bucket)]
    assert names == []


def test_a_sha256_taken_of_other_bytes_is_refused(minio_dest):
    # The copy hands signed_request the SHA-256 it took while the body arrived. Were it
    # not the body's, the server must refuse the PUT rather than store the bytes.
    bucket = _bucket(minio_dest)
    response = transport.signed_request(
        _client(minio_dest), "PUT", transport.object_path(f"/{bucket}", "k"), region="us-east-1",
        credentials=Credentials(DEST_USER, DEST_PASSWORD), body=b"abcdefgh",
        sha256=hashlib.sha256(b"hgfedcba").hexdigest())
    assert response.status == 400
    assert transport.raw_error("destination", "put", "k", response).code == "XAmzContentSHA256Mismatch"
    names = [o.object_name for o in Minio(minio_dest.host, DEST_USER, DEST_PASSWORD, secure=False).list_objects(bucket)]
    assert names == []
