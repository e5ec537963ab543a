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
