"""The log sink: every configured credential is redacted, in messages and tracebacks."""

from __future__ import annotations

import io
import json
import sys

import pytest
from loguru import logger

from replicator.observability import logging as logsetup

SECRETS = ("AKIAEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG", "minio-secret-99")


@pytest.fixture
def stream():
    buffer = io.StringIO()
    yield buffer
    logsetup.setup(stream=sys.__stderr__)  # back to a plain stderr sink for whoever runs next


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_redacted_from_messages_and_tracebacks(stream, fmt):
    logsetup.setup("DEBUG", fmt, "UTC", SECRETS, stream=stream, colorize=False)
    logger.debug("signing with {} and {}", SECRETS[0], SECRETS[1])
    try:
        raise RuntimeError(f"request failed: secret={SECRETS[2]}")
    except RuntimeError:
        logger.exception("boom")
    text = stream.getvalue()
    assert "signing with *** and ***" in text
    assert "RuntimeError" in text  # the traceback is there, redacted
    for secret in SECRETS:
        assert secret not in text


def test_json_lines(stream):
    logsetup.setup("INFO", "json", "Europe/Berlin", (), stream=stream)
    logger.debug("hidden at INFO")
    logger.info("photos/a.jpg: copied")
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert (record["level"], record["message"]) == ("INFO", "photos/a.jpg: copied")
    assert record["time"].endswith(("+01:00", "+02:00"))  # in S3_SYNC_TIMEZONE


def test_text_lines_have_the_established_timestamp_shape(stream):
    logsetup.setup("INFO", "text", "UTC", (), stream=stream, colorize=False)
    logger.info("hello")
    line = stream.getvalue().rstrip("\n")
    assert line[0] == "[" and line[20] == "]" and line.endswith("hello")


def test_json_lines_carry_the_call_sites_fields_redacted_and_escaped(stream):
    logsetup.setup("DEBUG", "json", "UTC", SECRETS, stream=stream)
    logger.debug("{}: copied", "a\nb.jpg", event="copied", key="a\nb.jpg", bytes=12, duration_s=0.25,
                 trigger="event", side="destination", error_code=None, note=f"token {SECRETS[0]}")
    record = json.loads(stream.getvalue())
    assert record["event"] == "copied" and record["bytes"] == 12 and record["duration_s"] == 0.25
    assert record["key"] == r"a\x0ab.jpg" == record["message"].split(":")[0]  # escaped as the message is
    assert (record["trigger"], record["side"], record["error_code"]) == ("event", "destination", None)
    assert record["note"] == "token ***"


def test_json_uses_standard_level_names(stream):
    logsetup.setup("TRACE", "json", "UTC", (), stream=stream)
    logger.success("done")
    logger.trace("detail")
    logger.warning("careful")
    assert [json.loads(line)["level"] for line in stream.getvalue().splitlines()] == ["INFO", "DEBUG", "WARNING"]


def test_text_lines_are_the_old_sidecars_shape_with_a_mark_only_where_it_warns(stream):
    logsetup.setup("DEBUG", "text", "UTC", (), stream=stream, colorize=False)
    logger.success("✓ Sync completed successfully: 1 copied")
    logger.info("Starting continuous sync loop...")
    logger.warning("careful")
    logger.error("broken")
    logger.debug("detail")
    lines = [line[22:] for line in stream.getvalue().splitlines()]
    assert lines == ["✓ Sync completed successfully: 1 copied", "Starting continuous sync loop...",
                     "! careful", "✗ broken", "· detail"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_on_a_terminal_unless_no_color_is_set(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty = Terminal()
    logsetup.setup("INFO", "text", "UTC", (), stream=tty)
    logger.error("red")
    assert "\x1b[" in tty.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    tty = Terminal()
    logsetup.setup("INFO", "text", "UTC", (), stream=tty)
    logger.error("plain")
    assert "\x1b[" not in tty.getvalue() and tty.getvalue().endswith("✗ plain\n")
    logsetup.setup(stream=sys.__stderr__)


def test_no_colour_when_not_a_terminal(stream, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    logsetup.setup("INFO", "text", "UTC", (), stream=stream)
    logger.error("plain")
    assert "\x1b[" not in stream.getvalue()
