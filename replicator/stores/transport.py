"""HTTP plumbing shared by the adapters that speak raw HTTP: the pool (no retries:
retry.py owns them) and the mapping of connection-level failures into errors.*."""

from __future__ import annotations

import ssl

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, SSLError, TimeoutError

from ..config import Settings
from ..errors import FatalError, StoreError, TransientError


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
