"""Output that a key can't forge (issue 10): ``printable``, and every channel that prints
keys through it (plan lines, both log formats, tracebacks, ``/status``)."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from loguru import logger

from replicator.errors import FatalError, PermanentError
from replicator.model import RunStats
from replicator.observability import logging as logsetup
from replicator.observability.health import Health
from replicator.printable import printable
from tests.unit.test_reconciler import Harness

README = Path(__file__).resolve().parents[2] / "README.md"
# Every character printable escapes: C0, DEL, C1, U+2028/9, bidi controls, surrogates.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
CONTROLS = "".join(map(chr, [*range(0x20), 0x7F]))
FORGED = "evil\ndelete   important-file"


def unescape(printed: str) -> str:
    """The README's one-liner (test_the_readme_documents_the_way_back holds them equal)."""
    return printed.encode("ascii", "backslashreplace").decode("unicode_escape")


def test_the_readme_documents_the_way_back():
    assert 'printed.encode("ascii", "backslashreplace").decode("unicode_escape")' in README.read_text()


# --- the function ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "printed"), [
    ("photos/2024/img-001.jpg", "photos/2024/img-001.jpg"),
    ("", ""),
    ("a b  c ", "a b  c "),  # spaces are printable; the plan line's shape tells where a key ends
    (FORGED, r"evil\x0adelete   important-file"),
    ("\x00", r"\x00"),
    ("tab\there", r"tab\x09here"),
    ("cr\rlf\n", r"cr\x0dlf\x0a"),
    ("\x1b[2J\x1b[31mred", r"\x1b[2J\x1b[31mred"),  # a terminal can't be told to clear or recolor
    ("\x7f", r"\x7f"),
    ("c1\x85\x9b", r"c1\x85\x9b"),  # NEL (a line break to some readers) and CSI
    ("back\\slash", r"back\\slash"),
    (r"a\x0ab", r"a\\x0ab"),  # a key that *looks* escaped stays apart from the one with a newline
    ("line\u2028para\u2029", r"line\u2028para\u2029"),
    ("abc\u202edcba", r"abc\u202edcba"),  # RIGHT-TO-LEFT OVERRIDE ("Trojan Source")
    ("\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069", r"\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069"),
    ("lone\ud800", r"lone\ud800"),  # would not even encode as UTF-8
    ("docs/café menü.txt", "docs/café menü.txt"),
    ("写真/猫.jpg", "写真/猫.jpg"),
    ("emoji 😀🏳️‍🌈", "emoji 😀🏳️‍🌈"),  # ZWJ sequences are text
    ("nbsp\xa0é\u200f", "nbsp\xa0é\u200f"),  # above the C1 range; RLM only marks, it overrides nothing
])
def test_printable(text, printed):
    assert printable(text) == printed
    assert unescape(printed) == text


# Code points from every class: plain ASCII, what is escaped, Latin-1, other planes.
any_char = st.one_of(
    st.sampled_from("\\\x00\n\r\t\x1b\x7f\x85\x9f\xa0\u2028\u2029\u202a\u202e\u2066\u2069\ud800\udfffé日😀"),
    st.characters(min_codepoint=0, max_codepoint=0xFF),
    st.integers(min_value=0, max_value=0x10FFFF).map(chr),  # surrogates included
)


@given(st.text(any_char))
@example("\\x0a\n")
@example("\\\\\\")
def test_printable_is_one_safe_line_and_comes_back_whole(text):
    printed = printable(text)
    assert unescape(printed) == text
    assert len(printed.splitlines()) <= 1  # str.splitlines knows every line break Unicode has
    assert not UNSAFE.search(printed)
    printed.encode("utf-8")  # any stream can carry it


@given(st.text(st.characters(exclude_characters="\\", exclude_categories=["Cc", "Cs", "Zl", "Zp", "Cf"])))
def test_text_without_anything_to_escape_is_left_alone(text):
    assert printable(text) == text


# --- log lines ---------------------------------------------------------------------------

@pytest.fixture
def stream():
    buffer = io.StringIO()
    yield buffer
    logsetup.setup(stream=sys.__stderr__)  # back to a plain stderr sink for whoever runs next


def message_of(line: str, fmt: str) -> str:
    if fmt == "json":
        return json.loads(line)["message"]
    m = re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] (?:[·!✗] )?", line)
    assert m, line
    return line[m.end():]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_key_with_every_control_character_is_one_log_line(stream, fmt):
    key = f"k{CONTROLS}\u2028\u202e\\end"
    logsetup.setup("DEBUG", fmt, "UTC", (), stream=stream, colorize=False)
    logger.debug("{}: copied ({} bytes)", key, 3)
    [line] = stream.getvalue().splitlines()
    expected = "k" + "".join(f"\\x{ord(c):02x}" for c in CONTROLS) + r"\u2028\u202e\\end"
    assert message_of(line, fmt) == f"{expected}: copied (3 bytes)"
    assert unescape(message_of(line, fmt).removesuffix(": copied (3 bytes)")) == key
    assert not UNSAFE.search(line)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_an_exception_message_cannot_add_a_line_to_a_traceback(stream, fmt):
    forged_log_line = "[2026-01-01 00:00:00]   ✓ Sync completed: 0 failed"
    logsetup.setup("DEBUG", fmt, "UTC", (), stream=stream, colorize=False)
    try:
        try:
            raise KeyError(FORGED)
        except KeyError as error:
            raise RuntimeError(f"put {FORGED}\n{forged_log_line}\rdelete x") from error
    except RuntimeError:
        logger.exception("{}: unexpected error", FORGED)
    if fmt == "json":
        [line] = stream.getvalue().splitlines()
        record = json.loads(line)
        assert record["message"] == r"evil\x0adelete   important-file: unexpected error"
        lines = record["exception"].split("\n")
    else:
        first, *lines = stream.getvalue().splitlines()
        assert message_of(first, fmt) == r"evil\x0adelete   important-file: unexpected error"
    assert lines[0] == "Traceback (most recent call last):"
    assert "The above exception was the direct cause of the following exception:" in lines
    assert r"KeyError: 'evil\\ndelete   important-file'" in lines  # KeyError's str is a repr
    assert lines[-1] == rf"RuntimeError: put evil\x0adelete   important-file\x0a{forged_log_line}\x0ddelete x"
    assert not any(line.startswith(("[", "delete")) for line in lines)
    assert not any(UNSAFE.search(line) for line in lines)


def test_secrets_are_redacted_before_printing(stream):
    secret = "pass\\word\nX"  # escaping first would hide it from the redaction
    logsetup.setup("DEBUG", "text", "UTC", (secret,), stream=stream, colorize=False)
    logger.info("signing with {}", secret)
    assert message_of(stream.getvalue().rstrip("\n"), "text") == "signing with ***"


# --- plan lines --------------------------------------------------------------------------

def test_a_dry_run_plan_line_is_one_line_per_key():
    h = Harness()
    h.source.add(FORGED, b"12345")
    h.source.add("important-file", b"keep me")
    h.dest.add("important-file", b"keep me")
    h.dest.add("gone\r\x1b[2K", b"xy")
    try:
        h.run(dry_run=True)
    finally:
        h.close()
    assert sorted(h.out.getvalue().splitlines()) == [
        r"copy    evil\x0adelete   important-file  (5 bytes)",
        r"delete  gone\x0d\x1b[2K  (2 bytes)",
    ]


# --- /status -----------------------------------------------------------------------------

def test_status_prints_every_string_as_the_log_does():
    health = Health(600.0, clock=lambda: 1_700_000_000.0)
    detail = f"destination: put {FORGED}: AccessDenied"
    health.set_state("waiting-for-endpoints", detail)
    error = FatalError("source", "list", "a\x1b[31m\u202e", "listing out of order")
    health.record_reconcile(RunStats(failed=1, guard="refused\nok"), error)
    status = health.status()
    assert status["detail"] == r"destination: put evil\x0adelete   important-file: AccessDenied"
    assert status["reconcile"]["last"]["error"] == r"source: list a\x1b[31m\u202e: listing out of order"
    assert status["reconcile"]["last"]["guard"] == r"refused\x0aok"
    assert unescape(status["detail"]) == detail
    assert (status["state"], status["ready"], status["reconcile"]["last"]["failed"]) == ("waiting-for-endpoints",
                                                                                       False, 1)
    body = json.dumps(status)  # as observability/http.py sends it
    assert "\n" not in body and not UNSAFE.search(json.loads(body)["detail"])
    assert health.last_reconcile["error"] == str(error)  # only what is shown is escaped


def test_status_of_an_error_without_a_key_is_unchanged():
    health = Health(600.0, clock=lambda: 0.0)
    health.record_reconcile(None, PermanentError("destination", "check", None, "AccessDenied (HTTP 403)"))
    assert health.status()["reconcile"]["last"]["error"] == "destination: check: AccessDenied (HTTP 403)"
