"""HTTP plumbing shared by the adapters that speak raw HTTP: the pool (no retries:
retry.py owns them), the signed object request both adapters use on their data path,
and the mapping of connection-level failures and error responses into errors.*.

Why raw requests on the data path: every copy is one GET and one PUT, and the SDKs'
per-call machinery cost more CPU than the HTTP exchange itself (botocore 2.5-3.4 ms
per small PUT, minio-py ~0.55 ms per GET; docs/benchmarks.md). The signature is
still a library's: minio-py's SigV4 signer."""

from __future__ import annotations

import hashlib
import ssl
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

import certifi
import urllib3
from minio import time as minio_time
from minio.credentials import Credentials
from minio.signer import sign_v4_s3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, SSLError, TimeoutError

from ..config import Settings
from ..errors import FatalError, StoreError, TransientError, classify, parse_retry_after

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def pool_manager(settings: Settings, *, verify: bool, ca_bundle: str | None, read_timeout: float,
                 maxsize: int) -> urllib3.PoolManager:
    """An HTTP pool with *no* retries: retry.py owns retries. minio-py's default pool
    retries 5 times with 300 s timeouts, which would hide a dead endpoint for minutes."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=settings.connect_timeout, read=read_timeout),
        maxsize=maxsize,
        block=False,
        cert_reqs=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
        ca_certs=ca_bundle or certifi.where(),
        retries=False,
    )


class _OneWrite:
    """Send a small request's headers and body in one write. http.client writes them
    separately, so a small PUT costs two sends and two wake-ups of the server; on
    loopback the second send cost 5-10% of the client's and the server's CPU per PUT.
    Go's net/http (mc) buffers them into one write too."""

    _held: bytes | None = None
    _hold = False

    def request(self, method, url, body=None, headers=None, **kwargs):  # type: ignore[no-untyped-def]
        self._hold = isinstance(body, bytes) and 0 < len(body) <= _ONE_WRITE_MAX
        try:
            super().request(method, url, body=body, headers=headers, **kwargs)  # type: ignore[misc]
        except BaseException:
            self._held = None  # the connection is dropped by the pool anyway
            raise
        finally:
            self._hold = False
        if self._held is not None:  # never strand held bytes, whatever the base class did
            held, self._held = self._held, None
            super().send(held)  # type: ignore[misc]

    def send(self, data):  # type: ignore[no-untyped-def]
        if self._hold:
            if self._held is None:
                self._held = bytes(data)  # the header block; the body follows
                return
            data, self._held = self._held + bytes(data), None
            self._hold = False
        return super().send(data)  # type: ignore[misc]


_ONE_WRITE_MAX = 256 * 1024


class _OneWriteHTTP(_OneWrite, HTTPConnection):
    pass


class _OneWriteHTTPS(_OneWrite, HTTPSConnection):
    pass


def coalescing_pool(manager: urllib3.PoolManager, origin: str):
    """``manager``'s pool for ``origin``, sending small requests in one write."""
    pool = manager.connection_from_url(origin)
    pool.ConnectionCls = _OneWriteHTTPS if origin.startswith("https:") else _OneWriteHTTP
    return pool


def map_transport_error(side: str, op: str, key: str | None, endpoint: str, exc: Exception) -> StoreError:
    """Connection-level failures: the endpoint, not the object, is the subject."""
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason  # type: ignore[assignment]
    if isinstance(exc, SSLError):
        return FatalError(side, op, key, f"TLS handshake with {endpoint} failed: {type(exc).__name__}"
                          " (check the CA bundle, or the endpoint's scheme)")
    if isinstance(exc, NewConnectionError):
        return TransientError(side, op, key, f"cannot connect to {endpoint}: connection refused or unreachable")
    if isinstance(exc, TimeoutError):
        return TransientError(side, op, key, f"{endpoint} timed out ({type(exc).__name__})")
    if isinstance(exc, ProtocolError):
        return TransientError(side, op, key, f"connection to {endpoint} broke: {type(exc).__name__}")
    return TransientError(side, op, key, f"{endpoint}: {type(exc).__name__}")


def object_path(bucket_path: str, key: str, query: str = "") -> str:
    """The request path of ``key``. Every byte but the unreserved ones is
    percent-encoded, "/" kept: that is also SigV4's canonical form for S3, so the path
    is signed exactly as sent."""
    return f"{bucket_path}/{quote(key, safe='/~')}{query}"


def signed_request(pool, method: str, origin: str, path: str, *, region: str, credentials: Credentials,
                   headers: dict[str, str] | None = None, body: bytes | None = None, preload: bool = True):
    """Send one SigV4-signed request on ``pool`` (a urllib3 connection pool for
    ``origin``) and return the response, whatever its status. Payload as both SDKs
    sign it: UNSIGNED-PAYLOAD over HTTPS, its SHA-256 over plain HTTP.

    The pool's urlopen, not PoolManager.request: that one normalises the path
    ("a/./b", "a/../b"), which would address a different key. Transport failures
    propagate as urllib3 exceptions, for the caller to map with its endpoint's name."""
    now = minio_time.utcnow()
    if origin.startswith("https:"):
        sha256 = "UNSIGNED-PAYLOAD"
    else:
        sha256 = hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256
    headers = {**(headers or {}), "Host": origin.split("://", 1)[1], "x-amz-content-sha256": sha256,
               "x-amz-date": minio_time.to_amz_date(now)}
    if body is not None:
        headers["Content-Length"] = str(len(body))
    sign_v4_s3(method=method, url=urlsplit(origin + path), region=region, headers=headers,
               credentials=credentials, content_sha256=sha256, date=now)
    return pool.urlopen(method, path, body=body, headers=headers, redirect=False, preload_content=preload)


def raw_error(side: str, op: str, key: str | None, response, *, bucket_op: bool = False) -> StoreError:
    """errors.* for an S3 error response read raw. The server's own message is kept
    as ``server_message`` ("Bucket is missing ObjectLockConfiguration")."""
    code = message = None
    try:
        body = ElementTree.fromstring(response.data)
        code, message = body.findtext("Code"), body.findtext("Message")
    except ElementTree.ParseError:
        pass
    error = classify(side, op, key, code, response.status, bucket_op=bucket_op,
                     retry_after=parse_retry_after(response.headers.get("Retry-After")))
    error.server_message = message  # type: ignore[attr-defined]
    return error
