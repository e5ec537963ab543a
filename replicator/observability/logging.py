"""One loguru sink for the whole process.

- Text (default): colored on a terminal, plain otherwise, timestamps in
  ``S3_SYNC_TIMEZONE``, in the established sidecar's ``[YYYY-MM-DD HH:MM:SS]`` shape.
- JSON lines (``S3_SYNC_LOG_FORMAT=json``), for log aggregation.
- Every line passes a redaction filter that replaces any configured credential with
  ``***``: a last line of defence should an SDK ever put one in a message.
- ``diagnose=False``: loguru's diagnose mode prints local variables in tracebacks,
  which is exactly how secrets leak.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import TextIO
from zoneinfo import ZoneInfo

from loguru import logger

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

    def patch(record) -> None:
        record["extra"]["ts"] = record["time"].astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
        record["message"] = redact(record["message"])
        if record["exception"] is not None:
            record["extra"]["exc_text"] = redact(_format_exception(record["exception"]))

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


def _format_exception(exc_info) -> str:
    import traceback

    return "".join(traceback.format_exception(exc_info.type, exc_info.value, exc_info.traceback)).rstrip()


def now_in(timezone: str) -> str:
    return datetime.now(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M:%S")
