"""One loguru sink for the whole process.

- Text (default): colored on a terminal, plain otherwise, timestamps in
  ``S3_SYNC_TIMEZONE``, in the established sidecar's ``[YYYY-MM-DD HH:MM:SS]`` shape.
- JSON lines (``S3_SYNC_LOG_FORMAT=json``), for log aggregation.
- Every line passes a redaction filter that replaces any configured credential with
  ``***``: a last line of defence should an SDK ever put one in a message.
- Then through ``printable``: a key with a newline or another control character can't
  start a line of its own (issue 10), in either format, in a message or a traceback.
- ``diagnose=False``: loguru's diagnose mode prints local variables in tracebacks,
  which is exactly how secrets leak.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from datetime import datetime
from typing import TextIO
from zoneinfo import ZoneInfo

from loguru import logger

from ..printable import printable

_TEXT = "[{extra[ts]}] <level>{level.icon}</level> {message}"
_ICONS = {"TRACE": " ", "DEBUG": "·", "INFO": " ", "SUCCESS": " ", "WARNING": "!", "ERROR": "✗", "CRITICAL": "✗"}


class _Redactor:
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
    stream = stream or sys.stderr
    zone = ZoneInfo(timezone)
    redact = _Redactor(secrets)
    logger.remove()
    for name, icon in _ICONS.items():
        logger.level(name, icon=icon)

    def clean(text: str) -> str:
        # Redact first: a secret is found in the text as it is, not as it is printed.
        return printable(redact(text))

    def patch(record) -> None:
        # Here, and not in a sink: both formats then show a key the same way.
        record["extra"]["ts"] = record["time"].astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
        record["message"] = clean(record["message"])
        if record["exception"] is not None:
            record["extra"]["exc_text"] = _format_exception(record["exception"], clean)

    if fmt == "json":
        def sink(message) -> None:
            r = message.record
            line = {
                "time": r["time"].astimezone(zone).isoformat(timespec="milliseconds"),
                "level": r["level"].name,
                "message": r["message"],
                "logger": r["name"],
            }
            if r["extra"].get("exc_text"):
                line["exception"] = r["extra"]["exc_text"]
            stream.write(json.dumps(line, ensure_ascii=False) + "\n")
            stream.flush()

        logger.configure(patcher=patch)
        logger.add(sink, level=level, format="{message}", backtrace=False, diagnose=False, catch=False)
        return

    def text_format(record) -> str:
        tail = "\n{extra[exc_text]}" if record["extra"].get("exc_text") else ""
        return _TEXT + tail + "\n"

    logger.configure(patcher=patch)
    use_color = colorize if colorize is not None else _isatty(stream)
    logger.add(stream, level=level, format=text_format, colorize=use_color, backtrace=False, diagnose=False,
               catch=False)


def _isatty(stream: TextIO) -> bool:
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


def now_in(timezone: str) -> str:
    return datetime.now(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M:%S")
