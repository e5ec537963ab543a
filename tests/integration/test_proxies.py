"""HTTPS_PROXY, HTTP_PROXY and NO_PROXY, through a real forward proxy (tinyproxy,
tests/proxy.py) in front of real servers. Every request of both sides goes through it:
listings, copies, control calls and MinIO's notification stream; the proxy's own log
is the proof. HTTPS goes through a CONNECT tunnel, verified end to end. A proxy that
refuses is named in the error.

The destination behind the proxy is MinIO: moto's server closes the connection after
every answer, and tinyproxy 1.11 then leaves the client's kept-alive connection
hanging (its next request waits for the read timeout), a quirk of that pair that no
S3 provider or real proxy shows."""

from __future__ import annotations

import io

import pytest
from minio import Minio

from tests.conftest import run_cli, unique_bucket
from tests.proxy import Tinyproxy
from tests.servers import MinioServer
from tests.sidecar import wait_for
from tests.tls import make_ca

TLS_USER, TLS_PASSWORD = "proxy-tls-admin", "proxy-tls-secret-Hq3v"


@pytest.fixture
def proxy():
    proxy = Tinyproxy().start()
    yield proxy
    proxy.close()


def put(pair, key: str, data: bytes) -> None:
    pair.source.put_object(pair.source_bucket, key, io.BytesIO(data), len(data))


def ports(pair) -> tuple[int, int]:
    return pair.servers["source"].port, pair.servers["dest"].port


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_a_reconcile_sends_every_request_of_both_sides_through_the_proxy(pair, proxy):
    for key in ("a.txt", "dir/b.txt"):
        put(pair, key, key.encode())
    result = run_cli({**pair.env, "HTTP_PROXY": proxy.url}, "reconcile")
    assert result.code == 0, result.output
    assert sorted(pair.dest_keys()) == ["a.txt", "dir/b.txt"]
    source, dest = ports(pair)
    to_source, to_dest = proxy.to_port(source), proxy.to_port(dest)
    assert any("list-type=2" in r for r in to_source) and any("/a.txt " in r for r in to_source)
    assert any("list-type=2" in r for r in to_dest)
    assert sum(r.startswith("PUT ") for r in to_dest) == 2


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_no_proxy_sends_the_named_host_direct(pair, proxy):
    put(pair, "a.txt", b"a")
    source, dest = ports(pair)
    result = run_cli({**pair.env, "http_proxy": proxy.url, "no_proxy": f"localhost,127.0.0.1:{source}"},
                     "reconcile")
    assert result.code == 0, result.output
    assert pair.dest_body("a.txt") == b"a"
    assert proxy.to_port(source) == []
    assert proxy.to_port(dest)


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_a_run_replicates_events_through_the_proxy(pair, proxy, sidecars):
    sidecar = sidecars({**pair.env, "HTTP_PROXY": proxy.url})
    wait_for(sidecar.ready, what="readiness")
    put(pair, "by-event.txt", b"through the proxy")
    # The interval is an hour: only the notification stream, through the proxy, can do this.
    wait_for(lambda: "by-event.txt" in pair.dest_keys(), timeout=15, what="the event copy")
    source, dest = ports(pair)
    assert any("events=" in r for r in proxy.to_port(source)), "the notification stream went around the proxy"
    assert any(r.startswith("PUT ") and "by-event.txt" in r for r in proxy.to_port(dest))


# -- HTTPS: a CONNECT tunnel, and TLS verified through it ---------------------------

@pytest.fixture(scope="module")
def tls():
    return make_ca()


@pytest.fixture(scope="module")
def tls_server(tls):
    server = MinioServer("proxy-tls", TLS_USER, TLS_PASSWORD, tls=tls).start()
    yield server
    server.close()


def _tls_pair(tls, server) -> dict[str, str]:
    import urllib3

    client = Minio(server.host, TLS_USER, TLS_PASSWORD, secure=True,
                   http_client=urllib3.PoolManager(ca_certs=str(tls.ca_file)))
    source, dest = unique_bucket("proxy-src"), unique_bucket("proxy-dst")
    client.make_bucket(source)
    client.make_bucket(dest)
    client.put_object(source, "secret-ish.bin", io.BytesIO(b"x" * 1000), 1000)
    return {
        "MINIO_ENDPOINT": server.endpoint, "MINIO_ACCESS_KEY": TLS_USER, "MINIO_SECRET_KEY": TLS_PASSWORD,
        "MINIO_BUCKET": source, "MINIO_CA_BUNDLE": str(tls.ca_file),
        "S3_SYNC_ENDPOINT": server.endpoint, "S3_SYNC_ACCESS_KEY": TLS_USER, "S3_SYNC_SECRET_KEY": TLS_PASSWORD,
        "S3_SYNC_BUCKET": dest, "S3_SYNC_CA_BUNDLE": str(tls.ca_file),
        "S3_SYNC_RETRY_DELAY": "0.05", "S3_SYNC_MAX_RETRIES": "2", "S3_SYNC_CONNECT_TIMEOUT": "2",
    }


def test_https_goes_through_a_connect_tunnel_with_tls_verified_end_to_end(tls, tls_server, proxy):
    env = _tls_pair(tls, tls_server)
    result = run_cli({**env, "HTTPS_PROXY": proxy.url}, "reconcile")
    assert result.code == 0, result.output
    assert "1 copied" in result.stderr
    tunnels = proxy.to_port(tls_server.port)
    assert tunnels and all(r.startswith("CONNECT ") for r in tunnels)


def test_an_untrusted_certificate_is_refused_through_the_tunnel_too(tls, tls_server, proxy):
    env = {k: v for k, v in _tls_pair(tls, tls_server).items() if not k.endswith("_CA_BUNDLE")}
    result = run_cli({**env, "HTTPS_PROXY": proxy.url}, "check")
    assert result.code != 0
    assert "certificate verify failed" in result.output


# -- a proxy that refuses --------------------------------------------------------------

@pytest.fixture
def refusing_proxy():
    proxy = Tinyproxy(refuse=True).start()
    yield proxy
    proxy.close()


def test_a_proxy_refusing_the_tunnel_is_named_in_the_error(tls, tls_server, refusing_proxy):
    env = _tls_pair(tls, tls_server)
    result = run_cli({**env, "HTTPS_PROXY": refusing_proxy.url}, "check")
    assert result.code != 0, result.output
    assert f"proxy {refusing_proxy.url} failed to reach {tls_server.endpoint}" in result.output
    assert "403" in result.output
    assert "this is a bug" not in result.output


@pytest.mark.parametrize("pair", ["minio", "moto"], indirect=True)
def test_a_plain_http_proxy_answering_itself_is_named_in_the_error(pair, refusing_proxy):
    result = run_cli({**pair.env, "HTTP_PROXY": refusing_proxy.url}, "check")
    assert result.code != 0, result.output
    assert f"proxy {refusing_proxy.url}" in result.output
    assert "this is a bug" not in result.output


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_a_proxy_password_never_reaches_the_output(pair, proxy):
    url = proxy.url.replace("http://", "http://someone:proxy-pass-Zq81@")
    result = run_cli({**pair.env, "HTTP_PROXY": url}, "reconcile")
    assert "proxy-pass-Zq81" not in result.output


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_minios_metrics_are_read_through_the_proxy_too(pair, proxy):
    """The failed-events watcher's reads (jetstream mode) take the source's transport."""
    from replicator.failed_events import SKIPPED, counts
    from replicator.stores.source import MinioSource

    source = MinioSource(pair.settings(HTTP_PROXY=proxy.url))
    assert any(series[0] == SKIPPED for series in counts(source.metrics()))
    assert any("/minio/v2/metrics/cluster" in r for r in proxy.to_port(ports(pair)[0]))
