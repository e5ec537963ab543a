"""stores/transport.py's pure parts: transport failures mapped into errors.*, the
proxy named (never its password), and the canonical query string."""

from __future__ import annotations

import ssl

import pytest
from urllib3.exceptions import NewConnectionError, ProtocolError, ProxyError, ReadTimeoutError

from replicator.errors import FatalError, TransientError
from replicator.stores.transport import map_transport_error, query_string, redact

ENDPOINT = "http://127.0.0.1:9000"
PROXY = "http://proxy-user:proxy-secret@127.0.0.1:3128"


def _certificate_error() -> ssl.SSLCertVerificationError:
    # As the ssl module raises it: the reason in args, verify_message/verify_code set after.
    exc = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)")
    exc.verify_code, exc.verify_message = 18, "self-signed certificate"
    return exc


@pytest.mark.parametrize(("exc", "kind", "detail"), [
    (NewConnectionError(None, "Connection refused"), TransientError,
     f"cannot connect to {ENDPOINT}: connection refused or unreachable"),
    (ReadTimeoutError(None, ENDPOINT, "read timed out"), TransientError, f"{ENDPOINT} timed out (ReadTimeoutError)"),
    (TimeoutError("timed out"), TransientError, f"{ENDPOINT} timed out (TimeoutError)"),
    (ProtocolError("Connection aborted."), TransientError, f"connection to {ENDPOINT} broke: ProtocolError"),
    (ConnectionResetError(104, "reset"), TransientError, f"connection to {ENDPOINT} broke: ConnectionResetError"),
    (_certificate_error(), FatalError,
     f"TLS handshake with {ENDPOINT} failed: certificate verify failed: self-signed certificate"),
    (ProxyError("Unable to connect to proxy", OSError("Tunnel connection failed: 403 Access denied")),
     TransientError, f"proxy http://127.0.0.1:3128 failed to reach {ENDPOINT}: Tunnel connection failed: 403"),
    (ProxyError("Unable to connect to proxy", NewConnectionError(None, "refused")), TransientError,
     f"proxy http://127.0.0.1:3128 failed to reach {ENDPOINT}: cannot connect to the proxy"),
], ids=["connect-failed", "read-timeout", "timeout", "protocol", "reset", "certificate", "proxy-refused",
        "proxy-down"])
def test_map_transport_error(exc, kind, detail):
    error = map_transport_error("source", "get", "a/b", ENDPOINT, exc, proxy=PROXY)
    assert type(error) is kind  # exactly: a FatalError is no TransientError, and the reverse
    assert (error.side, error.op, error.key) == ("source", "get", "a/b")
    assert str(error).startswith(f"source: get a/b: {detail}")
    assert "proxy-secret" not in str(error)


@pytest.mark.parametrize(("url", "shown"), [
    (PROXY, "http://127.0.0.1:3128"),
    ("http://user@proxy:3128", "http://proxy:3128"),
    ("http://proxy:3128", "http://proxy:3128"),
])
def test_redact(url, shown):
    assert redact(url) == shown


def test_the_query_is_in_sigv4s_canonical_encoding():
    assert query_string({"list-type": "2", "prefix": "a b/ü+~", "start-after": "x=y&z"}) == (
        "list-type=2&prefix=a%20b%2F%C3%BC%2B~&start-after=x%3Dy%26z")
