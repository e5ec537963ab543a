"""S3Destination's choices seen on the wire by a scripted loopback peer: what a PUT carries
(integrity checks, lock settings, encryption and storage class)."""

from __future__ import annotations

import base64
import hashlib
import ssl
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from replicator import config
from replicator.model import ObjectLock, SourceObject
from replicator.stores.destination import S3Destination
from tests.tls import make_ca

ENV = {
    "MINIO_ENDPOINT": "http://127.0.0.1:9",
    "MINIO_ACCESS_KEY": "source-key",
    "MINIO_SECRET_KEY": "source-secret",
    "MINIO_BUCKET": "src",
    "S3_SYNC_ACCESS_KEY": "dest-key",
    "S3_SYNC_SECRET_KEY": "dest-secret",
    "S3_SYNC_BUCKET": "dst",
}
SSE_C_KEY = base64.b64encode(bytes(range(32))).decode()
LOCKED = ObjectLock("GOVERNANCE", datetime.now(timezone.utc) + timedelta(days=1), False)


class _Recorder(BaseHTTPRequestHandler):
    """Answers every PUT as S3 does (200 with an ETag) and keeps its headers."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_PUT(self) -> None:  # http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(200)
        self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(params=["http", "https"])
def recorder(request, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    env = {}
    if request.param == "https":
        authority = make_ca(str(tmp_path))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(authority.certs_dir / "public.crt", authority.certs_dir / "private.key")
        server.socket = context.wrap_socket(server.socket, server_side=True)
        env["S3_SYNC_CA_BUNDLE"] = str(authority.ca_file)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.seen = []
    yield {**env, "S3_SYNC_ENDPOINT": f"{request.param}://127.0.0.1:{server.server_address[1]}"}
    server.shutdown()


BODY = b"the object's bytes"


@pytest.mark.parametrize("lock", [None, LOCKED], ids=["unlocked", "locked"])
def test_each_put_carries_the_integrity_check_its_transport_needs(recorder, lock):
    """Over plain HTTP the signed SHA-256 is the check; over HTTPS the payload goes
    unsigned and Content-MD5 is. A write with lock settings carries Content-MD5 always,
    as providers demand."""
    dest = S3Destination(config.load({**ENV, **recorder}))
    src = SourceObject("k", len(BODY), "etag", **({"lock": lock} if lock else {}))
    dest.put("k", BODY, src, None)
    (headers,) = _Recorder.seen
    md5 = base64.b64encode(hashlib.md5(BODY, usedforsecurity=False).digest()).decode()
    if recorder["S3_SYNC_ENDPOINT"].startswith("https"):
        assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert headers["content-md5"] == md5
    else:
        assert headers["x-amz-content-sha256"] == hashlib.sha256(BODY).hexdigest()
        assert headers.get("content-md5") == (md5 if lock else None)
    assert "x-amz-object-lock-mode" in headers if lock else "x-amz-object-lock-mode" not in headers


def put_through(server: dict[str, str], env: dict[str, str]) -> dict[str, str]:
    """The headers of one PUT with ``env``'s settings, after checking those of the object."""
    dest = S3Destination(config.load({**ENV, **server, **env}))
    dest.put("k", b"bytes", SourceObject("k", 5, "etag", content_type="text/plain", metadata={"a": "b"}), None)
    (headers,) = _Recorder.seen
    assert headers["content-type"] == "text/plain" and headers["x-amz-meta-a"] == "b"
    assert headers["x-amz-meta-replicator-source-etag"] == "etag"
    return headers


def test_a_put_carries_sse_kms_and_the_storage_class(recorder):
    headers = put_through(recorder, {"S3_SYNC_SSE": "aws:kms", "S3_SYNC_SSE_KMS_KEY_ID": "alias/b",
                                     "S3_SYNC_STORAGE_CLASS": "STANDARD_IA"})
    assert (headers["x-amz-server-side-encryption"], headers["x-amz-server-side-encryption-aws-kms-key-id"],
            headers["x-amz-storage-class"]) == ("aws:kms", "alias/b", "STANDARD_IA")


@pytest.mark.parametrize("recorder", ["https"], indirect=True)  # over http it is refused (test_encryption.py)
def test_a_put_carries_the_customer_key(recorder):
    headers = put_through(recorder, {"S3_SYNC_SSE_C_KEY": SSE_C_KEY})
    key = base64.b64decode(SSE_C_KEY)
    sse_c = {name: headers.get(f"x-amz-server-side-encryption-customer-{name}") for name in ("algorithm", "key",
                                                                                          "key-md5")}
    assert sse_c == {"algorithm": "AES256", "key": SSE_C_KEY,
                     "key-md5": base64.b64encode(hashlib.md5(key, usedforsecurity=False).digest()).decode()}
    assert "x-amz-server-side-encryption" not in headers
