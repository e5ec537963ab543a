"""One loguru sink for the whole process.

- Text (default): the established sidecar's ``[YYYY-MM-DD HH:MM:SS] message`` shape,
  timestamps in ``S3_SYNC_TIMEZONE``; a mark before warnings (``!``), errors (``✗``)
  and debug lines (``·``). Colored only on a terminal, and never with ``NO_COLOR`` set
  (no-color.org).
- JSON lines (``S3_SYNC_LOG_FORMAT=json``), for log aggregation: time, standard level
  name, message, and the structured fields the call site gave (``event``, ``key``,
  ``bytes``, ``duration_s``, ``trigger``, ``attempt``, ``error_code``, ``side``, and a
  run's counts), so a query needs no regular expression.
- Every line passes a redaction filter that replaces any configured credential with
  ``***``: a last line of defence should an SDK ever put one in a message.
- Then through ``printable``: a key with a newline or another control character can't
  start a line of its own (issue 10), in either format, in a message or a traceback.
- ``diagnose=False``: loguru's diagnose mode prints local variables in tracebacks,
  which is exactly how secrets leak.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import TextIO
from zoneinfo import ZoneInfo

from loguru import logger

from ..printable import printable
from . import context

_MARKS = {"DEBUG": "·", "WARNING": "!", "ERROR": "✗", "CRITICAL": "✗"}  # none for INFO, as the old sidecar had
# loguru's own levels by the names log tools know (RFC 5424 / Python's logging).
_STANDARD_LEVELS = {"TRACE": "DEBUG", "SUCCESS": "INFO"}
# Set by the patcher for the text format; never shown as fields.
_INTERNAL = frozenset({"ts", "exc_text", "where"})


class _Stderr:
    """``sys.stderr`` as it is at each write, not as it was at set-up: a live progress
    display that takes stderr over (cli.py) then keeps log lines above itself."""

    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return isatty(sys.stderr)


class Redactor:
    """Every configured credential in a text replaced by ``***``: log lines, and what
    else leaves the process with an error in it (a dead letter's headers)."""

    def __init__(self, secrets: tuple[str, ...]):
        # Longest first, so a secret containing another is replaced whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


def setup(level: str = "INFO", fmt: str = "text", timezone: str = "UTC", secrets: tuple[str, ...] = (),
          stream: TextIO | None = None, colorize: bool | None = None) -> None:
    out: TextIO | _Stderr = stream or _Stderr()
    zone = ZoneInfo(timezone)
    redact = Redactor(secrets)
    logger.remove()

    def clean(text: str) -> str:
        # Redact first: a secret is found in the text as it is, not as it is printed.
        return printable(redact(text))

    def patch(record) -> None:
        # Here, and not in a sink: both formats then show a key the same way.
        record["extra"]["ts"] = record["time"].astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
        record["message"] = clean(record["message"])
        _name_the_pair(record)
        if record["exception"] is not None:
            record["extra"]["exc_text"] = _format_exception(record["exception"], clean)

    if fmt == "json":
        def sink(message) -> None:
            r = message.record
            line = {
                "time": r["time"].astimezone(zone).isoformat(timespec="milliseconds"),
                "level": _STANDARD_LEVELS.get(r["level"].name, r["level"].name),
                "message": r["message"],
                "logger": r["name"],
            }
            for name, value in r["extra"].items():
                if name not in _INTERNAL and name not in line:
                    line[name] = clean(value) if isinstance(value, str) else value
            if r["extra"].get("exc_text"):
                line["exception"] = r["extra"]["exc_text"]
            out.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
            out.flush()

        logger.configure(patcher=patch)
        logger.add(sink, level=level, format="{message}", backtrace=False, diagnose=False, catch=False)
        return

    def text_format(record) -> str:
        mark = _MARKS.get(record["level"].name)
        head = f"[{{extra[ts]}}] <level>{mark}</level> " if mark else "[{extra[ts]}] "
        tail = "\n{extra[exc_text]}" if record["extra"].get("exc_text") else ""
        return head + "{extra[where]}{message}" + tail + "\n"

    logger.configure(patcher=patch)
    use_color = colorize if colorize is not None else (isatty(out) and not os.environ.get("NO_COLOR"))
    logger.add(out, level=level, format=text_format, colorize=use_color, backtrace=False, diagnose=False,
               catch=False)


def _name_the_pair(record) -> None:
    """With the configuration file's mirrors, each line says whose it is: the text
    format begins the message with ``mirror/destination: `` (a listener's, with its
    source bucket), the JSON format has ``mirror`` and ``destination`` fields."""
    extra = record["extra"]
    extra["where"] = ""
    scope = context.current()
    if scope is None or not context.named():
        return
    if scope.mirror:
        extra.setdefault("mirror", scope.mirror)
        extra.setdefault("destination", scope.destination)
        extra["where"] = printable(f"{scope.mirror}/{scope.destination}: ")
    else:
        extra.setdefault("source_bucket", scope.source_bucket)
        extra["where"] = printable(f"{scope.source_bucket}: ")


def isatty(stream: TextIO | _Stderr) -> bool:
    """Whether ``stream`` is a terminal (False for a stream that can't say, or is closed)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _format_exception(exc_info, clean: Callable[[str], str]) -> str:
    """The traceback's lines, each passed through ``clean``.

    Python prints an exception's message as it is, newlines and all, so a key in a
    message could add a line to the traceback. That part is cleaned whole, and stays
    on the line of the exception's type; the rest (frames, source lines, "The above
    exception was the direct cause...") line by line. Two cases stay multi-line, as
    Python means them to: notes (``add_note``, which neither replicator nor its SDKs
    use), which Python splits into lines itself, and the members of an exception
    group, printed behind "| " margins that a line they add still carries."""
    top = traceback.TracebackException(exc_info.type, exc_info.value, exc_info.traceback)
    messages: set[str] = set()
    pending, seen = [top], set()
    while pending:  # every exception in the chain: causes and contexts
        exc = pending.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        messages.update(exc.format_exception_only())
        pending.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
    lines: list[str] = []
    for chunk in top.format():
        if chunk in messages:
            lines.append(clean(chunk.removesuffix("\n")))
        else:
            lines.extend(clean(line) for line in chunk.removesuffix("\n").split("\n"))
    return "\n".join(lines)

