"""HTTP plumbing shared by the adapters that speak raw HTTP: the urllib3 pool that
minio-py and the destination's listings use (no retries: retry.py owns them), the
signed object request both adapters send on their data path (through http_client),
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
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from .. import __version__
from ..config import Settings
from ..errors import FatalError, StoreError, TransientError, classify, parse_retry_after
from .http_client import ConnectFailed, HttpClient, Response

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_USER_AGENT = f"replicator/{__version__}"


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


def map_transport_error(side: str, op: str, key: str | None, endpoint: str, exc: Exception) -> StoreError:
    """Connection-level failures, from urllib3 or from http_client: the endpoint, not
    the object, is the subject."""
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason  # type: ignore[assignment]
    if isinstance(exc, (SSLError, ssl.SSLError)):
        return tls_failure(side, op, key, endpoint, exc)
    if isinstance(exc, (NewConnectionError, ConnectFailed)):
        return TransientError(side, op, key, f"cannot connect to {endpoint}: connection refused or unreachable")
    if isinstance(exc, (Urllib3Timeout, TimeoutError)):
        return TransientError(side, op, key, f"{endpoint} timed out ({type(exc).__name__})")
    if isinstance(exc, (ProtocolError, ConnectionError)):
        return TransientError(side, op, key, f"connection to {endpoint} broke: {type(exc).__name__}")
    return TransientError(side, op, key, f"{endpoint}: {type(exc).__name__}")


_CA_BUNDLE_SETTING = {"source": "MINIO_CA_BUNDLE", "destination": "S3_SYNC_CA_BUNDLE"}


def tls_failure(side: str, op: str, key: str | None, endpoint: str, exc: BaseException) -> FatalError:
    """A TLS failure is fatal: retrying won't make a certificate trusted."""
    setting = _CA_BUNDLE_SETTING.get(side, "the CA bundle")
    return FatalError(side, op, key, f"TLS handshake with {endpoint} failed: {_tls_reason(exc)}"
                      f" (check {setting}, or the endpoint's scheme)")


def _tls_reason(exc: BaseException) -> str:
    """The certificate problem when there is one ("certificate verify failed:
    self-signed certificate"), else the exception's name."""
    seen: BaseException | None = exc
    for _ in range(4):  # urllib3 wraps the ssl module's error
        if isinstance(seen, ssl.SSLCertVerificationError) and seen.verify_message:
            return f"certificate verify failed: {seen.verify_message}"
        if seen is None:
            break
        inner = next((a for a in seen.args if isinstance(a, BaseException)), None)
        seen = inner or seen.__cause__ or seen.__context__
    return type(exc).__name__


def object_path(bucket_path: str, key: str, query: str = "") -> str:
    """The request path of ``key``. Every byte but the unreserved ones is
    percent-encoded, "/" kept: that is also SigV4's canonical form for S3, so the path
    is signed exactly as sent."""
    return f"{bucket_path}/{quote(key, safe='/~')}{query}"


def signed_request(client: HttpClient, method: str, path: str, *, region: str, credentials: Credentials,
                   headers: dict[str, str] | None = None, body: bytes | None = None,
                   sha256: str | None = None) -> Response:
    """Send one SigV4-signed request on ``client`` (http_client.HttpClient, one origin)
    and return the response, whatever its status, its body unread: the caller reads or
    releases it. Payload as both SDKs sign it: UNSIGNED-PAYLOAD over HTTPS, its SHA-256
    over plain HTTP (``sha256``, hex, if the caller has it already). ``path`` goes out
    exactly as given (object_path), never normalised. Transport failures propagate as
    OSError/ConnectionError, for the caller to map with its endpoint's name."""
    now = minio_time.utcnow()
    origin = client.origin
    if origin.startswith("https:"):
        sha256 = "UNSIGNED-PAYLOAD"
    elif sha256 is None:
        sha256 = hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256
    # Accept-Encoding: identity, or a server may compress the object on the way and the
    # copy would store other bytes than the source's.
    headers = {**(headers or {}), "Host": origin.split("://", 1)[1], "x-amz-content-sha256": sha256,
               "x-amz-date": minio_time.to_amz_date(now), "Accept-Encoding": "identity", "User-Agent": _USER_AGENT}
    if body is not None:
        headers["Content-Length"] = str(len(body))
    sign_v4_s3(method=method, url=urlsplit(origin + path), region=region, headers=headers,
               credentials=credentials, content_sha256=sha256, date=now)
    headers.pop("Content-Length", None)  # signed; the client writes it
    return client.request(method, path, headers, body)


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
