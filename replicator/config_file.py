"""The configuration file (``S3_SYNC_CONFIG``): any number of mirrors, each a source
bucket on the MinIO server and one or more destinations.

Every setting of the file is a setting of the environment under a shorter name: a
destination's ``region`` is ``S3_SYNC_REGION``, the source's ``endpoint`` is
``MINIO_ENDPOINT``. So each (mirror, destination) pair is read by the very reader that
reads the environment (:func:`config.read`), with the same ranges and the same checks,
and a problem is named by the TOML path its value came from
(``mirrors[1].destinations[0].region``) instead of the variable.

Where a pair's setting comes from, most specific first:

- the destination's table, then its mirror's, then ``[defaults]`` (the settings of
  :data:`PER_DESTINATION` and :data:`PER_MIRROR`);
- ``[source]``, then the ``MINIO_*`` variables (the MinIO server's connection);
- ``[service]``, then the ``S3_SYNC_*`` variables (the process's own settings:
  :data:`SERVICE`).

A per-destination variable in the environment beside ``S3_SYNC_CONFIG`` is refused:
``S3_SYNC_DELETE=false`` left in an old ``.env`` must not be silently outvoted by the
file's default of mirroring deletions.

A string anywhere may hold ``${NAME}`` references to environment variables (``$${``
is a literal ``${``), so the file can be committed while the secrets stay in the
environment. Every problem is collected, each with its path, and raised as one
ConfigError.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from . import config
from .config import Settings
from .errors import ConfigError

# The file's name for each variable it can set, by table.
SOURCE = {"endpoint": "MINIO_ENDPOINT", "access_key": "MINIO_ACCESS_KEY", "secret_key": "MINIO_SECRET_KEY",
          "verify_tls": "MINIO_VERIFY_TLS", "ca_bundle": "MINIO_CA_BUNDLE"}
# One process, one HTTP server, one log, one listener per source bucket: the same for every pair.
SERVICE = {name: f"S3_SYNC_{name.upper()}" for name in (
    "enabled", "http_host", "http_port", "log_level", "log_format", "timezone", "shutdown_timeout", "state_dir",
    "listen_timeout", "events", "nats_url", "nats_subject", "nats_stream", "nats_consumer", "nats_user",
    "nats_password", "nats_ca_bundle", "nats_retention", "nats_dead_letter_age")}
# Who the destination is: given in a destination's own table only, never inherited.
DESTINATION = {name: f"S3_SYNC_{name.upper()}" for name in (
    "endpoint", "bucket", "region", "access_key", "secret_key", "session_token", "path_style", "verify_tls",
    "ca_bundle")}
# What of the source bucket is mirrored: one filter per mirror, for all its destinations.
PER_MIRROR = {name: f"S3_SYNC_{name.upper()}" for name in ("prefix", "filter")}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
_REFERENCE = re.compile(r"\$(\$?)\{([^}]*)\}")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def per_destination() -> dict[str, str]:
    """Behaviour a destination may set for itself, its mirror or ``[defaults]`` for all:
    every other variable config reads (a setting added there is known here)."""
    taken = {*SOURCE.values(), *SERVICE.values(), *DESTINATION.values(), *PER_MIRROR.values(), "MINIO_BUCKET",
             config.CONFIG_FILE}
    return {name.removeprefix("S3_SYNC_").lower(): name for name in sorted(config.known_variables())
            if name.startswith("S3_SYNC_") and name not in taken}


class _Problems:
    def __init__(self) -> None:
        self.found: list[str] = []

    def add(self, path: str, why: str) -> None:
        text = f"{path}: {why}" if path else why
        if text not in self.found:  # a bad [defaults] value is every pair's: said once
            self.found.append(text)


def _path(*parts: str | int) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def load(path: str, env: Mapping[str, str]) -> tuple[Settings, ...]:
    """Every (mirror, destination) pair the file at ``path`` describes, in file order."""
    problems = _Problems()
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"{config.CONFIG_FILE}={path!r}: can't read it ({error.strerror or error})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{config.CONFIG_FILE}={path!r}: not valid TOML: {error}") from None

    behaviour = per_destination()
    leftovers = sorted(name for name in (*behaviour.values(), *DESTINATION.values(), *PER_MIRROR.values(),
                                         "MINIO_BUCKET")
                       if (env.get(name) or "").strip())
    if leftovers:
        problems.add("", f"{', '.join(leftovers)} set in the environment beside {config.CONFIG_FILE}, which "
                         "describes the mirrors: move each into the file ([defaults], a mirror or a destination) "
                         "and unset it")

    _known(document, {"source", "service", "defaults", "mirrors"}, "", problems)
    # variable -> value, for every pair: what the environment gives beside the settings
    # (HTTPS_PROXY, NO_PROXY) and the process's and the source's own, the file's first.
    common = {name: value for name, value in env.items() if not name.startswith(("S3_SYNC_", "MINIO_"))}
    labels: dict[str, str] = {}  # variable -> the TOML path its value came from
    for table, names in (("source", SOURCE), ("service", SERVICE)):
        given = _table(document, table, problems)
        _known(given, set(names), table, problems)
        for name in names:
            common[names[name]] = (env.get(names[name]) or "")
        _take(given, names, table, common, labels, env, problems)
    defaults = _table(document, "defaults", problems)
    _known(defaults, {*behaviour, *PER_MIRROR}, "defaults", problems)

    mirrors = document.get("mirrors")
    if not isinstance(mirrors, list) or not mirrors or not all(isinstance(m, dict) for m in mirrors):
        problems.add("mirrors", "expected one or more [[mirrors]] tables, each with a source_bucket and "
                                "[[mirrors.destinations]]")
        mirrors = []
    pairs: list[tuple[Settings, str]] = []
    mirror_names: dict[str, str] = {}
    for m, mirror in enumerate(mirrors):
        here = _path("mirrors", m)
        _known(mirror, {"name", "source_bucket", "destinations", *behaviour, *PER_MIRROR}, here, problems)
        values, where = dict(common), dict(labels)
        _take(defaults, {**behaviour, **PER_MIRROR}, "defaults", values, where, env, problems)
        _take(mirror, {**behaviour, **PER_MIRROR, "source_bucket": "MINIO_BUCKET"}, here, values, where, env,
              problems)
        if not values.get("MINIO_BUCKET"):
            problems.add(_path(here, "source_bucket"), "missing: the MinIO bucket this mirror copies")
        name = _name(mirror, here, values.get("MINIO_BUCKET", ""), env, problems)
        if name in mirror_names:
            problems.add(_path(here, "name"), f"{name!r} again: {mirror_names[name]} has that name; mirror names "
                                              "are unique")
        mirror_names.setdefault(name, here)
        destinations = mirror.get("destinations")
        if not isinstance(destinations, list) or not destinations or not all(isinstance(d, dict)
                                                                              for d in destinations):
            problems.add(_path(here, "destinations"), "expected one or more [[mirrors.destinations]] tables")
            destinations = []
        destination_names: dict[str, str] = {}
        for d, destination in enumerate(destinations):
            there = _path(here, "destinations", d)
            _known(destination, {"name", *DESTINATION, *behaviour}, there, problems)
            pair, pair_where = dict(values), dict(where)
            _take(destination, {**DESTINATION, **behaviour}, there, pair, pair_where, env, problems)
            for required in ("bucket",):
                if not pair.get(DESTINATION[required]):
                    problems.add(_path(there, required), "missing: the destination bucket")
            keys = [k for k in ("access_key", "secret_key") if pair.get(DESTINATION[k])]
            if len(keys) == 1:
                other = "secret_key" if keys == ["access_key"] else "access_key"
                problems.add(_path(there, other), f"missing: {keys[0]} is given, and the keys go together (give "
                                                  "neither for the AWS credential chain)")
            dest_name = _name(destination, there, pair.get("S3_SYNC_BUCKET", ""), env, problems)
            if dest_name in destination_names:
                problems.add(_path(there, "name"), f"{dest_name!r} again: {destination_names[dest_name]} has that "
                                                   "name; a mirror's destinations have names of their own (give "
                                                   "each a name)")
            destination_names.setdefault(dest_name, there)
            reader = config.Reader(pair, pair_where)
            settings = config.replace(config.read(reader), mirror=name, destination=dest_name)
            for found in reader.problems:
                problems.add("", found)
            pairs.append((settings, there))
    _no_shared_destination(pairs, problems)
    if problems.found:
        raise ConfigError(f"Invalid configuration in {path}: " + "; ".join(problems.found))
    return tuple(settings for settings, _ in pairs)


def _table(document: Mapping[str, Any], name: str, problems: _Problems) -> dict[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, dict):
        problems.add(name, f"expected a table ([{name}]), not {_kind(value)}")
        return {}
    return value


def _known(table: Mapping[str, Any], allowed: set[str], where: str, problems: _Problems) -> None:
    """Refuse names the table can't hold: a typo would keep a default (deletions on)."""
    for name in table:
        if name in allowed:
            continue
        close = difflib.get_close_matches(name, sorted(allowed), n=1)
        elsewhere = _belongs(name)
        hint = (f" (did you mean {close[0]}?)" if close
                else f" ({name} belongs in {elsewhere})" if elsewhere else "")
        problems.add(_path(where, name) if where else name, f"not a setting here{hint}")


def _belongs(name: str) -> str:
    if name in SOURCE:
        return "[source]"
    if name in SERVICE:
        return "[service]"
    if name in DESTINATION:
        return "a [[mirrors.destinations]] table"
    if name in PER_MIRROR or name == "source_bucket":
        return "a [[mirrors]] table or [defaults]" if name in PER_MIRROR else "a [[mirrors]] table"
    return ""


def _take(table: Mapping[str, Any], names: Mapping[str, str], where: str, values: dict[str, str],
          labels: dict[str, str], env: Mapping[str, str], problems: _Problems) -> None:
    """Copy the table's settings into ``values`` (by variable), as the reader's text."""
    for key, value in table.items():
        if key not in names:
            continue
        path = _path(where, key)
        text = _text(value, key, path, env, problems)
        if text is not None:
            values[names[key]] = text
            labels[names[key]] = path


def _text(value: Any, key: str, path: str, env: Mapping[str, str], problems: _Problems) -> str | None:
    """A TOML value as the environment would have held it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return _expand(value, path, env, problems)
    if isinstance(value, list) and key == "filter":
        if all(isinstance(rule, str) for rule in value):
            expanded = [_expand(rule, path, env, problems) for rule in value]
            return "\n".join(rule for rule in expanded if rule is not None)
        problems.add(path, "expected a list of rules, each a string such as \"- *.tmp\"")
        return None
    problems.add(path, f"expected a string, a number or true/false, not {_kind(value)}")
    return None


def _expand(text: str, path: str, env: Mapping[str, str], problems: _Problems) -> str | None:
    """``${NAME}`` replaced by the environment's value; ``$${`` kept as ``${``. None,
    and a problem, where a reference can't be resolved."""
    unresolved: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return "${" + match.group(2) + "}"
        name = match.group(2)
        if not _VARIABLE.match(name):
            unresolved.append(f"${{{name}}} is not a variable reference (a name such as ${{AWS_SECRET_ACCESS_KEY}})")
        elif not env.get(name):
            unresolved.append(f"${{{name}}} refers to {name}, which is not set in the environment")
        else:
            return env[name]
        return ""

    expanded = _REFERENCE.sub(substitute, text)
    for why in unresolved:
        problems.add(path, why)
    return None if unresolved else expanded


def _name(table: Mapping[str, Any], where: str, default: str, env: Mapping[str, str], problems: _Problems) -> str:
    value = table.get("name", default)
    if not isinstance(value, str):
        problems.add(_path(where, "name"), f"expected a string, not {_kind(value)}")
        return default
    value = _expand(value, _path(where, "name"), env, problems) or default
    if value and not _NAME.match(value):
        problems.add(_path(where, "name"), f"{value!r}: a name is 1-63 letters, digits, '.', '_' or '-', starting "
                                          "with a letter or digit (it is a metric label and a --mirror/--destination "
                                          "value)")
    return value


def _no_shared_destination(pairs: list[tuple[Settings, str]], problems: _Problems) -> None:
    """Two pairs writing one bucket would each delete what the other copied."""
    seen: dict[tuple[tuple[str, int], str], str] = {}
    for settings, where in pairs:
        place = (config.address(settings.dest_endpoint), settings.dest_bucket)
        if not settings.dest_bucket or settings.dest_endpoint.host == "invalid":
            continue
        if place in seen:
            problems.add(_path(where, "bucket"), f"{settings.dest_endpoint}/{settings.dest_bucket} is also "
                                                 f"{seen[place]}'s destination: each would delete what the other "
                                                 "copies; give each mirror a bucket of its own")
        seen.setdefault(place, where)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
