"""``python -m replicator reconcile`` as a user runs it: exit codes, messages, dry run.

Every subprocess run goes through ``run_cli``, which also asserts that no credential
from the environment appears in stdout or stderr, whatever happened.
"""

from __future__ import annotations

import io
import json
import re
import socket

import pytest

from replicator import app as app_module
from tests.conftest import run_cli, secret_values
from tests.servers import HOST, free_port

DEBUG = {"S3_SYNC_LOG_LEVEL": "debug"}
VALID = {"S3_SYNC_ACCESS_KEY": "AKIAEXAMPLE", "S3_SYNC_SECRET_KEY": "cli-secret-Zq81", "S3_SYNC_BUCKET": "mirror"}


def put(pair, key: str, data: bytes) -> None:
    pair.source.put_object(pair.source_bucket, key, io.BytesIO(data), len(data))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "✗" in line]


# --- exit 0 ---------------------------------------------------------------------------

def test_a_clean_run_exits_0_with_a_summary(pair):
    for key, data in (("a", b"12345"), ("b/c", b"xy"), ("empty", b"")):
        put(pair, key, data)
    first = run_cli({**pair.env, **DEBUG}, "reconcile")
    assert first.code == 0, first.stderr
    summary = re.search(r"Sync completed successfully: 3 copied, 0 updated, 0 deleted, 0 unchanged, 0 failed, "
                        r"0 skipped; [\d.]+ MiB in [\d.]+s \([\d.]+ MiB/s\)", first.stderr)
    assert summary, first.stderr
    assert pair.dest_snapshot() == pair.source_snapshot()

    second = run_cli(pair.env, "reconcile")
    assert second.code == 0
    assert "0 copied, 0 updated, 0 deleted, 3 unchanged" in second.stderr


def test_json_logs_at_debug_carry_no_secret(pair):
    put(pair, "a", b"1")
    result = run_cli({**pair.env, **DEBUG, "S3_SYNC_LOG_FORMAT": "json"}, "reconcile")
    assert result.code == 0
    [summary] = [json.loads(line) for line in result.stderr.splitlines() if '"reconcile_completed"' in line]
    assert summary["level"] == "INFO" and summary["message"].startswith("✓ Sync completed successfully: 1 copied")
    assert (summary["copied"], summary["bytes"], summary["trigger"]) == (1, 1, "reconcile")
    [copy] = [json.loads(line) for line in result.stderr.splitlines() if '"event": "copied"' in line]
    assert (copy["key"], copy["bytes"], copy["level"]) == ("a", 1, "DEBUG")


# --- exit 2: configuration and usage --------------------------------------------------------

def test_all_missing_variables_in_one_message():
    result = run_cli({}, "reconcile")
    assert result.code == 2
    assert error_lines(result.stderr) == [line for line in result.stderr.splitlines() if line]
    [line] = error_lines(result.stderr)
    # No keys is no error yet: the destination may have an IAM role (test_credentials.py).
    assert line.endswith("Missing required environment variables: S3_SYNC_BUCKET")


def test_some_missing_variables():
    result = run_cli({"S3_SYNC_SECRET_KEY": "only-the-secret-9"}, "reconcile")
    assert result.code == 2
    assert "Missing required environment variables: S3_SYNC_BUCKET, S3_SYNC_ACCESS_KEY" in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("S3_SYNC_INTERVAL", "abc"),
        ("S3_SYNC_MAX_RETRIES", "-2"),
        ("S3_SYNC_TIMEZONE", "Mars/Olympus_Mons"),
        ("S3_SYNC_ENDPOINT", "ftp://s3.example.com"),
        ("MINIO_ENDPOINT", "http://minio:notaport"),
        ("S3_SYNC_DELETE", "perhaps"),
    ],
)
def test_an_invalid_value_names_variable_and_value(name, value):
    result = run_cli({**VALID, name: value}, "reconcile")
    assert result.code == 2
    [line] = error_lines(result.stderr)
    assert f"{name}={value!r}" in line


def test_several_invalid_values_in_one_message():
    result = run_cli({**VALID, "S3_SYNC_INTERVAL": "abc", "S3_SYNC_RETRY_DELAY": "-1", "S3_SYNC_WORKERS": "0"},
                     "reconcile")
    assert result.code == 2
    [line] = error_lines(result.stderr)
    assert all(name in line for name in ("S3_SYNC_INTERVAL", "S3_SYNC_RETRY_DELAY", "S3_SYNC_WORKERS"))


@pytest.mark.parametrize("args", [("reconcile", "--no-such-flag"), (), ("frobnicate",)])
def test_usage_errors_exit_2(args):
    assert run_cli(VALID, *args).code == 2


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "] ! " in line]


@pytest.mark.parametrize("command", ["run", "check", "reconcile"])
def test_unknown_variables_are_warned_about_before_the_configuration_error(command):
    result = run_cli({**VALID, "S3_SYNC_DELET": "false", "S3_SYNC_SECRET_KY": "typo-secret-Vb52",
                      "S3_SYNC_INTERVAL": "1e-9"}, command)
    assert result.code == 2
    assert [line.split("] ! ", 1)[1] for line in warning_lines(result.stderr)] == [
        "S3_SYNC_DELET is not a replicator setting (did you mean S3_SYNC_DELETE?); ignored",
        "S3_SYNC_SECRET_KY is not a replicator setting (did you mean S3_SYNC_SECRET_KEY?); ignored",
    ]
    [line] = error_lines(result.stderr)
    assert "S3_SYNC_INTERVAL='1e-9': must be at least 60 seconds" in line
    assert "typo-secret-Vb52" not in result.output


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_unknown_variables_are_warned_about_on_a_good_start(pair):
    result = run_cli({**pair.env, "S3_SYNC_DELET": "false"}, "check")
    assert result.code == 0, result.stderr
    assert [line.split("] ! ", 1)[1] for line in warning_lines(result.stderr)] == [
        "S3_SYNC_DELET is not a replicator setting (did you mean S3_SYNC_DELETE?); ignored"]


# --- exit 2: an HTTP address or port ``run`` can't bind ----------------------------------------
# S3_SYNC_ENABLED stays false: ``run`` binds its HTTP server first either way, and so
# contacts nothing, even should the bind succeed (run_cli's timeout then fails the test).

def test_run_with_its_http_port_in_use_exits_2_naming_the_port():
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli({**VALID, "S3_SYNC_HTTP_HOST": HOST, "S3_SYNC_HTTP_PORT": str(port)}, "run", timeout=30)
    assert result.code == 2, result.output
    [line] = error_lines(result.stderr)
    assert line.endswith(f"✗ Can't start the HTTP server: S3_SYNC_HTTP_PORT='{port}': port {port} is already in "
                         f"use on {HOST} (Address already in use); stop what listens there or choose another port")
    assert "Traceback" not in result.output and "this is a bug" not in result.output


def test_run_with_an_http_host_that_is_not_local_exits_2_naming_the_host():
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): no machine's own address. Binding it fails at
    # once, locally; nothing is ever sent to it.
    result = run_cli({**VALID, "S3_SYNC_HTTP_HOST": "192.0.2.1", "S3_SYNC_HTTP_PORT": str(free_port())}, "run",
                     timeout=30)
    assert result.code == 2, result.output
    [line] = error_lines(result.stderr)
    assert "✗ Can't start the HTTP server: S3_SYNC_HTTP_HOST='192.0.2.1': not an address of this machine" in line
    assert "Traceback" not in result.output and "this is a bug" not in result.output


@pytest.mark.parametrize("host", ["http://0.0.0.0", "0.0.0.0:8080", "256.1.1.1"])
def test_run_with_an_http_host_that_is_no_address_exits_2_before_binding(host):
    result = run_cli({**VALID, "S3_SYNC_HTTP_HOST": host}, "run", timeout=30)
    assert result.code == 2, result.output
    [line] = error_lines(result.stderr)
    assert f"Invalid configuration: S3_SYNC_HTTP_HOST={host!r}: expected an IP address or a hostname" in line


# --- exit 1: endpoints and credentials -------------------------------------------------------

@pytest.mark.parametrize("pair", ["minio"], indirect=True)
def test_dead_source_endpoint(pair):
    port = free_port()  # nothing listens there
    result = run_cli({**pair.env, **DEBUG, "MINIO_ENDPOINT": f"http://127.0.0.1:{port}",
                      "S3_SYNC_MAX_RETRIES": "1"}, "reconcile", timeout=60)
    assert result.code == 1
    [line] = error_lines(result.stderr)
    assert f"source: check bucket {pair.source_bucket}: cannot connect to http://127.0.0.1:{port}" in line
    assert "Traceback" not in result.stderr


def test_dead_destination_endpoint(pair):
    port = free_port()
    result = run_cli({**pair.env, **DEBUG, "S3_SYNC_ENDPOINT": f"http://127.0.0.1:{port}",
                      "S3_SYNC_MAX_RETRIES": "1"}, "reconcile", timeout=60)
    assert result.code == 1
    [line] = error_lines(result.stderr)
    assert f"destination: check bucket {pair.dest_bucket}: cannot connect to http://127.0.0.1:{port}" in line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("pair", ["minio"], indirect=True)
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"MINIO_SECRET_KEY": "wrong-source-secret-1"}, "source: check bucket {src}: SignatureDoesNotMatch"),
        ({"MINIO_ACCESS_KEY": "unknown-source-key"}, "source: check bucket {src}: InvalidAccessKeyId"),
        # moto doesn't check signatures; the MinIO destination does.
        ({"S3_SYNC_SECRET_KEY": "wrong-dest-secret-2"}, "destination: check bucket {dst}: AccessDenied"),
        ({"S3_SYNC_ACCESS_KEY": "unknown-dest-key"}, "destination: check bucket {dst}: AccessDenied"),
    ],
    ids=["source secret", "source access key", "destination secret", "destination access key"],
)
def test_wrong_credentials(pair, override, expected):
    env = {**pair.env, **DEBUG, **override}
    result = run_cli(env, "reconcile")
    assert result.code == 1
    [line] = error_lines(result.stderr)
    assert expected.format(src=pair.source_bucket, dst=pair.dest_bucket) in line
    variable = next(iter(override))
    assert variable in line  # the message says which setting to check
    assert "Traceback" not in result.stderr


def test_missing_source_bucket(pair):
    result = run_cli({**pair.env, "MINIO_BUCKET": "no-such-bucket-here"}, "reconcile")
    assert result.code == 1
    assert "source: check bucket no-such-bucket-here: bucket does not exist" in result.stderr


# --- exit 3 is in test_reconcile_guards.py ----------------------------------------------------

# --- dry run ------------------------------------------------------------------------------

def test_dry_run_prints_the_plan_and_changes_nothing(pair):
    put(pair, "same", b"same")
    put(pair, "changed", b"old")
    assert run_cli(pair.env, "reconcile").code == 0
    put(pair, "changed", b"new!")  # 4 bytes
    put(pair, "new/file.txt", b"x" * 1000)
    pair.dest.put_object(Bucket=pair.dest_bucket, Key="orphan.bin", Body=b"o" * 42)
    before = pair.dest_snapshot()

    result = run_cli({**pair.env, **DEBUG}, "reconcile", "--dry-run")
    assert result.code == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted([
        "copy    new/file.txt  (1000 bytes)",
        "update  changed  (4 bytes)",
        "delete  orphan.bin  (42 bytes)",
    ])
    assert "Dry run: would copy 1, would update 1, would delete 1, 1 unchanged" in result.stderr
    assert "planned bytes: 1004" in result.stderr
    assert pair.dest_snapshot() == before


def test_dry_run_with_a_refused_guard_exits_3_and_changes_nothing(pair):
    put(pair, "a", b"1")
    assert run_cli(pair.env, "reconcile").code == 0
    pair.source.remove_object(pair.source_bucket, "a")
    result = run_cli(pair.env, "reconcile", "--dry-run")
    assert result.code == 3
    assert result.stdout == ""
    assert pair.dest_keys() == ["a"]


# --- secrets in tracebacks ------------------------------------------------------------------

def test_an_unexpected_error_is_logged_redacted(pair, monkeypatch, in_process_cli):
    put(pair, "a", b"1")
    secrets = secret_values(pair.env)
    real_build = app_module.build

    def build(settings, **kwargs):
        built = real_build(settings, **kwargs)

        def put_with_a_bug(key, *args, **kw):
            raise RuntimeError(f"bug while signing with {' '.join(secrets)}")

        built.dest.put = put_with_a_bug
        return built

    monkeypatch.setattr(app_module, "build", build)
    result = in_process_cli({**pair.env, **DEBUG}, "reconcile")
    assert result.code == 1
    assert "RuntimeError: bug while signing with ***" in result.stderr
    assert "Traceback" in result.stderr
    for secret in secrets:
        assert secret not in result.output


def test_an_error_escaping_the_run_is_logged_redacted_not_dumped(pair, monkeypatch, in_process_cli):
    secrets = secret_values(pair.env)
    real_build = app_module.build

    def build(settings, **kwargs):
        built = real_build(settings, **kwargs)

        def check_with_a_bug(*args, **kw):
            raise ValueError(f"unexpected answer for {secrets[1]}")

        built.source.check = check_with_a_bug
        return built

    monkeypatch.setattr(app_module, "build", build)
    result = in_process_cli({**pair.env, **DEBUG}, "reconcile")
    assert result.code == 1
    assert "ValueError: unexpected answer for ***" in result.stderr
    for secret in secrets:
        assert secret not in result.output
