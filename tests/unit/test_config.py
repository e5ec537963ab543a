"""config.load by tables: defaults, missing and invalid variables, ranges, contradictions,
endpoints, flags, and the warnings about variables no setting reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from replicator import config
from replicator.config import Endpoint, MiB, Secret
from replicator.errors import ConfigError
from replicator.filters import EVERYTHING, KeyFilter, Rule

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
    "dest_region": None,  # the bucket's own
    "dest_path_style": False,  # AWS: virtual-hosted
    "dest_verify_tls": True,
    "dest_ca_bundle": None,
    "source_endpoint": Endpoint("http", "minio:9000"),
    "source_access_key": Secret("minioadmin"),
    "source_secret_key": Secret("minioadmin"),
    "source_bucket": "relics",
    "source_verify_tls": True,
    "source_ca_bundle": None,
    "source_proxy": None,
    "dest_session_token": None,
    "dest_proxy": None,
    "enabled": False,
    "interval": 1800.0,
    "max_retries": 3,
    "retry_delay": 60.0,
    "timezone": "UTC",
    "delete": True,
    "delete_max_percent": 50.0,
    "delete_guard_floor": 10,
    "allow_empty_source": False,
    "workers": 64,
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
    "reconcile_ranges": 1,  # the lease's holder reconciles alone
    "metadata_sweep_interval": 86400.0,
    "metadata_sweep_rate": 100.0,
    "progress_interval": 30.0,
    "events": "listen",
    "nats_url": "nats://nats:4222",
    "nats_subject": "minio.events",
    "nats_stream": "minio-events",
    "nats_consumer": "replicator",
    "nats_user": None,
    "nats_password": None,
    "nats_ca_bundle": None,
    "nats_retention": 604800.0,
    "nats_dead_letter_age": 86400.0,
    "mirror": "relics",  # unnamed: the buckets name the pair
    "destination": "mirror",
    "list_metadata": False,
    "key_filter": EVERYTHING,
    "sse": None,  # the bucket's default encryption
    "sse_kms_key_id": None,
    "sse_c_key": None,
    "storage_class": None,  # the bucket's default class
    "max_bandwidth": None,
    "max_requests_per_second": None,
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
    ("missing", "named"),
    [
        # One key of the pair is a mistake: the other is named missing.
        (("S3_SYNC_ACCESS_KEY",), ("S3_SYNC_ACCESS_KEY",)),
        (("S3_SYNC_SECRET_KEY",), ("S3_SYNC_SECRET_KEY",)),
        (("S3_SYNC_BUCKET",), ("S3_SYNC_BUCKET",)),
        (("S3_SYNC_ACCESS_KEY", "S3_SYNC_BUCKET"), ("S3_SYNC_BUCKET", "S3_SYNC_ACCESS_KEY")),
        # Neither key: the credential chain's turn (stores/destination.py), not a config error.
        (("S3_SYNC_ACCESS_KEY", "S3_SYNC_SECRET_KEY", "S3_SYNC_BUCKET"), ("S3_SYNC_BUCKET",)),
    ],
)
def test_missing_required_variables_named_in_one_message(missing, named):
    env = {k: v for k, v in REQUIRED.items() if k not in missing}
    with pytest.raises(ConfigError) as caught:
        config.load(env)
    assert str(caught.value) == f"Missing required environment variables: {', '.join(named)}"


def test_without_either_key_the_destination_uses_the_credential_chain():
    s = config.load({"S3_SYNC_BUCKET": "mirror"})
    assert (s.dest_access_key, s.dest_secret_key, s.dest_session_token) == (None, None, None)


def test_a_session_token_completes_the_keys_and_is_a_secret():
    s = load(S3_SYNC_SESSION_TOKEN="FwoGZXIvYXdzEXAMPLETOKEN")
    assert s.dest_session_token.reveal() == "FwoGZXIvYXdzEXAMPLETOKEN"
    assert "FwoGZXIvYXdzEXAMPLETOKEN" in s.secrets()
    assert "FwoGZXIvYXdzEXAMPLETOKEN" not in repr(s)


def test_a_session_token_without_keys_is_refused_and_not_shown():
    with pytest.raises(ConfigError) as caught:
        config.load({"S3_SYNC_BUCKET": "mirror", "S3_SYNC_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLETOKEN"})
    assert "S3_SYNC_SESSION_TOKEN" in str(caught.value) and "FwoGZXIvYXdzEXAMPLETOKEN" not in str(caught.value)


def test_blank_required_variable_counts_as_missing():
    with pytest.raises(ConfigError, match=r"Missing required environment variables: S3_SYNC_SECRET_KEY$"):
        config.load({**REQUIRED, "S3_SYNC_SECRET_KEY": "   "})


# --- invalid values ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("S3_SYNC_INTERVAL", "abc", "expected a number"),
        ("S3_SYNC_INTERVAL", "-5", "at least 60 seconds"),
        ("S3_SYNC_INTERVAL", "0", "at least 60 seconds"),
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
        ("S3_SYNC_CONNECT_TIMEOUT", "0", "at least 1 second"),
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
        ("S3_SYNC_MAX_BANDWIDTH", "0", "at least 64 KiB"),  # unset is no limit; 0 is not a way to say it
        ("S3_SYNC_MAX_BANDWIDTH", "fast", "expected a size"),
        ("S3_SYNC_MAX_REQUESTS_PER_SECOND", "many", "expected a number"),
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
    with pytest.raises(ConfigError, match=r"^Missing required environment variables: S3_SYNC_BUCKET$"):
        config.load({"S3_SYNC_ACCESS_KEY": "a", "S3_SYNC_SECRET_KEY": "b", "S3_SYNC_INTERVAL": "abc"})


# --- ranges ----------------------------------------------------------------------------

# Every numeric setting: its field, the lowest and highest values accepted, and values
# just outside. Written out, not derived from config.RANGES, so a changed bound shows here.
BOUNDS = [
    ("S3_SYNC_INTERVAL", "interval", ("60", 60.0), ("604800", 604800.0), "59.9", "604801"),
    ("S3_SYNC_RECONCILE_COOLDOWN", "reconcile_cooldown", ("1", 1.0), ("604800", 604800.0), "0.5", "604800.5"),
    ("S3_SYNC_MAX_RETRIES", "max_retries", ("1", 1), ("100", 100), "0", "101"),
    ("S3_SYNC_RETRY_DELAY", "retry_delay", ("0", 0.0), ("3600", 3600.0), "-0.01", "3600.01"),
    ("S3_SYNC_DELETE_MAX_PERCENT", "delete_max_percent", ("0", 0.0), ("100", 100.0), "-0.1", "100.1"),
    ("S3_SYNC_DELETE_GUARD_FLOOR", "delete_guard_floor", ("0", 0), ("1000000", 1_000_000), "-1", "1000001"),
    ("S3_SYNC_WORKERS", "workers", ("1", 1), ("256", 256), "0", "257"),
    ("S3_SYNC_MULTIPART_THRESHOLD", "multipart_threshold", ("5MiB", 5 * MiB), ("512MiB", 512 * MiB),
     str(5 * MiB - 1), str(512 * MiB + 1)),
    ("S3_SYNC_MULTIPART_CHUNK_SIZE", "multipart_chunk_size", ("5MiB", 5 * MiB), ("512MiB", 512 * MiB),
     str(5 * MiB - 1), "513MiB"),
    ("S3_SYNC_MULTIPART_CONCURRENCY", "multipart_concurrency", ("1", 1), ("64", 64), "0", "65"),
    ("S3_SYNC_LIST_CONCURRENCY", "list_concurrency", ("1", 1), ("64", 64), "0", "65"),
    ("S3_SYNC_LIST_PAGE_SIZE", "list_page_size", ("1", 1), ("1000", 1000), "0", "1001"),
    ("S3_SYNC_METADATA_SWEEP_INTERVAL", "metadata_sweep_interval", ("0", 0.0), ("2592000", 2592000.0), "-1",
     "2592001"),
    ("S3_SYNC_METADATA_SWEEP_RATE", "metadata_sweep_rate", ("1", 1.0), ("10000", 10000.0), "0.5", "10001"),
    ("S3_SYNC_PROGRESS_INTERVAL", "progress_interval", ("0", 0.0), ("86400", 86400.0), "-1", "86401"),
    ("S3_SYNC_RECONCILE_RANGES", "reconcile_ranges", ("1", 1), ("256", 256), "0", "257"),
    ("S3_SYNC_NATS_RETENTION", "nats_retention", ("3600", 3600.0), ("31536000", 31536000.0), "3599", "31536001"),
    ("S3_SYNC_NATS_DEAD_LETTER_AGE", "nats_dead_letter_age", ("1", 1.0), ("2592000", 2592000.0), "0.99", "2592001"),
    ("S3_SYNC_MAX_BANDWIDTH", "max_bandwidth", ("64KiB", 65536), ("100GiB", 100 * 1024**3), "65535", "101GiB"),
    ("S3_SYNC_MAX_REQUESTS_PER_SECOND", "max_requests_per_second", ("1", 1.0), ("100000", 100_000.0), "0.5",
     "100001"),
    ("S3_SYNC_CONNECT_TIMEOUT", "connect_timeout", ("1", 1.0), ("300", 300.0), "0.99", "300.01"),
    ("S3_SYNC_READ_TIMEOUT", "read_timeout", ("1", 1.0), ("3600", 3600.0), "0.99", "3600.01"),
    ("S3_SYNC_QUEUE_SIZE", "queue_size", ("1", 1), ("1000000", 1_000_000), "0", "1000001"),
    ("S3_SYNC_HTTP_PORT", "http_port", ("1", 1), ("65535", 65535), "0", "65536"),
    ("S3_SYNC_SHUTDOWN_TIMEOUT", "shutdown_timeout", ("0", 0.0), ("3600", 3600.0), "-0.01", "3600.01"),
    ("S3_SYNC_LISTEN_TIMEOUT", "listen_timeout", ("1", 1.0), ("600", 600.0), "0.99", "600.01"),
]
# A part is at most the threshold: the chunk size's upper edge needs a threshold as large.
# A message is dead-lettered before the stream drops it: the age's upper edge needs a longer retention.
ALONGSIDE = {"S3_SYNC_MULTIPART_CHUNK_SIZE": {"S3_SYNC_MULTIPART_THRESHOLD": "512MiB"},
             "S3_SYNC_NATS_DEAD_LETTER_AGE": {"S3_SYNC_NATS_RETENTION": "31536000"},
             "S3_SYNC_RECONCILE_RANGES": {"S3_SYNC_EVENTS": "jetstream"}}
IDS = [row[0] for row in BOUNDS]


def test_every_range_is_tested():
    assert set(IDS) == set(config.RANGES)


@pytest.mark.parametrize(("name", "field", "lowest", "highest", "below", "above"), BOUNDS, ids=IDS)
def test_the_edges_of_a_range_are_accepted(name, field, lowest, highest, below, above):
    for value, expected in (lowest, highest):
        assert getattr(load(**{name: value}, **ALONGSIDE.get(name, {})), field) == expected


@pytest.mark.parametrize(("name", "field", "lowest", "highest", "below", "above"), BOUNDS, ids=IDS)
def test_values_outside_a_range_are_refused(name, field, lowest, highest, below, above):
    for value, why in ((below, "must be at least"), (above, "must be at most")):
        message = problem(**{name: value}, **ALONGSIDE.get(name, {}))
        assert message.startswith(f"Invalid configuration: {name}={value!r}: {why} ")
        assert "; " not in message  # this problem only


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        # The values of issue 10: each passed, then crashed or misbehaved.
        ("S3_SYNC_CONNECT_TIMEOUT", "1e10", "must be at most 300 seconds"),  # OverflowError at connect
        ("S3_SYNC_READ_TIMEOUT", "1e300", "must be at most 3600 seconds"),
        ("S3_SYNC_SHUTDOWN_TIMEOUT", "1e12", "must be at most 3600 seconds"),  # OverflowError at SIGTERM
        ("S3_SYNC_MULTIPART_THRESHOLD", "10TiB", "must be at most 512 MiB"),  # held in memory
        ("S3_SYNC_MULTIPART_CHUNK_SIZE", "6GiB", "must be at most 512 MiB"),  # S3's largest part is 5 GiB
        ("S3_SYNC_QUEUE_SIZE", str(10**30), "must be at most 1,000,000"),
        ("S3_SYNC_INTERVAL", "1e-9", "must be at least 60 seconds"),  # back-to-back reconciles
        # Their relatives.
        ("S3_SYNC_INTERVAL", "1e308", "must be at most 604,800 seconds"),
        ("S3_SYNC_LISTEN_TIMEOUT", "1e10", "must be at most 600 seconds"),
        ("S3_SYNC_RETRY_DELAY", "1e20", "must be at most 3600 seconds"),
        ("S3_SYNC_RECONCILE_COOLDOWN", "1e20", "must be at most 604,800 seconds"),
        ("S3_SYNC_DELETE_GUARD_FLOOR", str(10**30), "must be at most 1,000,000"),
        ("S3_SYNC_HTTP_PORT", str(10**30), "must be at most 65535"),
        ("S3_SYNC_WORKERS", str(10**30), "must be at most 256"),
        ("S3_SYNC_CONNECT_TIMEOUT", "1e400", "expected a finite number"),
        ("S3_SYNC_CONNECT_TIMEOUT", "-1e400", "expected a finite number"),
        ("S3_SYNC_MULTIPART_THRESHOLD", "9" * 400, "must be at most 512 MiB"),  # an infinite float once
        ("S3_SYNC_MULTIPART_THRESHOLD", "9" * 400 + "TiB", "must be at most 512 MiB"),
        ("S3_SYNC_QUEUE_SIZE", "1e30", "expected a whole number"),
    ],
)
def test_huge_and_tiny_values_are_refused(name, value, why):
    assert problem(**{name: value}) == f"Invalid configuration: {name}={value!r}: {why}"


# --- settings that contradict each other -------------------------------------------------

@pytest.mark.parametrize(
    ("env", "chunk"),
    [
        ({"S3_SYNC_MULTIPART_THRESHOLD": "8MiB", "S3_SYNC_MULTIPART_CHUNK_SIZE": "8MiB"}, 8 * MiB),
        ({"S3_SYNC_MULTIPART_THRESHOLD": "512MiB", "S3_SYNC_MULTIPART_CHUNK_SIZE": "100MiB"}, 100 * MiB),
        ({"S3_SYNC_MULTIPART_CHUNK_SIZE": "16MiB"}, 16 * MiB),  # the default threshold
        # Unset, the part size follows a threshold below its 8 MiB default.
        ({"S3_SYNC_MULTIPART_THRESHOLD": "5MiB"}, 5 * MiB),
        ({"S3_SYNC_MULTIPART_THRESHOLD": "6MiB"}, 6 * MiB),
        ({"S3_SYNC_MULTIPART_THRESHOLD": "64MiB"}, 8 * MiB),
    ],
)
def test_part_size_up_to_the_threshold(env, chunk):
    assert load(**env).multipart_chunk_size == chunk


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"S3_SYNC_MULTIPART_CHUNK_SIZE": "32MiB"},
         "S3_SYNC_MULTIPART_CHUNK_SIZE='32MiB': must be at most S3_SYNC_MULTIPART_THRESHOLD (16 MiB by default)"),
        ({"S3_SYNC_MULTIPART_CHUNK_SIZE": "8MiB", "S3_SYNC_MULTIPART_THRESHOLD": "5MiB"},
         "S3_SYNC_MULTIPART_CHUNK_SIZE='8MiB': must be at most S3_SYNC_MULTIPART_THRESHOLD ('5MiB')"),
        ({"S3_SYNC_MULTIPART_CHUNK_SIZE": "512MiB", "S3_SYNC_MULTIPART_THRESHOLD": "511MiB"},
         "S3_SYNC_MULTIPART_CHUNK_SIZE='512MiB': must be at most S3_SYNC_MULTIPART_THRESHOLD ('511MiB')"),
    ],
)
def test_a_part_larger_than_the_threshold_is_refused(env, expected):
    assert problem(**env).startswith(f"Invalid configuration: {expected}: ")


def test_an_invalid_threshold_is_reported_alone_not_as_a_contradiction():
    message = problem(S3_SYNC_MULTIPART_THRESHOLD="10TiB", S3_SYNC_MULTIPART_CHUNK_SIZE="100MiB")
    assert message == "Invalid configuration: S3_SYNC_MULTIPART_THRESHOLD='10TiB': must be at most 512 MiB"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"S3_SYNC_NATS_DEAD_LETTER_AGE": "604800"},
         "S3_SYNC_NATS_DEAD_LETTER_AGE='604800': must be less than S3_SYNC_NATS_RETENTION (604,800 s by default)"),
        ({"S3_SYNC_NATS_DEAD_LETTER_AGE": "7200", "S3_SYNC_NATS_RETENTION": "3600"},
         "S3_SYNC_NATS_DEAD_LETTER_AGE='7200': must be less than S3_SYNC_NATS_RETENTION ('3600')"),
    ],
)
def test_a_dead_letter_age_the_stream_never_reaches_is_refused(env, expected):
    assert problem(**env).startswith(f"Invalid configuration: {expected}: ")


def test_ranges_of_a_reconcile_need_processes_sharing_a_jetstream_consumer():
    assert problem(S3_SYNC_RECONCILE_RANGES="4").startswith(
        "Invalid configuration: S3_SYNC_RECONCILE_RANGES='4': needs S3_SYNC_EVENTS=jetstream")
    assert load(S3_SYNC_RECONCILE_RANGES="1").reconcile_ranges == 1
    assert load(S3_SYNC_RECONCILE_RANGES="4", S3_SYNC_EVENTS="jetstream").reconcile_ranges == 4


@pytest.mark.parametrize(("retention", "age"), [("3600", 1800.0), ("172800", 86400.0), ("604800", 86400.0)])
def test_unset_the_dead_letter_age_follows_a_short_retention(retention, age):
    assert load(S3_SYNC_NATS_RETENTION=retention).nats_dead_letter_age == age


def test_a_dead_letter_age_below_the_retention_is_taken():
    assert load(S3_SYNC_NATS_DEAD_LETTER_AGE="3599", S3_SYNC_NATS_RETENTION="3600").nats_dead_letter_age == 3599.0


@pytest.fixture
def ca_file(tmp_path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(path)


@pytest.mark.parametrize(("verify", "bundle"), [("S3_SYNC_VERIFY_TLS", "S3_SYNC_CA_BUNDLE"),
                                                ("MINIO_VERIFY_TLS", "MINIO_CA_BUNDLE")])
@pytest.mark.parametrize("off", ["false", "0", "no", "off"])
def test_verification_off_with_a_ca_bundle_is_refused(verify, bundle, off, ca_file):
    message = problem(**{verify: off, bundle: ca_file})
    assert message.startswith(f"Invalid configuration: {bundle}={ca_file!r}: contradicts {verify}={off!r}")


@pytest.mark.parametrize(("verify", "bundle", "fields"), [
    ("S3_SYNC_VERIFY_TLS", "S3_SYNC_CA_BUNDLE", ("dest_verify_tls", "dest_ca_bundle")),
    ("MINIO_VERIFY_TLS", "MINIO_CA_BUNDLE", ("source_verify_tls", "source_ca_bundle")),
])
def test_verification_and_a_ca_bundle_alone_or_together(verify, bundle, fields, ca_file):
    on, path = fields
    assert (getattr(load(**{verify: "true", bundle: ca_file}), on), getattr(load(**{bundle: ca_file}), path)) == (
        True, ca_file)
    assert getattr(load(**{verify: "false"}), on) is False
    # The other side's bundle is no contradiction.
    other = "MINIO_CA_BUNDLE" if bundle == "S3_SYNC_CA_BUNDLE" else "S3_SYNC_CA_BUNDLE"
    assert getattr(load(**{verify: "false", other: ca_file}), on) is False


@pytest.mark.parametrize(
    ("dest", "source"),
    [
        ("http://minio:9000", "http://minio:9000"),
        ("HTTP://MINIO:9000", "http://minio:9000"),  # case
        ("http://minio", "http://minio:80"),  # the scheme's default port
        ("minio.example.com", "https://minio.example.com:443"),  # no scheme: https
        ("https://minio.example.com/", "minio.example.com"),
        ("http://[::1]:9000", "http://[0:0::1]:9000"),  # one IPv6 address, two spellings
        ("http://minio:9000", "https://minio:9000"),  # one server: the scheme that is wrong fails anyway
    ],
)
def test_a_bucket_mirrored_onto_itself_is_refused(dest, source):
    message = problem(S3_SYNC_ENDPOINT=dest, MINIO_ENDPOINT=source, S3_SYNC_BUCKET="photos", MINIO_BUCKET="photos")
    assert message.startswith("Invalid configuration: S3_SYNC_BUCKET='photos': the destination is the source")
    assert "MINIO_BUCKET" in message and "MINIO_ENDPOINT" in message and "S3_SYNC_ENDPOINT" in message


@pytest.mark.parametrize(
    ("dest", "source", "dest_bucket", "source_bucket"),
    [
        ("http://minio:9000", "http://minio:9000", "photos-copy", "photos"),  # two buckets, one server
        ("http://minio:9000", "http://minio:9001", "photos", "photos"),
        ("http://minio", "https://minio", "photos", "photos"),  # ports 80 and 443
        ("http://minio-a:9000", "http://minio-b:9000", "photos", "photos"),
        # Names aren't resolved (config does no I/O): these may be one server, and pass.
        ("http://localhost:9000", "http://127.0.0.1:9000", "photos", "photos"),
    ],
)
def test_the_same_bucket_elsewhere_or_another_bucket_is_fine(dest, source, dest_bucket, source_bucket):
    s = load(S3_SYNC_ENDPOINT=dest, MINIO_ENDPOINT=source, S3_SYNC_BUCKET=dest_bucket, MINIO_BUCKET=source_bucket)
    assert (s.dest_bucket, s.source_bucket) == (dest_bucket, source_bucket)


def test_invalid_endpoints_are_not_also_a_mirror_onto_itself():
    message = problem(S3_SYNC_ENDPOINT="ftp://x", MINIO_ENDPOINT="gopher://x", S3_SYNC_BUCKET="b-1", MINIO_BUCKET="b-1")
    assert "S3_SYNC_BUCKET" not in message


# --- the HTTP address ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "value",
    ["0.0.0.0", "127.0.0.1", "10.1.2.3", "::", "::1", "fe80::1%eth0", "localhost", "sidecar.internal",
     "s3-sync", "relic_s3-sync_1", "sidecar.example.com."],
)
def test_http_host_accepts_an_address_or_a_hostname(value):
    assert load(S3_SYNC_HTTP_HOST=f" {value} ").http_host == value


@pytest.mark.parametrize(
    "value",
    ["http://0.0.0.0", "0.0.0.0:8080", "[::1]", "*", "256.1.1.1", "1.2.3", "10.0.0.1/24", "-sidecar",
     "sidecar-", "side car", "sidecar..internal", "a" * 64 + ".internal", ("a" * 60 + ".") * 5, "sidecar@host"],
)
def test_http_host_refuses_what_is_no_address(value):
    message = problem(S3_SYNC_HTTP_HOST=value)
    assert message.startswith(f"Invalid configuration: S3_SYNC_HTTP_HOST={value!r}: expected an IP address or a "
                              "hostname")


# --- all at once ----------------------------------------------------------------------------

def test_bounds_contradictions_and_bad_values_are_reported_at_once(ca_file):
    message = problem(S3_SYNC_INTERVAL="1e-9", S3_SYNC_QUEUE_SIZE=str(10**30), S3_SYNC_HTTP_HOST="*",
                      S3_SYNC_MULTIPART_CHUNK_SIZE="64MiB", MINIO_VERIFY_TLS="false", MINIO_CA_BUNDLE=ca_file,
                      S3_SYNC_ENDPOINT="http://minio:9000", S3_SYNC_BUCKET="relics", S3_SYNC_TIMEZONE="Mars/Base")
    names = ("S3_SYNC_INTERVAL", "S3_SYNC_QUEUE_SIZE", "S3_SYNC_HTTP_HOST", "S3_SYNC_MULTIPART_CHUNK_SIZE",
             "MINIO_CA_BUNDLE", "S3_SYNC_BUCKET", "S3_SYNC_TIMEZONE")
    problems = message.removeprefix("Invalid configuration: ").split("; ")
    assert sorted(p.split("=", 1)[0] for p in problems if re.match(r"^[A-Z0-9_]+=", p)) == sorted(names)


# --- variables no setting reads ----------------------------------------------------------------

@pytest.mark.parametrize(
    ("env", "warnings"),
    [
        ({}, []),
        ({"S3_SYNC_DELETE": "false", "S3_SYNC_INTERVAL": "60"}, []),
        ({"S3_SYNC_DELET": "false"},
         ["S3_SYNC_DELET is not a replicator setting (did you mean S3_SYNC_DELETE?); ignored"]),
        ({"S3_SYNC_INTERVALL": "60"},
         ["S3_SYNC_INTERVALL is not a replicator setting (did you mean S3_SYNC_INTERVAL?); ignored"]),
        ({"S3_SYNC_VERIFY_SSL": "false"},
         ["S3_SYNC_VERIFY_SSL is not a replicator setting (did you mean S3_SYNC_VERIFY_TLS?); ignored"]),
        ({"S3_SYNC_DELETE_MAX_PERCENTAGE": "10"},
         ["S3_SYNC_DELETE_MAX_PERCENTAGE is not a replicator setting (did you mean S3_SYNC_DELETE_MAX_PERCENT?); "
          "ignored"]),
        ({"S3_SYNC_PORT": "9090"},
         ["S3_SYNC_PORT is not a replicator setting (did you mean S3_SYNC_HTTP_PORT?); ignored"]),
        ({"S3_SYNC_MINIO_BUCKET": "photos"},
         ["S3_SYNC_MINIO_BUCKET is not a replicator setting (did you mean MINIO_BUCKET?); ignored"]),
        # Nothing close: no guess. (The shared prefix doesn't make every name look alike.)
        ({"S3_SYNC_FOO": "1"}, ["S3_SYNC_FOO is not a replicator setting; ignored"]),
        ({"S3_SYNC_": "1"}, ["S3_SYNC_ is not a replicator setting; ignored"]),
        # One warning each, in name order.
        ({"S3_SYNC_WORKER": "4", "S3_SYNC_BUKET": "b"},
         ["S3_SYNC_BUKET is not a replicator setting (did you mean S3_SYNC_BUCKET?); ignored",
          "S3_SYNC_WORKER is not a replicator setting (did you mean S3_SYNC_WORKERS?); ignored"]),
        # MINIO_* is MinIO's own server's too (MINIO_ROOT_USER, ...), from the same .env.
        ({"MINIO_ROOT_USER": "admin", "MINIO_BUCKT": "x", "AWS_REGION": "eu-west-1", "s3_sync_delet": "x"}, []),
    ],
)
def test_unknown_variables_are_named_with_the_closest_setting(env, warnings):
    assert config.unknown_variables({**REQUIRED, **env}) == warnings


def test_unknown_variable_warnings_never_show_the_value():
    [warning] = config.unknown_variables({"S3_SYNC_SECRET_KY": "hunter2-secret-value"})
    assert "hunter2" not in warning and "S3_SYNC_SECRET_KEY" in warning


def test_unknown_variables_are_found_even_when_the_required_ones_are_missing():
    assert config.unknown_variables({"S3_SYNC_BUKET": "b"}) == [
        "S3_SYNC_BUKET is not a replicator setting (did you mean S3_SYNC_BUCKET?); ignored"]


@pytest.mark.parametrize("env", [
    {},
    {"S3_SYNC_INTERVAL": "abc", "S3_SYNC_HTTP_HOST": "*", "S3_SYNC_ENDPOINT": "ftp://x"},
    {"S3_SYNC_VERIFY_TLS": "false", "S3_SYNC_CA_BUNDLE": __file__, "MINIO_VERIFY_TLS": "no",
     "MINIO_CA_BUNDLE": __file__, "S3_SYNC_MULTIPART_CHUNK_SIZE": "64MiB", "S3_SYNC_ENDPOINT": "http://minio:9000",
     "S3_SYNC_BUCKET": "relics"},
], ids=["defaults", "invalid", "contradictions"])
def test_every_variable_load_reads_is_known(env):
    recording = config.RecordingEnvironment({**REQUIRED, **env})
    try:
        config.load(recording)
    except ConfigError:
        pass
    assert recording.read <= config.known_variables()
    assert config.unknown_variables(dict(recording)) == []


def test_every_variable_config_spells_out_is_known():
    spelled = set(re.findall(r"\"((?:S3_SYNC|MINIO)_[A-Z_]+)\"", Path(config.__file__).read_text()))
    # Spelled from the endpoint's scheme; and NO_PROXY in both cases.
    proxies = {"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"}
    assert spelled | proxies == config.known_variables()


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
     ("0.5GiB", 512 * MiB), ("0.5 gib", 512 * MiB), ("5.5MiB", int(5.5 * MiB)), ("6144k", 6 * MiB)],
)
def test_sizes(value, expected):
    s = load(S3_SYNC_MULTIPART_CHUNK_SIZE=value, S3_SYNC_MULTIPART_THRESHOLD=value)
    assert (s.multipart_chunk_size, s.multipart_threshold) == (expected, expected)


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ({"S3_SYNC_INTERVAL": "60"}, "interval", 60.0),
        ({"S3_SYNC_INTERVAL": "90.5"}, "interval", 90.5),
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


# --- filters ----------------------------------------------------------------------

def test_prefix_and_filter_rules_are_read_one_rule_a_line():
    s = load(S3_SYNC_PREFIX=" photos/ ", S3_SYNC_FILTER="# the rules\n- *.tmp\r\n\n  + /photos/**  \n- **\n")
    assert s.key_filter == KeyFilter("photos/", (Rule(False, "*.tmp"), Rule(True, "/photos/**"), Rule(False, "**")))
    assert s.summary()["Keys"] == "prefix 'photos/'; - *.tmp; + /photos/**; - **"
    assert "Keys" not in load().summary()


@pytest.mark.parametrize(
    ("rules", "why"),
    [
        ("*.tmp", "rule '*.tmp': expected '+ pattern' (include) or '- pattern' (exclude)"),
        ("- *.tmp\n+", "rule '+': empty pattern"),
        ("- cache/", "write 'cache/**'"),
    ],
)
def test_a_bad_filter_rule_is_named_with_the_variable(rules, why):
    message = problem(S3_SYNC_FILTER=rules, S3_SYNC_INTERVAL="abc")
    assert "S3_SYNC_FILTER=" in message and why in message
    assert "S3_SYNC_INTERVAL" in message  # with every other problem, at once


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


# --- proxies ------------------------------------------------------------------------

PROXY = "http://127.0.0.1:3128"


@pytest.mark.parametrize(("env", "source", "dest"), [
    ({}, None, None),
    # Each side by its own endpoint's scheme: the source is http://minio:9000 by default.
    ({"HTTPS_PROXY": PROXY}, None, PROXY),
    ({"HTTP_PROXY": PROXY}, PROXY, None),
    ({"https_proxy": PROXY, "http_proxy": PROXY}, PROXY, PROXY),
    # The lower-case name wins, as curl and Python's urllib read them.
    ({"HTTPS_PROXY": "http://upper:1", "https_proxy": PROXY}, None, PROXY),
    # curl's shorthand without a scheme.
    ({"HTTPS_PROXY": "127.0.0.1:3128"}, None, PROXY),
    ({"HTTP_PROXY": PROXY, "NO_PROXY": "minio"}, None, None),
    ({"HTTP_PROXY": PROXY, "no_proxy": "minio", "NO_PROXY": ""}, None, None),
    ({"HTTPS_PROXY": PROXY, "NO_PROXY": ".amazonaws.com"}, None, None),
    ({"HTTPS_PROXY": PROXY, "NO_PROXY": "*"}, None, None),
], ids=["none", "https-only", "http-only", "both-lower", "lower-wins", "no-scheme", "no-proxy-host",
        "no-proxy-lower-wins", "no-proxy-domain", "no-proxy-star"])
def test_each_side_gets_the_proxy_of_its_scheme_unless_no_proxy_names_it(env, source, dest):
    settings = load(**env)
    assert (settings.source_proxy, settings.dest_proxy) == (source, dest)


@pytest.mark.parametrize(("host", "port", "no_proxy", "expected"), [
    ("minio", 9000, "minio", True),
    ("minio", 9000, "minio:9000", True),
    ("minio", 9000, "minio:9001", False),
    ("s3.eu-central-1.amazonaws.com", 443, "amazonaws.com", True),
    ("s3.eu-central-1.amazonaws.com", 443, ".amazonaws.com", True),
    ("notamazonaws.com", 443, "amazonaws.com", False),
    ("10.1.2.3", 9000, "localhost, 10.0.0.0/8", True),
    ("10.1.2.3", 9000, "192.168.0.0/16", False),
    ("::1", 9000, "[::1]:9000", True),
    ("::1", 9000, "::1", True),
    ("minio", 9000, "", False),
    ("MinIO", 9000, "MINIO", True),
])
def test_no_proxy_entries(host, port, no_proxy, expected):
    assert config.bypasses(host, port, no_proxy) is expected


@pytest.mark.parametrize(("value", "why"), [
    ("socks5://127.0.0.1:1080", "SOCKS proxies are not supported"),
    ("http://:3128", "with a host"),
    ("http://127.0.0.1:port", "not a proxy URL"),
])
def test_a_proxy_that_is_not_one_is_refused_naming_the_variable(value, why):
    with pytest.raises(ConfigError) as error:
        load(HTTPS_PROXY=value)
    assert f"HTTPS_PROXY={value!r}" in str(error.value) and why in str(error.value)


def test_a_proxy_password_is_never_shown_and_is_redacted_from_logs():
    with pytest.raises(ConfigError) as error:
        load(HTTPS_PROXY="socks5://user:hunter2-proxy@127.0.0.1:1080")
    assert "hunter2-proxy" not in str(error.value)
    assert "socks5://user:***@127.0.0.1:1080" in str(error.value)
    assert "hunter2-proxy" in load(HTTPS_PROXY="http://user:hunter2-proxy@127.0.0.1:3128").secrets()
