"""PURE: which keys a mirror holds: a key prefix, and ordered include/exclude rules.

One predicate, ``KeyFilter``, decides for the listings of both sides (reconcile.py:
``listed_changes``), for events and every per-key operation (converge.py), and for the
reconcile's deletes. An object outside it is never copied and never deleted, whatever
S3_SYNC_DELETE says: the destination may hold other data beside the mirror. (s5cmd
#815 deleted excluded objects because its ``--delete`` didn't consult ``--exclude``;
mc #2319 copied them because ``--watch`` didn't.)

The rules are rclone's ``--filter`` rules, with rclone's glob syntax:

- a rule is ``+ pattern`` (include) or ``- pattern`` (exclude), one per line; blank
  lines and lines starting with ``#`` or ``;`` are comments;
- the rules are tried in order and **the first whose pattern matches decides**; a key
  no rule matches is **included**. As with rclone's ``--filter`` (not its
  ``--include``, which adds an implicit ``- **`` after its rules), there is no
  implicit rule: to mirror only some keys, end the list with ``- **``;
- the key a pattern is matched against is the object's whole key, the prefix
  included (keys are the same at both sides);
- a pattern starting with ``/`` is anchored at the key's start; any other pattern
  matches a complete trailing run of the key's path elements: ``*.tmp`` matches
  ``a/b/x.tmp``, and ``b/x.tmp`` matches ``a/b/x.tmp`` but not ``ab/x.tmp``;
- ``*`` matches any run of characters but ``/``; ``**`` any run, ``/`` included;
  ``?`` one character but ``/``; ``[a-z]``, ``[^a-z]`` and ``[[:alpha:]]`` are
  character classes (which, as in rclone, may match ``/``); ``{a,b}`` matches either
  alternative (nested braces too); ``\\`` makes the next character literal.

Where this differs from rclone, it refuses rather than guess: a pattern ending in
``/`` (a directory rule in rclone, meaningless for keys: write ``dir/**``), rclone's
``{{regexp}}`` sections and the ``!`` rule (clear the rules so far) are errors; so is
a rule without ``+``/``-`` and an empty pattern. ``**`` also matches a newline in a
key, where rclone's does not.

A key outside ``prefix`` is excluded before any rule is tried. The rules are compiled
once, into one regular expression whose first matching alternative is the first
matching rule: the predicate runs for every listed key of both sides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ", "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~", "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z", "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
}


def glob_regex(pattern: str) -> str:
    """The regular expression (for ``re.fullmatch``, DOTALL) of one rule's pattern;
    ValueError saying what is wrong with it."""
    if not pattern:
        raise ValueError("empty pattern")
    if pattern.endswith("/"):
        raise ValueError(f"pattern {pattern!r} ends with '/': rclone reads that as a directory rule, and keys "
                         f"have no directories; write {pattern + '**'!r} for the keys under it")
    if pattern.startswith("/"):
        out, body = [], pattern[1:]
    else:
        out, body = ["(?:.*/)?"], pattern  # the match starts at the key's start or after a '/'
    depth = 0
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "\\":
            if i + 1 == n:
                raise ValueError(f"pattern {pattern!r} ends with an escaping '\\'")
            out.append(re.escape(body[i + 1]))
            i += 2
            continue
        if c == "*":
            stars = 1
            while i + stars < n and body[i + stars] == "*":
                stars += 1
            if stars > 2:
                raise ValueError(f"too many stars in {pattern!r}")
            out.append(".*" if stars == 2 else "[^/]*")
            i += stars
            continue
        if c == "?":
            out.append("[^/]")
        elif c == "[":
            cls, i = _char_class(pattern, body, i)
            out.append(cls)
            continue
        elif c == "]":
            raise ValueError(f"mismatched ']' in {pattern!r}")
        elif c == "{":
            if i + 1 < n and body[i + 1] == "{":
                raise ValueError(f"{pattern!r}: rclone's {{{{regexp}}}} sections are not supported")
            depth += 1
            out.append("(?:")
        elif c == "}":
            if depth == 0:
                raise ValueError(f"mismatched '{{' and '}}' in {pattern!r}")
            depth -= 1
            out.append(")")
        elif c == "," and depth:
            out.append("|")
        else:
            out.append(re.escape(c))
        i += 1
    if depth:
        raise ValueError(f"mismatched '{{' and '}}' in {pattern!r}")
    return "".join(out)


def _char_class(pattern: str, body: str, start: int) -> tuple[str, int]:
    """The class that opens at ``body[start]`` ('['), as a Python class, and the index
    after its ']'. Its members are taken literally but for ``^`` first (negation), ``a-z``
    ranges, ``\\`` (escape) and POSIX names (``[:alpha:]``)."""
    out = ["["]
    i = start + 1
    if i < len(body) and body[i] == "^":
        out.append("^")
        i += 1
    first = True
    while i < len(body):
        c = body[i]
        if c == "]" and not first:
            out.append("]")
            return "".join(out), i + 1
        first = False
        if c == "[" and body.startswith("[:", i):
            end = body.find(":]", i + 2)
            name = body[i + 2:end] if end >= 0 else ""
            if name not in _POSIX_CLASSES:
                raise ValueError(f"unknown character class '[:{name}:]' in {pattern!r}")
            out.append(_POSIX_CLASSES[name])
            i = end + 2
            continue
        if c == "\\":
            if i + 1 == len(body):
                break
            out.append(re.escape(body[i + 1]))
            i += 2
            continue
        # '-' between two members is a range; every other character stands for itself
        # (escaped, so that Python's own class syntax, such as '&&' or '[', reads nothing in it).
        out.append("-" if c == "-" and out[-1] not in ("[", "^") and body[i + 1:i + 2] not in ("]", "")
                   else re.escape(c))
        i += 1
    raise ValueError(f"mismatched '[' and ']' in {pattern!r}")


@dataclass(frozen=True)
class Rule:
    """``+ pattern`` (include) or ``- pattern`` (exclude). A Rule is valid once made:
    its pattern compiles."""

    include: bool
    pattern: str

    def __post_init__(self) -> None:
        try:
            re.compile(glob_regex(self.pattern), re.DOTALL)
        except re.error as exc:  # a class such as [z-a]
            raise ValueError(f"bad pattern {self.pattern!r}: {exc.msg}") from None

    def __str__(self) -> str:
        return f"{'+' if self.include else '-'} {self.pattern}"


def parse_rules(lines: Iterable[str]) -> tuple[Rule, ...]:
    """Rules in rclone's filter-file syntax (module docstring), in order; ValueError
    naming the first bad rule. Each line is stripped; blank lines and comments go."""
    rules = []
    for raw in lines:
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line == "!":
            raise ValueError("rule '!' (clear the rules so far) is not supported: remove the rules above it")
        if line[0] not in "+-" or (len(line) > 1 and line[1] not in " \t"):
            raise ValueError(f"rule {line!r}: expected '+ pattern' (include) or '- pattern' (exclude)")
        try:
            rules.append(Rule(line[0] == "+", line[1:].strip()))
        except ValueError as exc:
            raise ValueError(f"rule {line!r}: {exc}") from None
    return tuple(rules)


@dataclass(frozen=True)
class KeyFilter:
    """Whether a key belongs to the mirror: ``filter(key)``. With no prefix and no
    rules, every key does (``everything``)."""

    prefix: str = ""
    rules: tuple[Rule, ...] = ()
    # All rules in one expression, an alternative each, tried in order: the group that
    # matched is the first rule that matches. None without rules.
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rules:
            regex = "|".join(f"({glob_regex(rule.pattern)}\\Z)" for rule in self.rules)
            object.__setattr__(self, "_regex", re.compile(regex, re.DOTALL))

    @property
    def everything(self) -> bool:
        """Every key passes: callers may skip the work of asking."""
        return not self.prefix and not self.rules

    def __call__(self, key: str) -> bool:
        if not key.startswith(self.prefix):
            return False
        if self._regex is None:
            return True
        matched = self._regex.match(key)
        if matched is None:
            return True  # no rule matches: included (rclone's --filter has no implicit rule)
        # lastindex: the group of the rule that matched (the patterns' own groups don't capture).
        return self.rules[(matched.lastindex or 0) - 1].include

    def __str__(self) -> str:
        """For the start-up banner and log lines."""
        parts = [f"prefix {self.prefix!r}"] if self.prefix else []
        parts += [str(rule) for rule in self.rules]
        return "; ".join(parts) or "everything"


EVERYTHING = KeyFilter()  # no prefix, no rules: the default, every key the mirror's
