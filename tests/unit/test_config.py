"""config.load by tables: defaults, missing and invalid variables, endpoints, flags."""

from __future__ import annotations

import pytest

from replicator import config
from replicator.config import MiB, Endpoint, Secret
from replicator.errors import ConfigError

REQUIRED = {"S3_SYNC_ACCESS_KEY": "AKIAEXAMPLE", "S3_SYNC_SECRET_KEY": "dest-Secret-1234", "S3_SYNC_BUCKET": "mirror"}


def load(**env: str) -> config.Settings:
    return config.load({**REQUIRED, **env})


def problem(**env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(**env)
    return str(caught.value)


# --- defaults -------------------------------------------------------------------

EXPECTED_DEFAULTS = {
    "dest_bucket": "mirror",
    "dest_endpoint": Endpoint("https", "s3.amazonaws.com"),
    "dest_region": "us-east-1",
    "dest_path_style": False,  # AWS: virtual-hosted
    "dest_verify_tls": True,
    "dest_ca_bundle": None,
    "source_endpoint": Endpoint("http", "minio:9000"),
    "source_access_key": Secret("minioadmin"),
    "source_secret_key": Secret("minioadmin"),
    "source_bucket": "relics",
    "source_verify_tls": True,
    "source_ca_bundle": None,
    "enabled": False,
    "interval": 1800.0,
    "max_retries": 3,
    "retry_delay": 60.0,
    "timezone": "UTC",
    "delete": True,
    "delete_max_percent": 50.0,
    "delete_guard_floor": 10,
    "allow_empty_source": False,
    "workers": 16,
    "multipart_threshold": 16 * MiB,
    "multipart_chunk_size": 8 * MiB,
    "multipart_concurrency": 4,
    "list_concurrency": 8,
    "list_page_size": 1000,
    "connect_timeout": 10.0,
    "read_timeout": 60.0,
    "log_level": "INFO",
    "log_format": "text",
    "http_port": 8080,
    "http_host": "0.0.0.0",
    "shutdown_timeout": 10.0,
    "state_dir": "/var/lib/replicator",
    "queue_size": 10000,
    "listen_timeout": 30.0,
    "reconcile_cooldown": 30.0,
}


@pytest.mark.parametrize(("name", "expected"), EXPECTED_DEFAULTS.items(), ids=list(EXPECTED_DEFAULTS))
def test_default(name, expected):
    assert getattr(load(), name) == expected


def test_every_setting_has_a_tested_default():
    fields = {f.name for f in config.dataclasses.fields(config.Settings)}
    assert fields - {"dest_access_key", "dest_secret_key"} == set(EXPECTED_DEFAULTS)


def test_required_values_are_read_and_stripped():
    s = config.load({"S3_SYNC_ACCESS_KEY": " AKIA ", "S3_SYNC_SECRET_KEY": "s3cret-value\n", "S3_SYNC_BUCKET": "b-1"})
    assert (s.dest_access_key.reveal(), s.dest_secret_key.reveal(), s.dest_bucket) == ("AKIA", "s3cret-value", "b-1")


def test_empty_optional_values_mean_the_default():
    s = load(S3_SYNC_INTERVAL="", S3_SYNC_DELETE="", MINIO_ENDPOINT="", S3_SYNC_TIMEZONE="", MINIO_BUCKET="")
    assert (s.interval, s.delete, s.source_endpoint.url, s.timezone, s.source_bucket) == (
        1800.0, True, "http://minio:9000", "UTC", "relics")


# --- missing required variables ---------------------------------------------------

@pytest.mark.parametrize(
    "missing",
    [
        ("S3_SYNC_ACCESS_KEY",),
        ("S3_SYNC_SECRET_KEY",),
        ("S3_SYNC_BUCKET",),
        ("S3_SYNC_ACCESS_KEY", "S3_SYNC_BUCKET"),
        ("S3_SYNC_ACCESS_KEY", "S3_SYNC_SECRET_KEY", "S3_SYNC_BUCKET"),
    ],
)
def test_missing_required_variables_named_in_one_message(missing):
    env = {k: v for k, v in REQUIRED.items() if k not in missing}
    with pytest.raises(ConfigError) as caught:
        config.load(env)
    assert str(caught.value) == f"Missing required environment variables: {', '.join(missing)}"


def test_blank_required_variable_counts_as_missing():
    with pytest.raises(ConfigError, match="Missing required environment variables: S3_SYNC_SECRET_KEY$"):
        config.load({**REQUIRED, "S3_SYNC_SECRET_KEY": "   "})


# --- invalid values ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("S3_SYNC_INTERVAL", "abc", "expected a number"),
        ("S3_SYNC_INTERVAL", "-5", "greater than 0"),
        ("S3_SYNC_INTERVAL", "0", "greater than 0"),
        ("S3_SYNC_INTERVAL", "nan", "finite"),
        ("S3_SYNC_INTERVAL", "inf", "finite"),
        ("S3_SYNC_MAX_RETRIES", "-1", "at least 1"),
        ("S3_SYNC_MAX_RETRIES", "0", "at least 1"),
        ("S3_SYNC_MAX_RETRIES", "2.5", "whole number"),
        ("S3_SYNC_MAX_RETRIES", "1000", "at most 100"),
        ("S3_SYNC_RETRY_DELAY", "-0.5", "at least 0"),
        ("S3_SYNC_RETRY_DELAY", "soon", "expected a number"),
        ("S3_SYNC_WORKERS", "0", "at least 1"),
        ("S3_SYNC_WORKERS", "-3", "at least 1"),
        ("S3_SYNC_WORKERS", "four", "whole number"),
        ("S3_SYNC_DELETE_MAX_PERCENT", "150", "at most 100"),
        ("S3_SYNC_DELETE_MAX_PERCENT", "-1", "at least 0"),
        ("S3_SYNC_DELETE_GUARD_FLOOR", "-10", "at least 0"),
        ("S3_SYNC_MULTIPART_CONCURRENCY", "0", "at least 1"),
        ("S3_SYNC_LIST_CONCURRENCY", "0", "at least 1"),
        ("S3_SYNC_LIST_CONCURRENCY", "65", "at most 64"),
        ("S3_SYNC_CONNECT_TIMEOUT", "0", "greater than 0"),
        ("S3_SYNC_HTTP_PORT", "70000", "at most 65535"),
        ("S3_SYNC_TIMEZONE", "Mars/Olympus_Mons", "unknown timezone"),
        ("S3_SYNC_TIMEZONE", "../../etc/passwd", "unknown timezone"),
        ("S3_SYNC_ENDPOINT", "ftp://s3.example.com", "scheme must be http or https"),
        ("S3_SYNC_ENDPOINT", "https://s3.example.com:notaport", "malformed endpoint"),
        ("S3_SYNC_ENDPOINT", "https://s3.example.com:99999", "malformed endpoint"),
        ("S3_SYNC_ENDPOINT", "https://s3.example.com:0", "port must be 1-65535"),
        ("S3_SYNC_ENDPOINT", "https://s3 example.com", "expected scheme://host[:port]"),
        ("S3_SYNC_ENDPOINT", "http://", "expected scheme://host[:port]"),
        ("S3_SYNC_ENDPOINT", "https://s3.example.com/mirror", "has no path"),
        ("S3_SYNC_ENDPOINT", "https://s3.example.com?x=1", "has no path"),
        ("MINIO_ENDPOINT", "minio::9000", "malformed endpoint"),
        ("MINIO_ENDPOINT", "http://-minio-:9000", "expected scheme://host[:port]"),
        ("S3_SYNC_ENABLED", "maybe", "expected true or false"),
        ("S3_SYNC_DELETE", "2", "expected true or false"),
        ("S3_SYNC_VERIFY_TLS", "nope", "expected true or false"),
        ("S3_SYNC_ALLOW_EMPTY_SOURCE", "y", "expected true or false"),
        ("S3_SYNC_PATH_STYLE", "sometimes", "expected one of auto, true, false"),
        ("S3_SYNC_LOG_LEVEL", "verbose", "expected one of"),
        ("S3_SYNC_LOG_FORMAT", "xml", "expected one of text, json"),
        ("S3_SYNC_MULTIPART_CHUNK_SIZE", "4MiB", "at least 5 MiB"),
        ("S3_SYNC_MULTIPART_CHUNK_SIZE", "lots", "expected a size"),
        ("S3_SYNC_MULTIPART_THRESHOLD", "1k", "at least 5 MiB"),
        ("S3_SYNC_BUCKET", "My_Bucket", "not a valid bucket name"),
        ("MINIO_BUCKET", "ab", "not a valid bucket name"),
        ("S3_SYNC_CA_BUNDLE", "/nonexistent/ca.pem", "no such file"),
        ("S3_SYNC_REGION", "us east 1", "not a valid region"),
    ],
)
def test_invalid_value_names_variable_and_value(name, value, why):
    message = problem(**{name: value})
    assert message.startswith("Invalid configuration: ")
    assert f"{name}={value!r}" in message
    assert why in message


def test_every_invalid_value_is_reported_at_once():
    message = problem(S3_SYNC_INTERVAL="abc", S3_SYNC_TIMEZONE="Nowhere/Land", S3_SYNC_MAX_RETRIES="-1",
                      MINIO_ENDPOINT="gopher://minio")
    for name in ("S3_SYNC_INTERVAL", "S3_SYNC_TIMEZONE", "S3_SYNC_MAX_RETRIES", "MINIO_ENDPOINT"):
        assert name in message


def test_endpoint_credentials_are_not_echoed():
    # An endpoint is no place for a password, but if one is put there the error
    # message must not repeat it.
    message = problem(S3_SYNC_ENDPOINT="https://admin:hunter2-pass@s3.example.com")
    assert "S3_SYNC_ENDPOINT" in message
    assert "hunter2-pass" not in message


def test_missing_wins_over_invalid():
    with pytest.raises(ConfigError, match="^Missing required environment variables: S3_SYNC_BUCKET$"):
        config.load({"S3_SYNC_ACCESS_KEY": "a", "S3_SYNC_SECRET_KEY": "b", "S3_SYNC_INTERVAL": "abc"})


# --- valid values ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "url", "secure", "aws"),
    [
        ("s3.amazonaws.com", "https://s3.amazonaws.com", True, True),
        ("s3.eu-west-1.amazonaws.com", "https://s3.eu-west-1.amazonaws.com", True, True),
        ("s3.us-west-000.backblazeb2.com", "https://s3.us-west-000.backblazeb2.com", True, False),
        ("minio:9000", "https://minio:9000", True, False),
        ("http://minio:9000", "http://minio:9000", False, False),
        ("https://minio:9000/", "https://minio:9000", True, False),
        ("HTTPS://S3.Example.COM", "https://s3.example.com", True, False),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000", False, False),
        ("http://[::1]:9000", "http://[::1]:9000", False, False),
        ("notamazonaws.com", "https://notamazonaws.com", True, False),
    ],
)
def test_endpoint_parsing(value, url, secure, aws):
    endpoint = load(S3_SYNC_ENDPOINT=value).dest_endpoint
    assert (endpoint.url, endpoint.secure, endpoint.is_aws) == (url, secure, aws)


def test_source_endpoint_without_scheme_defaults_to_https():
    assert load(MINIO_ENDPOINT="minio.internal:9000").source_endpoint.url == "https://minio.internal:9000"


@pytest.mark.parametrize(
    ("endpoint", "setting", "path_style"),
    [
        ("s3.amazonaws.com", None, False),
        ("https://s3.eu-central-1.amazonaws.com", None, False),
        ("http://minio:9000", None, True),
        ("s3.wasabisys.com", None, True),
        ("http://127.0.0.1:9000", None, True),
        ("s3.amazonaws.com", "true", True),
        ("http://minio:9000", "false", False),
        ("http://minio:9000", "AUTO", True),
    ],
)
def test_path_style(endpoint, setting, path_style):
    env = {"S3_SYNC_ENDPOINT": endpoint}
    if setting is not None:
        env["S3_SYNC_PATH_STYLE"] = setting
    assert load(**env).dest_path_style is path_style


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True), (" True ", True),
     ("false", False), ("False", False), ("0", False), ("no", False), ("off", False)],
)
def test_flags(value, expected):
    s = load(S3_SYNC_ENABLED=value, S3_SYNC_DELETE=value, S3_SYNC_ALLOW_EMPTY_SOURCE=value,
             S3_SYNC_VERIFY_TLS=value, MINIO_VERIFY_TLS=value)
    assert (s.enabled, s.delete, s.allow_empty_source, s.dest_verify_tls, s.source_verify_tls) == (expected,) * 5


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5242880", 5 * MiB), ("8MiB", 8 * MiB), ("8mib", 8 * MiB), ("8M", 8 * MiB), ("8 MB", 8 * MiB),
     ("1GiB", 1024 * MiB), ("5.5MiB", int(5.5 * MiB)), ("6144k", 6 * MiB)],
)
def test_sizes(value, expected):
    assert load(S3_SYNC_MULTIPART_CHUNK_SIZE=value).multipart_chunk_size == expected


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ({"S3_SYNC_INTERVAL": "60"}, "interval", 60.0),
        ({"S3_SYNC_INTERVAL": "0.5"}, "interval", 0.5),
        ({"S3_SYNC_MAX_RETRIES": "5"}, "max_retries", 5),
        ({"S3_SYNC_RETRY_DELAY": "0"}, "retry_delay", 0.0),
        ({"S3_SYNC_RETRY_DELAY": "120"}, "retry_delay", 120.0),
        ({"S3_SYNC_TIMEZONE": "Europe/Berlin"}, "timezone", "Europe/Berlin"),
        ({"S3_SYNC_REGION": "eu-central-1"}, "dest_region", "eu-central-1"),
        ({"S3_SYNC_LOG_LEVEL": "debug"}, "log_level", "DEBUG"),
        ({"S3_SYNC_LOG_FORMAT": "JSON"}, "log_format", "json"),
        ({"S3_SYNC_DELETE_MAX_PERCENT": "0"}, "delete_max_percent", 0.0),
        ({"S3_SYNC_DELETE_GUARD_FLOOR": "0"}, "delete_guard_floor", 0),
        ({"S3_SYNC_WORKERS": "32"}, "workers", 32),
        ({"MINIO_BUCKET": "photos.2024"}, "source_bucket", "photos.2024"),
        ({"MINIO_ACCESS_KEY": "src-key"}, "source_access_key", Secret("src-key")),
    ],
)
def test_values(env, field, expected):
    assert getattr(load(**env), field) == expected


# --- secrets ---------------------------------------------------------------------

def test_secrets_never_show_in_repr_or_str():
    s = load(MINIO_ACCESS_KEY="src-access-9f8e", MINIO_SECRET_KEY="src-secret-7d6c")
    for text in (repr(s), str(s), repr(s.summary())):
        for secret in ("AKIAEXAMPLE", "dest-Secret-1234", "src-access-9f8e", "src-secret-7d6c"):
            assert secret not in text
    assert set(s.secrets()) == {"AKIAEXAMPLE", "dest-Secret-1234", "src-access-9f8e", "src-secret-7d6c"}


def test_invalid_configuration_message_carries_no_secret():
    message = problem(S3_SYNC_INTERVAL="abc", MINIO_SECRET_KEY="src-secret-7d6c")
    assert "dest-Secret-1234" not in message and "src-secret-7d6c" not in message


def test_copy_connections_cover_event_workers_and_reconcile_copies_at_once():
    settings = config.replace(config.load({"S3_SYNC_ACCESS_KEY": "a", "S3_SYNC_SECRET_KEY": "b",
                                           "S3_SYNC_BUCKET": "mirror"}), workers=16, multipart_concurrency=4)
    assert settings.copy_connections == 16 + 16 + 4 + 4
