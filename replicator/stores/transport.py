"""One side's HTTP: one urllib3 pool (through the side's proxy, if it has one), one
SigV4 signer (botocore's), the side's credentials, and the one place where what goes
wrong, on the wire or in either SDK, becomes errors.* (``Transport.map_error``).

Both adapters send their raw requests here: listing pages (parsed by listing.py), the
copies' GETs and PUTs, and a few small answers proven by answers.py. minio-py, for the
source's HEADs, bucket checks and notification stream, runs on the same pool. boto3
keeps its own (botocore has no public way to share one) but gets the same proxy.

Why raw requests at all: a listing parsed by botocore's generic parser costs several
times the CPU of listing.py's, and both SDKs' per-call machinery costs more than the
exchange itself on a small copy (docs/benchmarks.md). The signature and the HTTP stay
libraries' work.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

import certifi
import urllib3
from botocore import exceptions as boto
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ProxyError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from .. import __version__
from ..errors import FatalError, StoreError, TransientError, annotated, classify, parse_retry_after
from . import answers

if TYPE_CHECKING:
    from ..ratelimit import Limits

_USER_AGENT = f"replicator/{__version__}"


class CredentialSource(Protocol):
    """botocore's Credentials and RefreshableCredentials: the frozen set is taken per
    request, so credentials that expire are refreshed by their provider in time."""

    def get_frozen_credentials(self) -> ReadOnlyCredentials: ...


def redact(url: str) -> str:
    """``url`` without its user and password (a proxy URL may carry both)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return parts._replace(netloc=host).geturl()


def pool_manager(*, verify: bool, ca_bundle: str | None, connect_timeout: float, read_timeout: float,
                 maxsize: int, proxy: str | None = None) -> urllib3.PoolManager:
    """An HTTP pool with *no* retries: retry.py owns retries. minio-py's default pool
    retries 5 times with 300 s timeouts, which would hide a dead endpoint for minutes.
    Through ``proxy`` when given: HTTPS by CONNECT, so TLS runs end to end."""
    # Keyword arguments of every connection pool; urllib3 takes them as **Any.
    options: dict[str, Any] = {
        "timeout": urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        "maxsize": maxsize,
        "block": False,
        "cert_reqs": ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
        "ca_certs": ca_bundle or certifi.where(),
        "retries": False,
    }
    if proxy:
        return urllib3.ProxyManager(proxy, **options)
    return urllib3.PoolManager(**options)


class Transport:
    """Signed requests to one origin (``https://host:port``), on one pool."""

    def __init__(self, side: str, origin: str, *, region: str, credentials: CredentialSource, verify: bool,
                 ca_bundle: str | None, connect_timeout: float, read_timeout: float, maxsize: int,
                 proxy: str | None = None, limits: Limits | None = None):
        self.side = side
        self.limits = limits  # the destination's bandwidth and request rate (ratelimit.py); None: none
        self.origin = origin.rstrip("/")
        self.region = region  # may change once the bucket says where it lives
        self.proxy = proxy
        self._connect_timeout = connect_timeout
        self._credentials = credentials
        self._secure = self.origin.startswith("https:")
        self.pool = pool_manager(verify=verify, ca_bundle=ca_bundle, connect_timeout=connect_timeout,
                                 read_timeout=read_timeout, maxsize=maxsize, proxy=proxy)

    @property
    def secure(self) -> bool:
        return self._secure

    def request(self, op: str, key: str | None, method: str, path: str, *, headers: dict[str, str] | None = None,
                body: bytes | None = None, stream: bool = False, region: str | None = None,
                read_timeout: float | None = None,
                bearer: Callable[[ReadOnlyCredentials], str] | None = None) -> urllib3.BaseHTTPResponse:
        """Send one SigV4-signed request and return the response, whatever its status;
        its body read unless ``stream`` (then the caller reads or releases it), and
        ``read_timeout`` for this request only if given. With ``bearer``, the request
        carries the token it makes from the side's credentials instead of a signature
        (MinIO's metrics take only that).
        ``path`` (with its query) goes out exactly as given (object_path), never
        normalised. The payload is signed as botocore signs it: its SHA-256, unless it
        travels over HTTPS with a Content-MD5. Transport failures raise errors.*."""
        url = self.origin + path
        if self.limits is not None:
            self.limits.request()  # before signing: a signature waiting in line would go stale
        # Accept-Encoding: identity, or a server may compress the object on the way and the
        # copy would store other bytes than the source's.
        request = AWSRequest(method=method, url=url, data=body,
                             headers={**(headers or {}), "Accept-Encoding": "identity", "User-Agent": _USER_AGENT})
        # Over HTTPS with a Content-MD5, TLS and the digest guard the body: botocore's S3
        # clients then send it unsigned, sparing a SHA-256 of every byte. So do we.
        request.context["payload_signing_enabled"] = not (self._secure and "Content-MD5" in request.headers)
        if bearer is None:
            S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", region or self.region).add_auth(request)
        else:
            request.headers["Authorization"] = f"Bearer {bearer(self._credentials.get_frozen_credentials())}"
        options = {}
        if read_timeout is not None:
            options["timeout"] = urllib3.Timeout(connect=self._connect_timeout, read=read_timeout)
        sent: bytes | Iterator[memoryview] | None = body
        send_headers = dict(request.headers.items())
        if self.limits is not None and body:
            # Paced chunk by chunk as urllib3 writes them. Content-Length given, or urllib3
            # would send the chunks with Transfer-Encoding: chunked, which S3 refuses.
            sent, send_headers["Content-Length"] = self.limits.paced(body), str(len(body))
        try:
            return self.pool.urlopen(method, url, body=sent, headers=send_headers,
                                     preload_content=not stream, decode_content=False, redirect=False,
                                     assert_same_host=False, **options)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self.map_error(op, key, exc) from exc

    def get_object(self, key: str, path: str, *, headers: dict[str, str] | None = None,
                   region: str | None = None) -> urllib3.BaseHTTPResponse:
        """A streaming GET of the object ``key`` at ``path``, its body unread (read it
        through ``Body``, hand the connection back with ``release``); errors.* for
        anything but 200/206, and for an answer without an ETag."""
        response = self.request("get", key, "GET", path, headers=headers, stream=True, region=region)
        if response.status not in (200, 206):
            try:
                response.data  # read whole, for raw_error  # noqa: B018
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise self.map_error("get", key, exc) from exc
            finally:
                response.release_conn()
            raise self.error("get", key, response)
        if not response.headers.get("ETag"):
            # S3 and MinIO send every object's ETag; a 200 without one is somebody else's
            # page, and copying it would store that page as the object.
            release(response)
            raise TransientError(self.side, "get", key, f"{self.origin} answered {response.status} without an "
                                 "ETag: not an S3 answer")
        return response

    def map_error(self, op: str, key: str | None, exc: BaseException, *, bucket_op: bool = False) -> StoreError:
        """errors.* for anything a request of this side raised: the transport's
        failures, minio-py's errors and botocore's. Anything else is a bug, raised as it is."""
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, S3Error):  # minio-py, an S3 error document
            headers = exc.response.headers if exc.response is not None else {}
            status = exc.response.status if exc.response is not None else None
            return classify(self.side, op, key, exc.code, status, bucket_op=bucket_op, server_message=exc.message,
                            retry_after=parse_retry_after(headers.get("Retry-After")))
        if isinstance(exc, ServerError):
            return classify(self.side, op, key, None, exc.status_code, bucket_op=bucket_op)
        if isinstance(exc, InvalidResponseError):
            # A non-XML answer: a proxy's error page, or not an S3 endpoint at all.
            status, content_type = exc._code, exc._content_type  # noqa: SLF001 - its only record of them
            error = TransientError(self.side, op, key, f"{self.origin} gave a non-S3 response (HTTP {status}, "
                                   f"{content_type or 'no content type'})")
            return self.unproven(error, status, content_type)
        if isinstance(exc, boto.ClientError):
            return self._client_error(exc, op, key, bucket_op)
        if isinstance(exc, boto.BotoCoreError):
            return self._botocore_error(exc, op, key)
        if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
            return map_transport_error(self.side, op, key, self.origin, exc, proxy=self.proxy)
        raise exc

    def _client_error(self, exc: boto.ClientError, op: str, key: str | None, bucket_op: bool) -> StoreError:
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        headers = meta.get("HTTPHeaders", {})
        code, status = error.get("Code"), meta.get("HTTPStatusCode")
        retry_after = parse_retry_after(headers.get("retry-after"))
        if code and code.isdigit():
            # No S3 error document (a HEAD's answer has no body, and neither has a
            # proxy's page an S3 code): botocore gives the status as the code.
            mapped = classify(self.side, op, key, _BODILESS_CODES.get(int(code)), status, bucket_op=bucket_op,
                              retry_after=retry_after)
            return self.unproven(mapped, status, headers.get("content-type"))
        return classify(self.side, op, key, code, status, bucket_op=bucket_op, server_message=error.get("Message"),
                        retry_after=retry_after)

    def _botocore_error(self, exc: boto.BotoCoreError, op: str, key: str | None) -> StoreError:
        if isinstance(exc, UnprovenAnswer):
            return TransientError(self.side, op, key, f"{self.origin}: {exc}")
        if isinstance(exc, boto.ProxyConnectionError):
            return TransientError(self.side, op, key, f"proxy {redact(self.proxy or 'in the way')} failed to reach "
                                  f"{self.origin}: {type(exc).__name__}")
        if isinstance(exc, boto.SSLError):
            return tls_failure(self.side, op, key, self.origin, exc)
        if isinstance(exc, (boto.EndpointConnectionError, boto.ConnectTimeoutError)):
            return TransientError(self.side, op, key, f"cannot connect to {self.origin}: {type(exc).__name__}")
        if isinstance(exc, boto.NoCredentialsError):
            return FatalError(self.side, op, key, "no credentials")
        return TransientError(self.side, op, key, f"{self.origin}: {type(exc).__name__}")

    def error(self, op: str, key: str | None, response, *, bucket_op: bool = False) -> StoreError:
        """errors.* for an error response to one of our requests (raw_error), naming
        the proxy when one stands between and the answer isn't S3's: a proxy's own
        refusal looks like any 403 otherwise, and would send the reader to the keys."""
        error = raw_error(self.side, op, key, response, bucket_op=bucket_op)
        if error.server_message is None:
            error = self.unproven(error, response.status, response.headers.get("Content-Type"))
        return error

    def unproven(self, error: StoreError, status: int | None, content_type: str | None) -> StoreError:
        """``error``, for an answer without an S3 error document, with the proxy named."""
        if not self.proxy:
            return error
        return annotated(error, f"; the answer (HTTP {status}, {content_type or 'no content type'}) is not S3's and "
                                f"came through proxy {redact(self.proxy)}, which may have given it")


class Body:
    """An object's stored bytes as a GET streams them, never decoded: an object stored
    with Content-Encoding: gzip is read as the gzip bytes. A failure on the way is
    errors.*, like the request's."""

    def __init__(self, response: urllib3.BaseHTTPResponse, transport: Transport, key: str):
        self._response = response
        self._transport, self._key = transport, key

    def read(self, amt: int | None = None) -> bytes:
        """The rest of the body, or up to ``amt`` bytes of it (b"" at its end)."""
        try:
            return self._response.read(amt, decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._transport.map_error("get", self._key, exc) from exc


def release(response: urllib3.BaseHTTPResponse) -> None:
    """Hand the connection back; one with unread bytes (an object too big for one PUT)
    is closed instead, since reading the rest could cost the object's size."""
    if not response.closed:
        response.close()
    response.release_conn()


class UnprovenAnswer(boto.BotoCoreError):
    """A 2xx answer to a boto3 call that is not what the call answers (answers.py)."""

    fmt = "{detail}"


def prove_answer(operation_model, response_dict, **kwargs) -> None:
    """botocore's before-parse hook: an answer botocore would parse into an empty result
    (an HTML page at 200, an error document at 200) is refused before it can be."""
    body = response_dict.get("body")
    if 200 <= response_dict.get("status_code", 0) < 300 and isinstance(body, bytes):
        try:
            answers.prove(operation_model.name, response_dict.get("headers") or {}, body)
        except answers.MalformedAnswer as exc:
            raise UnprovenAnswer(detail=str(exc)) from exc


def map_transport_error(side: str, op: str, key: str | None, endpoint: str, exc: BaseException, *,
                        proxy: str | None = None) -> StoreError:
    """Connection-level failures: the endpoint (or the proxy before it), not the object,
    is the subject."""
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, ProxyError):
        cause = next((a for a in exc.args if isinstance(a, BaseException)), None)
        return TransientError(side, op, key, f"proxy {redact(proxy or 'in the way')} failed to reach {endpoint}: "
                              f"{_proxy_reason(cause)}")
    if isinstance(exc, (SSLError, ssl.SSLError)):
        return tls_failure(side, op, key, endpoint, exc)
    if isinstance(exc, NewConnectionError):
        return TransientError(side, op, key, f"cannot connect to {endpoint}: connection refused or unreachable")
    if isinstance(exc, (Urllib3Timeout, TimeoutError)):
        return TransientError(side, op, key, f"{endpoint} timed out ({type(exc).__name__})")
    if isinstance(exc, (ProtocolError, ConnectionError)):
        return TransientError(side, op, key, f"connection to {endpoint} broke: {type(exc).__name__}")
    return TransientError(side, op, key, f"{endpoint}: {type(exc).__name__}")


def _proxy_reason(cause: BaseException | None) -> str:
    """"Tunnel connection failed: 403 Access denied", or what kept us from the proxy."""
    if cause is None:
        return "no reason given"
    if isinstance(cause, NewConnectionError):
        return "cannot connect to the proxy: connection refused or unreachable"
    text = str(cause)
    return text if text and len(text) < 200 else type(cause).__name__


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


def query_string(params: Mapping[str, str] | Sequence[tuple[str, str]]) -> str:
    """``params`` (a mapping, or pairs where a name repeats) in SigV4's canonical
    encoding, so the query is signed exactly as sent."""
    pairs = params.items() if isinstance(params, Mapping) else params
    return "&".join(f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}" for name, value in pairs)


# What S3 means by a status when there is no error document to say it.
_BODILESS_CODES = {403: "AccessDenied", 404: "NotFound", 412: "PreconditionFailed"}


def raw_error(side: str, op: str, key: str | None, response, *, bucket_op: bool = False) -> StoreError:
    """errors.* for an S3 error response read raw, with the server's own message
    ("Bucket is missing ObjectLockConfiguration") as ``server_message``."""
    code = message = None
    try:
        body = ElementTree.fromstring(response.data)
        code, message = body.findtext("Code"), body.findtext("Message")
    except ElementTree.ParseError:
        code = _BODILESS_CODES.get(response.status)  # a HEAD's answer: the status is all there is
    return classify(side, op, key, code, response.status, bucket_op=bucket_op, server_message=message,
                    retry_after=parse_retry_after(response.headers.get("Retry-After")))
