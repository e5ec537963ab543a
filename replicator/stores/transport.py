"""HTTP plumbing shared by the adapters that speak raw HTTP: the pool (no retries:
retry.py owns them) and the mapping of connection-level failures into errors.*."""

from __future__ import annotations

import ssl

import certifi
import urllib3
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
