"""observability/http.py at start: an address or port that can't be bound is a ConfigError
naming the setting and its value (``run`` exits 2), never a traceback. The real thing,
a ``run`` against a port in use and an address that isn't local, is in
tests/integration/test_cli.py."""

from __future__ import annotations

import errno
import socket

import pytest

from replicator.errors import ConfigError
from replicator.observability import http
from replicator.observability.health import Health


@pytest.mark.parametrize(
    ("error", "host", "port", "expected"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "no-such-host.invalid", 8080,
         "S3_SYNC_HTTP_HOST='no-such-host.invalid': can't be resolved to an address to listen on "
         "(Name or service not known)"),
        (OSError(errno.EADDRINUSE, "Address already in use"), "127.0.0.1", 8080,
         "S3_SYNC_HTTP_PORT='8080': port 8080 is already in use on 127.0.0.1 (Address already in use); "
         "stop what listens there or choose another port"),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), "192.0.2.1", 8080,
         "S3_SYNC_HTTP_HOST='192.0.2.1': not an address of this machine (Cannot assign requested address); "
         "use 0.0.0.0 for every interface, or one of this machine's own addresses"),
        (OSError(errno.EACCES, "Permission denied"), "0.0.0.0", 80,
         "S3_SYNC_HTTP_PORT='80': ports below 1024 need root (Permission denied); use one above 1023"),
        # Anything else names both.
        (OSError(errno.EACCES, "Permission denied"), "0.0.0.0", 8080,
         "S3_SYNC_HTTP_HOST='0.0.0.0', S3_SYNC_HTTP_PORT='8080': can't listen there (Permission denied)"),
        (OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol"), "::", 8080,
         "S3_SYNC_HTTP_HOST='::', S3_SYNC_HTTP_PORT='8080': can't listen there "
         "(Address family not supported by protocol)"),
    ],
    ids=["unresolvable", "port in use", "not local", "privileged port", "other", "no IPv6"],
)
def test_a_bind_failure_names_the_setting(monkeypatch, error, host, port, expected):
    def fail(*args):
        raise error

    monkeypatch.setattr(http, "_listen_address", fail)
    with pytest.raises(ConfigError) as caught:
        http.HttpServer(host, port, Health(1800.0))
    assert str(caught.value) == f"Can't start the HTTP server: {expected}"


@pytest.mark.parametrize(
    ("host", "family"),
    [("0.0.0.0", socket.AF_INET), ("127.0.0.1", socket.AF_INET), ("::", socket.AF_INET6), ("::1", socket.AF_INET6)],
)
def test_the_address_family_follows_the_host(host, family):
    assert http._listen_address(host, 8080)[0] == family  # noqa: SLF001 - no server needed to ask
