"""How a key (or any text from outside) is printed: as one line that nothing can forge.

Object keys may hold any character but NUL. A key ``evil\\ndelete   important-file``
printed as it is made a dry-run plan show a ``delete`` line that was never planned
(issue 10), and a carriage return, an ANSI escape or a bidi override can make a log
line read as something it isn't. Every plan line, log line and ``/status`` string goes
through ``printable``, which escapes:

- ``\\`` as ``\\\\``, so every backslash in the output starts an escape;
- C0 controls (0x00-0x1F), DEL (0x7F) and C1 controls (0x80-0x9F) as ``\\xNN``;
- the line and paragraph separators (U+2028, U+2029), the bidi embeddings, overrides
  and isolates (U+202A-U+202E, U+2066-U+2069; "Trojan Source", CVE-2021-42574) and
  lone surrogates (U+D800-U+DFFF, which no UTF-8 stream can carry) as ``\\uNNNN``.

Everything else (``é``, ``日本``, emoji, spaces) stays as it is. The escapes are
Python's own, so the real text comes back with one standard line::

    printed.encode("ascii", "backslashreplace").decode("unicode_escape")
"""

from __future__ import annotations

import re

_ESCAPED = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` as one line with no character that could end or disguise it. Reversible
    (see the module docstring); text that needs no escape is returned as it is."""
    return _ESCAPED.sub(_escape, text)

