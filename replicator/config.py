"""Settings, parsed once from an environment mapping into a frozen object.

The variable names are the ones the shell sidecar's users already have in their
``.env`` files (``S3_SYNC_*`` for the destination and behaviour, ``MINIO_*`` for the
source). Parsing collects *every* problem before raising, so a user fixes their file
once, not once per variable. Nothing else in replicator reads ``os.environ``.

Secrets are held in :class:`Secret`, whose ``repr``/``str`` never show the value, so
a settings object can be logged, put in an exception or shown by a debugger frame
without leaking a credential.

Every numeric setting has a range (:data:`RANGES`, the same as in the README's tables),
and settings that contradict each other are refused, in the same one message.
:func:`unknown_variables` names the ``S3_SYNC_*`` variables in the environment that
no setting reads (a typo silently keeps a default, such as deletions on); the CLI logs
them, since this module logs nothing.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import functools
import ipaddress
import re
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .filters import EVERYTHING, KeyFilter, parse_rules

REQUIRED = ("S3_SYNC_BUCKET",)
# Set: the mirrors come from this TOML file (config_file.py), not from one pair's variables.
CONFIG_FILE = "S3_SYNC_CONFIG"
# Given together, or neither: then the destination's credentials come from the AWS chain.
KEYS = ("S3_SYNC_ACCESS_KEY", "S3_SYNC_SECRET_KEY")

MiB = 1024 * 1024
GiB = 1024 * MiB
MINUTE, HOUR, DAY = 60, 3600, 86400


class Secret:
    """A credential. Its value is only reachable through :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Endpoint:
    """An S3 endpoint: scheme, host and port, nothing else."""

    scheme: str
    host: str  # hostname[:port]

    @property
    def secure(self) -> bool:
        return self.scheme == "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def is_aws(self) -> bool:
        name = self.host.rsplit(":", 1)[0] if not self.host.startswith("[") else self.host
        return name == "amazonaws.com" or name.endswith(".amazonaws.com")

    def __str__(self) -> str:
        return self.url


_OWN_REGION = "the bucket's own region"


@dataclass(frozen=True)
class Settings:
    # Destination (S3-compatible). No keys: botocore's credential chain (AWS_* variables,
    # profiles, web identity, container and instance credentials), refreshed as they expire.
    dest_access_key: Secret | None
    dest_secret_key: Secret | None
    dest_bucket: str
    dest_session_token: Secret | None = None
    dest_endpoint: Endpoint = field(default_factory=lambda: Endpoint("https", "s3.amazonaws.com"))
    dest_region: str | None = None  # None: the bucket's own (a bucket replicator creates: us-east-1)
    dest_path_style: bool = False
    dest_verify_tls: bool = True
    dest_ca_bundle: str | None = None
    # Source (MinIO)
    source_endpoint: Endpoint = field(default_factory=lambda: Endpoint("http", "minio:9000"))
    source_access_key: Secret = field(default_factory=lambda: Secret("minioadmin"))
    source_secret_key: Secret = field(default_factory=lambda: Secret("minioadmin"))
    source_bucket: str = "relics"
    source_verify_tls: bool = True
    source_ca_bundle: str | None = None
    # The forward proxy each side's requests go through (HTTPS_PROXY, HTTP_PROXY and
    # NO_PROXY, read once here), or None for a direct connection.
    source_proxy: str | None = None
    dest_proxy: str | None = None
    # Behaviour
    enabled: bool = False
    interval: float = 1800.0
    max_retries: int = 3
    retry_delay: float = 60.0
    timezone: str = "UTC"
    delete: bool = True
    delete_max_percent: float = 50.0
    delete_guard_floor: int = 10
    allow_empty_source: bool = False
    # Latency decides small copies: each worker waits a round trip per object, so a
    # distant destination needs many in flight (docs/benchmarks.md, the WAN figures).
    workers: int = 64
    multipart_threshold: int = 16 * MiB
    multipart_chunk_size: int = 8 * MiB
    multipart_concurrency: int = 4
    list_concurrency: int = 8
    list_page_size: int = 1000
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    log_level: str = "INFO"
    log_format: str = "text"
    # Service
    http_port: int = 8080
    http_host: str = "0.0.0.0"  # noqa: S104 - probes and scrapes come from outside the sidecar's container
    shutdown_timeout: float = 10.0
    state_dir: str = "/var/lib/replicator"
    queue_size: int = 10000
    listen_timeout: float = 30.0
    reconcile_cooldown: float = 30.0
    # S3_SYNC_EVENTS=jetstream: the key ranges each reconcile pass is cut into, for every
    # process reading the destination's consumer to take some (shared_reconcile.py). 1:
    # the lease's holder reconciles the whole destination alone.
    reconcile_ranges: int = 1
    metadata_sweep_interval: float = 86400.0  # 0: off
    list_metadata: bool = False  # reconciles compare listed attributes where the destination is MinIO
    metadata_sweep_rate: float = 100.0  # objects per second
    progress_interval: float = 30.0  # seconds between a reconcile's progress lines; 0: none
    key_filter: KeyFilter = EVERYTHING  # the keys the mirror holds (filters.py); the rest is never touched
    # What each write to the destination asks for (stores/encryption.py): server-side
    # encryption, SSE-S3 ("AES256") or SSE-KMS ("aws:kms", with the provider's default key
    # unless one is named); or SSE-C with the customer's key (32 bytes, as given: raw or
    # base64); and a storage class. None: the bucket's defaults.
    sse: str | None = None
    sse_kms_key_id: str | None = None
    sse_c_key: Secret | None = None
    storage_class: str | None = None
    # What may be sent to the destination, events and reconciles together (ratelimit.py); None: no limit.
    max_bandwidth: int | None = None  # bytes per second
    max_requests_per_second: float | None = None
    # Where events come from: MinIO's notification stream ("listen"), or a durable
    # consumer per destination on the NATS JetStream stream MinIO publishes to
    # ("jetstream", jetstream.py). The process's own, like the rest of nats_*.
    events: str = "listen"
    nats_url: str = "nats://nats:4222"
    nats_subject: str = "minio.events"  # MinIO's MINIO_NOTIFY_NATS_SUBJECT_<ID>
    nats_stream: str = "minio-events"
    nats_consumer: str = "replicator"  # durable consumers are named <this>-<mirror>-<destination>
    nats_user: str | None = None
    nats_password: Secret | None = None
    nats_ca_bundle: str | None = None
    nats_retention: float = 7 * 86400.0  # the max age of a stream replicator creates
    # A message still failing this long after it was published goes to the dead-letter
    # stream, and its key to the reconcile (jetstream.py).
    nats_dead_letter_age: float = 86400.0
    # The names of this pair, as metric labels, /status and the --mirror/--destination
    # flags show them: the mirror (a source bucket and what of it is mirrored) and one of
    # its destinations. Unnamed (a single pair from the environment): the bucket names.
    mirror: str = ""
    destination: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mirror", self.mirror or self.source_bucket)
        object.__setattr__(self, "destination", self.destination or self.dest_bucket)

    @property
    def copy_connections(self) -> int:
        """Idle keep-alive connections worth keeping per side for object copies: the
        event workers and the reconcile's copy pool (both ``workers``, and they can
        overlap) plus the parts in flight, and a few spare. Fewer, and copies beyond
        them would open a connection each (a TLS handshake each) and close it after."""
        return 2 * self.workers + self.multipart_concurrency + 4

    def secrets(self) -> tuple[str, ...]:
        """Every credential value, for the log redaction filter."""
        return tuple(
            s.reveal()
            for s in (self.dest_access_key, self.dest_secret_key, self.dest_session_token, self.source_access_key,
                      self.source_secret_key, self.nats_password)
            if s is not None and s.reveal()
        ) + tuple(p for p in {proxy_password(self.source_proxy), proxy_password(self.dest_proxy)} if p) + (
            # The key as given and as sent (base64), whichever the user wrote.
            (self.sse_c_key.reveal(), base64.b64encode(customer_key(self.sse_c_key.reveal()) or b"").decode())
            if self.sse_c_key else ())

    def summary(self) -> dict[str, str]:
        """What the start-up banner shows. Access keys are identifiers, but we still
        show only their first characters: a leaked key id narrows a brute force."""
        return {
            "Source": f"{self.source_endpoint}/{self.source_bucket}",
            "Destination": f"{self.dest_endpoint}/{self.dest_bucket} ({self.dest_region or _OWN_REGION})",
            "Interval": f"{self.interval:g} seconds",
            "Max Retries": str(self.max_retries),
            "Retry Delay": f"{self.retry_delay:g} seconds",
            "Delete": (
                f"mirror deletions (guard: >{self.delete_max_percent:g}% above {self.delete_guard_floor} objects)"
                if self.delete
                else "off"
            ),
            "Workers": str(self.workers),
        } | ({} if self.key_filter.everything else {"Keys": str(self.key_filter)}) | self._write_options()

    def _write_options(self) -> dict[str, str]:
        """The banner's lines for encryption and storage class, where set."""
        shown: dict[str, str] = {}
        if self.sse_c_key:
            shown["Encryption"] = "SSE-C (the customer's key)"
        elif self.sse:
            shown["Encryption"] = {"AES256": "SSE-S3 (AES256)", "aws:kms": "SSE-KMS"}[self.sse] + (
                f", key {self.sse_kms_key_id}" if self.sse_kms_key_id else "")
        if self.storage_class:
            shown["Storage Class"] = self.storage_class
        return shown


# --- parsing ---------------------------------------------------------------

@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts, both ends included. ``unit`` is how its
    values read: "s" (seconds), "bytes" (sizes, shown in MiB/GiB), "%" or "" (a count)."""

    low: float
    high: float
    unit: str = ""


# The range of every numeric setting: the README's tables give the same ones (held to
# these by tests/unit/test_packaging.py). Each value must be one a production sidecar
# can live with, and one the code downstream can take: a socket's or a thread's timeout
# overflows its C type somewhere above 1e9 seconds (S3_SYNC_CONNECT_TIMEOUT=1e10 raised
# OverflowError at the first connection, S3_SYNC_SHUTDOWN_TIMEOUT=1e12 at SIGTERM).
RANGES: dict[str, Range] = {
    # Counted from the end of one reconcile to the start of the next. Below a minute the
    # full listings run all but back to back, and /readyz (which wants a success within
    # two intervals) turns unready whenever one reconcile takes longer than that. Above a
    # week, what the events missed (MinIO drops events silently) stays missing too long.
    "S3_SYNC_INTERVAL": Range(MINUTE, 7 * DAY, "s"),
    # At 0 a flapping listener could start reconciles back to back. More than the
    # interval acts as the interval.
    "S3_SYNC_RECONCILE_COOLDOWN": Range(1, 7 * DAY, "s"),
    # A range costs a task on NATS, two HEADs and two listings' first pages. The split
    # points are stored in one NATS message: 256 keys of S3's 1 KiB at most fit in 1 MiB.
    "S3_SYNC_RECONCILE_RANGES": Range(1, 256),
    "S3_SYNC_MAX_RETRIES": Range(1, 100),
    # 0 retries at once (a server's Retry-After still holds). Each request's backoff is
    # capped at 600 s whatever the base; a whole run's retries are capped at the interval.
    "S3_SYNC_RETRY_DELAY": Range(0, HOUR, "s"),
    "S3_SYNC_DELETE_MAX_PERCENT": Range(0, 100, "%"),
    # A floor above the bucket's size turns the percentage guard off; a million
    # deletions unguarded is already more than a slip of the finger should cost.
    "S3_SYNC_DELETE_GUARD_FLOOR": Range(0, 1_000_000),
    "S3_SYNC_WORKERS": Range(1, 256),
    # Objects up to the threshold are copied in memory, min(S3_SYNC_WORKERS, 8) at a
    # time: 512 MiB keeps that at 4 GiB at most. (10 TiB was accepted once.)
    "S3_SYNC_MULTIPART_THRESHOLD": Range(5 * MiB, 512 * MiB, "bytes"),
    # S3 takes parts of 5 MiB to 5 GiB (6 GiB was accepted once), but a part is also at
    # most the threshold (checked in load), so at most the threshold's own maximum.
    "S3_SYNC_MULTIPART_CHUNK_SIZE": Range(5 * MiB, 512 * MiB, "bytes"),
    "S3_SYNC_MULTIPART_CONCURRENCY": Range(1, 64),
    "S3_SYNC_LIST_CONCURRENCY": Range(1, 64),
    "S3_SYNC_LIST_PAGE_SIZE": Range(1, 1000),  # S3 sends at most 1,000 keys per page
    # The connect timeout covers the TLS handshake too, a few round trips: below a
    # second a distant endpoint could never be reached, and after 5 minutes nobody will
    # answer. A read waits for the server's work (a listing page, a 1,000-key delete);
    # an hour of silence on a socket is a hang.
    "S3_SYNC_CONNECT_TIMEOUT": Range(1, 5 * MINUTE, "s"),
    "S3_SYNC_READ_TIMEOUT": Range(1, HOUR, "s"),
    # Keys, each a few hundred bytes: a million is a few hundred MiB. A full queue only
    # makes the listener wait; the reconcile repairs what it then misses.
    "S3_SYNC_QUEUE_SIZE": Range(1, 1_000_000),
    # 0 turns the sweep off. A pass costs two HEADs per object (sweep.py); a month
    # between passes is the longest a lost tag change should stay unrepaired.
    "S3_SYNC_METADATA_SWEEP_INTERVAL": Range(0, 30 * DAY, "s"),
    # Objects compared per second: two HEADs each, so 100/s is 200 requests a second.
    "S3_SYNC_METADATA_SWEEP_RATE": Range(1, 10_000),
    # 0 (any free port) would leave the probes guessing.
    "S3_SYNC_HTTP_PORT": Range(1, 65535),
    # 0 aborts copies in flight at once. An hour is already longer than any orchestrator
    # waits after its SIGTERM (Docker: 10 s, Kubernetes: 30 s, unless configured).
    "S3_SYNC_SHUTDOWN_TIMEOUT": Range(0, HOUR, "s"),
    # MinIO pings the stream every 2 s; values below 7 s act as 7 s (stores/notifications).
    # Past 10 minutes a dead stream goes unnoticed for no gain.
    "S3_SYNC_LISTEN_TIMEOUT": Range(1, 10 * MINUTE, "s"),
    # 0 turns the progress lines off. A day: a reconcile that long still says something daily.
    "S3_SYNC_PROGRESS_INTERVAL": Range(0, DAY, "s"),
    # How long the stream keeps events (when replicator creates it): at least the longest
    # a replicator may be down without its events being lost to the stream's limit.
    "S3_SYNC_NATS_RETENTION": Range(HOUR, 365 * DAY, "s"),
    # How long a message may keep failing before it is moved to the dead-letter stream
    # and its key left to the reconcile. Low costs nothing but reconciles asked for (the
    # key is never forgotten), so seconds are allowed; past a month a poison message has
    # been retried some 4,000 times (every 10 minutes) for nothing. Below the retention
    # (checked in load), or the stream drops it first.
    "S3_SYNC_NATS_DEAD_LETTER_AGE": Range(1, 30 * DAY, "s"),
    # Below 64 KiB/s a 5 MiB part takes minutes and a provider may time the upload out;
    # 100 GiB/s is beyond any link a sidecar gets.
    "S3_SYNC_MAX_BANDWIDTH": Range(64 * 1024, 100 * GiB, "bytes"),
    "S3_SYNC_MAX_REQUESTS_PER_SECOND": Range(1, 100_000),
}


def _number_text(value: float) -> str:
    """A number as the README writes it: no exponent; thousands separated from 100,000."""
    if value == int(value):
        return f"{int(value):,}" if value >= 100_000 else str(int(value))
    return f"{value:g}"


def _size_text(value: float) -> str:
    for factor, unit in ((GiB, "GiB"), (MiB, "MiB"), (1024, "KiB")):
        if value >= factor:
            return f"{value / factor:g} {unit}"
    return f"{int(value)} bytes"


def _value_text(value: float, unit: str) -> str:
    if unit == "bytes":
        return _size_text(value)
    if unit == "s":
        return f"{_number_text(value)} second{'' if value == 1 else 's'}"
    return _number_text(value) + unit


def range_text(name: str) -> str:
    """The range of ``name`` as the README and .env.example write it: ``1–100``, ``5 MiB–512 MiB``."""
    bounds = RANGES[name]
    show = _size_text if bounds.unit == "bytes" else _number_text
    return f"{show(bounds.low)}–{show(bounds.high)}"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9_\-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_\-]{1,63}(?<!-))*\.?$")
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9\-._]*[A-Za-z0-9])?)(:\d{1,5})?$")
# botocore's own rule: anything else makes client creation raise, after config parsing.
_REGION = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?$")
_USERINFO = re.compile(r"(^|//)[^/]*@")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$")


class Reader:
    """Reads variables, collecting problems instead of raising at the first."""

    def __init__(self, env: Mapping[str, str], labels: Mapping[str, str] | None = None):
        self.env = env
        # How a problem names the setting: the variable's own name, or (from the
        # configuration file) the TOML path its value came from.
        self.labels = labels or {}
        self.problems: list[str] = []
        self.failed: set[str] = set()  # names with a problem: cross-checks skip them

    def label(self, name: str) -> str:
        return self.labels.get(name, name)

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        return value.strip() if value is not None else None

    def bad(self, name: str, value: str, why: str) -> None:
        self.problems.append(f"{self.label(name)}={value!r}: {why}")
        self.failed.add(name)

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return value if value else default

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False if value else default
        self.bad(name, value, "expected true or false")
        return default

    def number(self, name: str, default: float, *, integer: bool = False) -> float:
        value = self.raw(name)
        if not value:
            return default
        try:
            parsed: float = int(value) if integer else float(value)
        except ValueError:
            self.bad(name, value, "expected a whole number" if integer else "expected a number")
            return default
        if parsed != parsed or parsed in (float("inf"), float("-inf")):
            self.bad(name, value, "expected a finite number")
            return default
        return parsed if self.within(name, value, parsed) else default

    def size(self, name: str, default: int) -> int:
        value = self.raw(name)
        if not value:
            return default
        m = _SIZE.match(value)
        if not m:
            self.bad(name, value, "expected a size such as 8MiB or 8388608")
            return default
        unit = (m.group(2) or "b").lower().rstrip("b").rstrip("i")
        factor = {"": 1, "k": 1024, "m": MiB, "g": GiB, "t": 1024 * GiB}[unit]
        # Compared before int(): a few hundred digits make an infinite float.
        parsed = float(m.group(1)) * factor
        return int(parsed) if self.within(name, value, parsed) else default

    def within(self, name: str, value: str, parsed: float) -> bool:
        bounds = RANGES[name]
        if parsed < bounds.low:
            self.bad(name, value, f"must be at least {_value_text(bounds.low, bounds.unit)}")
        elif parsed > bounds.high:
            self.bad(name, value, f"must be at most {_value_text(bounds.high, bounds.unit)}")
        else:
            return True
        return False

    def bind_host(self, name: str, default: str) -> str:
        """An address to listen on: an IP address or a hostname (whether it is one of
        this machine's is only known when binding, in observability/http.py)."""
        value = self.text(name, default)
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
        # A hostname's last label is never all digits: 256.1.1.1 is a bad address, not a name.
        if len(value) <= 253 and _HOSTNAME.match(value) and not value.rstrip(".").rsplit(".", 1)[-1].isdigit():
            return value
        self.bad(name, value, "expected an IP address or a hostname to listen on, such as 0.0.0.0 "
                              "(every interface) or 127.0.0.1 (this machine only)")
        return default

    def endpoint(self, name: str, default: str) -> Endpoint:
        given = self.raw(name) or default
        # Messages show what the user wrote (not our https:// completion of it), minus
        # any userinfo: "https://user:password@host" is a credential in plain sight.
        shown = _USERINFO.sub(r"\1***@", given)
        value = given if "://" in given else "https://" + given  # the established sidecar's default was a bare host
        try:
            parts = urlsplit(value)
            port = parts.port  # raises on a non-numeric or out-of-range port
        except ValueError as exc:
            self.bad(name, shown, f"malformed endpoint ({exc})")
            return Endpoint("https", "invalid")
        if parts.scheme not in ("http", "https"):
            self.bad(name, shown, "the scheme must be http or https")
        elif not parts.netloc or not _HOST.match(parts.netloc) or "@" in parts.netloc:
            self.bad(name, shown, "expected scheme://host[:port]")
        elif parts.path not in ("", "/") or parts.query or parts.fragment:
            self.bad(name, shown, "an endpoint has no path; put the bucket in its own variable")
        elif port == 0:
            self.bad(name, shown, "port must be 1-65535")
        else:
            return Endpoint(parts.scheme, parts.netloc.lower())
        return Endpoint("https", "invalid")

    def bucket(self, name: str, default: str | None) -> str:
        value = self.raw(name) or default or ""
        if value and not _BUCKET.match(value):
            self.bad(name, value, "not a valid bucket name (3-63 characters: a-z, 0-9, '.', '-')")
        return value

    def region(self, name: str) -> str | None:
        value = self.raw(name)
        if not value:
            return None
        if not _REGION.match(value):
            self.bad(name, value, "not a valid region name (such as us-east-1 or auto)")
            return None
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self.raw(name) or default).lower()
        if value not in choices:
            self.bad(name, value, f"expected one of {', '.join(choices)}")
            return default
        return value

    def key_filter(self, prefix: str, rules: str) -> KeyFilter:
        """A key prefix, and filter rules one per line (filters.py; a TOML list of them
        arrives joined by newlines)."""
        value = self.env.get(rules) or ""
        try:
            parsed = parse_rules(value.split("\n"))
        except ValueError as exc:
            self.bad(rules, value.strip(), str(exc))
            parsed = ()
        return KeyFilter(self.text(prefix, ""), parsed)

    def ca_bundle(self, name: str) -> str | None:
        import os.path  # only a file check; the value itself comes from the mapping

        value = self.raw(name)
        if not value:
            return None
        if not os.path.isfile(value):
            self.bad(name, value, "no such file")
        return value


def load_all(env: Mapping[str, str]) -> tuple[Settings, ...]:
    """Every (mirror, destination) pair to replicate: those of the file ``S3_SYNC_CONFIG``
    names, or else the one pair of the variables. Raises one ConfigError naming every
    problem."""
    path = (env.get(CONFIG_FILE) or "").strip()
    if not path:
        return (load(env),)
    from . import config_file

    return config_file.load(path, env)


def load(env: Mapping[str, str]) -> Settings:
    """Parse one pair's settings from ``env``. Raises one ConfigError naming every problem."""
    missing = missing_variables(env)
    if missing:
        raise ConfigError(f"Missing required environment variables: {', '.join(missing)}")
    r = Reader(env)
    settings = read(r)
    if r.problems:
        raise ConfigError("Invalid configuration: " + "; ".join(r.problems))
    return settings


def missing_variables(env: Mapping[str, str]) -> list[str]:
    """The required names ``env`` lacks: the bucket, and a key whose pair was given
    (one key of a pair is a mistake, never a wish for the credential chain)."""
    missing = [name for name in REQUIRED if not (env.get(name) or "").strip()]
    keys = [name for name in KEYS if (env.get(name) or "").strip()]
    if len(keys) == 1:
        missing += [name for name in KEYS if name not in keys]
    return missing


def read(r: Reader) -> Settings:
    """Every setting of one pair, read through ``r``, whose ``problems`` collect what
    was wrong (the values in their place are the defaults). The required names are
    the caller's to check first (:func:`missing_variables`)."""
    env = r.env
    keys = all((env.get(name) or "").strip() for name in KEYS)
    dest_endpoint = r.endpoint("S3_SYNC_ENDPOINT", "s3.amazonaws.com")
    path_style = r.choice("S3_SYNC_PATH_STYLE", "auto", ("auto", "true", "false"))
    timezone = r.text("S3_SYNC_TIMEZONE", "UTC")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        r.bad("S3_SYNC_TIMEZONE", timezone, "unknown timezone (use an IANA name such as Europe/Berlin)")
        timezone = "UTC"
    threshold = r.size("S3_SYNC_MULTIPART_THRESHOLD", 16 * MiB)
    # Unset, the part size follows a threshold set below it: S3_SYNC_MULTIPART_THRESHOLD=5MiB
    # alone is a valid setting, not a contradiction with a default the user never wrote.
    chunk = r.size("S3_SYNC_MULTIPART_CHUNK_SIZE", min(8 * MiB, threshold))

    source_endpoint = r.endpoint("MINIO_ENDPOINT", "http://minio:9000")
    settings = Settings(
        dest_access_key=Secret(env["S3_SYNC_ACCESS_KEY"].strip()) if keys else None,
        dest_secret_key=Secret(env["S3_SYNC_SECRET_KEY"].strip()) if keys else None,
        dest_session_token=_session_token(r, bool(keys)),
        dest_bucket=r.bucket("S3_SYNC_BUCKET", None),
        dest_endpoint=dest_endpoint,
        dest_region=r.region("S3_SYNC_REGION"),
        # Virtual-hosted style is AWS's preference; every other provider we target
        # (MinIO, B2, Wasabi, Spaces, R2) accepts path style, and only path style
        # works with an IP address or a bucket name containing dots under TLS.
        dest_path_style=(not dest_endpoint.is_aws) if path_style == "auto" else path_style == "true",
        dest_verify_tls=r.flag("S3_SYNC_VERIFY_TLS", True),
        dest_ca_bundle=r.ca_bundle("S3_SYNC_CA_BUNDLE"),
        source_endpoint=source_endpoint,
        source_proxy=_proxy_for(r, source_endpoint),
        dest_proxy=_proxy_for(r, dest_endpoint),
        source_access_key=Secret(r.text("MINIO_ACCESS_KEY", "minioadmin")),
        source_secret_key=Secret(r.text("MINIO_SECRET_KEY", "minioadmin")),
        source_bucket=r.bucket("MINIO_BUCKET", "relics"),
        source_verify_tls=r.flag("MINIO_VERIFY_TLS", True),
        source_ca_bundle=r.ca_bundle("MINIO_CA_BUNDLE"),
        state_dir=r.text("S3_SYNC_STATE_DIR", "/var/lib/replicator"),
        enabled=r.flag("S3_SYNC_ENABLED", False),
        interval=r.number("S3_SYNC_INTERVAL", 1800.0),
        max_retries=int(r.number("S3_SYNC_MAX_RETRIES", 3, integer=True)),
        retry_delay=r.number("S3_SYNC_RETRY_DELAY", 60.0),
        timezone=timezone,
        delete=r.flag("S3_SYNC_DELETE", True),
        delete_max_percent=r.number("S3_SYNC_DELETE_MAX_PERCENT", 50.0),
        delete_guard_floor=int(r.number("S3_SYNC_DELETE_GUARD_FLOOR", 10, integer=True)),
        allow_empty_source=r.flag("S3_SYNC_ALLOW_EMPTY_SOURCE", False),
        workers=int(r.number("S3_SYNC_WORKERS", 64, integer=True)),
        multipart_threshold=threshold,
        multipart_chunk_size=chunk,
        multipart_concurrency=int(r.number("S3_SYNC_MULTIPART_CONCURRENCY", 4, integer=True)),
        list_concurrency=int(r.number("S3_SYNC_LIST_CONCURRENCY", 8, integer=True)),
        list_page_size=int(r.number("S3_SYNC_LIST_PAGE_SIZE", 1000, integer=True)),
        connect_timeout=r.number("S3_SYNC_CONNECT_TIMEOUT", 10.0),
        read_timeout=r.number("S3_SYNC_READ_TIMEOUT", 60.0),
        log_level=r.choice("S3_SYNC_LOG_LEVEL", "info",
                           ("trace", "debug", "info", "success", "warning", "error")).upper(),
        log_format=r.choice("S3_SYNC_LOG_FORMAT", "text", ("text", "json")),
        http_port=int(r.number("S3_SYNC_HTTP_PORT", 8080, integer=True)),
        http_host=r.bind_host("S3_SYNC_HTTP_HOST", "0.0.0.0"),  # noqa: S104 - as above
        shutdown_timeout=r.number("S3_SYNC_SHUTDOWN_TIMEOUT", 10.0),
        queue_size=int(r.number("S3_SYNC_QUEUE_SIZE", 10000, integer=True)),
        listen_timeout=r.number("S3_SYNC_LISTEN_TIMEOUT", 30.0),
        reconcile_cooldown=r.number("S3_SYNC_RECONCILE_COOLDOWN", 30.0),
        reconcile_ranges=int(r.number("S3_SYNC_RECONCILE_RANGES", 1, integer=True)),
        metadata_sweep_interval=r.number("S3_SYNC_METADATA_SWEEP_INTERVAL", 86400.0),
        list_metadata=r.flag("S3_SYNC_LIST_METADATA", False),
        metadata_sweep_rate=r.number("S3_SYNC_METADATA_SWEEP_RATE", 100.0),
        progress_interval=r.number("S3_SYNC_PROGRESS_INTERVAL", 30.0),
        **_jetstream(r),
        key_filter=r.key_filter("S3_SYNC_PREFIX", "S3_SYNC_FILTER"),
        **_encryption(r),
        max_bandwidth=r.size("S3_SYNC_MAX_BANDWIDTH", 0) or None,  # 0: unset (or refused, below the range)
        max_requests_per_second=r.number("S3_SYNC_MAX_REQUESTS_PER_SECOND", 0) or None,
    )
    _contradictions(r, settings)
    return settings


def _contradictions(r: Reader, s: Settings) -> None:
    """Settings each valid alone but not together. One that was itself invalid is left
    out: its default stands in for what the user meant."""

    def valid(*names: str) -> bool:
        return not r.failed.intersection(names)

    chunk, threshold = "S3_SYNC_MULTIPART_CHUNK_SIZE", "S3_SYNC_MULTIPART_THRESHOLD"
    if s.multipart_chunk_size > s.multipart_threshold and valid(chunk, threshold):
        given = repr(r.raw(threshold)) if r.raw(threshold) else f"{_size_text(s.multipart_threshold)} by default"
        r.bad(chunk, r.raw(chunk) or "", f"must be at most {r.label(threshold)} ({given}): only objects larger "
                                         "than the threshold are copied in parts")
    age, retention = "S3_SYNC_NATS_DEAD_LETTER_AGE", "S3_SYNC_NATS_RETENTION"
    if s.nats_dead_letter_age >= s.nats_retention and r.raw(age) and valid(age, retention):
        given = repr(r.raw(retention)) if r.raw(retention) else f"{_number_text(s.nats_retention)} s by default"
        r.bad(age, r.raw(age) or "", f"must be less than {r.label(retention)} ({given}): a message older than the "
                                     "stream keeps events is dropped by it before it could be dead-lettered")
    ranges = "S3_SYNC_RECONCILE_RANGES"
    if s.reconcile_ranges > 1 and s.events != "jetstream" and valid(ranges):
        r.bad(ranges, r.raw(ranges) or "", "needs S3_SYNC_EVENTS=jetstream: only processes sharing a JetStream "
                                           "consumer share a reconcile pass")
    tls = (("destination", s.dest_verify_tls, "S3_SYNC_VERIFY_TLS", "S3_SYNC_CA_BUNDLE"),
           ("source", s.source_verify_tls, "MINIO_VERIFY_TLS", "MINIO_CA_BUNDLE"))
    for side, verifies, verify, bundle in tls:
        if r.raw(bundle) and not verifies:
            r.bad(bundle, r.raw(bundle) or "", f"contradicts {r.label(verify)}={r.raw(verify)!r}: with verification "
                                              f"off, no certificate of the {side} is checked and the bundle would be "
                                              "ignored; drop one of the two")
    if (s.source_bucket == s.dest_bucket and address(s.source_endpoint) == address(s.dest_endpoint)
            and valid("MINIO_ENDPOINT", "S3_SYNC_ENDPOINT", "MINIO_BUCKET", "S3_SYNC_BUCKET")):
        r.bad("S3_SYNC_BUCKET", s.dest_bucket,
              f"the destination is the source: {r.label('MINIO_BUCKET')} on the same endpoint "
              f"({r.label('MINIO_ENDPOINT')} {s.source_endpoint}, {r.label('S3_SYNC_ENDPOINT')} {s.dest_endpoint}); "
              "a bucket can't be mirrored onto itself")
    sse, kms, customer = "S3_SYNC_SSE", "S3_SYNC_SSE_KMS_KEY_ID", "S3_SYNC_SSE_C_KEY"
    sse_name, customer_name = r.label(sse), r.label(customer)
    if s.sse_kms_key_id and s.sse != "aws:kms" and valid(sse):
        r.bad(kms, s.sse_kms_key_id, f"names a KMS key, which only {sse_name}=aws:kms uses ({sse_name} is "
                                     f"{r.raw(sse) or 'unset'}); set {sse_name}=aws:kms or drop the key")
    if s.sse and s.sse_c_key:
        r.bad(sse, r.raw(sse) or "", f"contradicts {customer_name}: an object is encrypted with the provider's key "
                                     "or with the customer's, never both; drop one of the two")
    if s.sse_c_key and not s.dest_endpoint.secure and valid("S3_SYNC_ENDPOINT"):
        r.bad(customer, "***", f"would be sent with every request over plain HTTP ({r.label('S3_SYNC_ENDPOINT')} "
                               f"{s.dest_endpoint}), for anyone on the way to read; use https (AWS and MinIO refuse "
                               "SSE-C without it)")


def address(endpoint: Endpoint) -> tuple[str, int]:
    """Where an endpoint's server listens: host and port, with the scheme's default port
    filled in, so http://minio and http://MINIO:80 are one place. (Names aren't resolved:
    localhost and 127.0.0.1 stay two.)"""
    parts = urlsplit(endpoint.url)
    host = parts.hostname or ""
    try:
        host = str(ipaddress.ip_address(host))  # ::0:1 and ::1 are one address
    except ValueError:
        pass
    return host, parts.port or (443 if parts.scheme == "https" else 80)


_NATS_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")  # JetStream's: no '.', '*', '>', spaces or slashes
_NATS_SUBJECT = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")  # literal tokens: MinIO publishes to one subject


def _jetstream(r: Reader) -> dict[str, Any]:
    """S3_SYNC_EVENTS and the S3_SYNC_NATS_* settings (read, and checked, in every mode)."""
    names: dict[str, Any] = {}
    for field_name, name, pattern, default, what in (
            ("nats_stream", "S3_SYNC_NATS_STREAM", _NATS_NAME, "minio-events", "a stream name"),
            ("nats_consumer", "S3_SYNC_NATS_CONSUMER", _NATS_NAME, "replicator", "a consumer name"),
            ("nats_subject", "S3_SYNC_NATS_SUBJECT", _NATS_SUBJECT, "minio.events", "a subject such as minio.events")):
        value = r.text(name, default)
        if not pattern.match(value):
            dots = ", dot-separated" if "subject" in what else ""
            r.bad(name, value, f"not {what} (letters, digits, '-' and '_'{dots}; no spaces, '*' or '>')")
            value = default
        names[field_name] = value
    urls = r.text("S3_SYNC_NATS_URL", "nats://nats:4222")
    for url in urls.split(","):
        try:
            parts = urlsplit(url.strip())
            parts.port  # noqa: B018 - raises on a port that isn't one
            ok = parts.scheme in ("nats", "tls") and bool(parts.hostname) and not parts.password
        except ValueError:
            ok = False
        if not ok:
            r.bad("S3_SYNC_NATS_URL", _without_password(url.strip()),
                  "expected nats://host:port or tls://host:port, comma-separated for a cluster, with no password in "
                  "it (use S3_SYNC_NATS_PASSWORD)")
    password = r.raw("S3_SYNC_NATS_PASSWORD")
    retention = r.number("S3_SYNC_NATS_RETENTION", 7 * 86400.0)
    return {**names, "events": r.choice("S3_SYNC_EVENTS", "listen", ("listen", "jetstream")), "nats_url": urls,
            "nats_user": r.raw("S3_SYNC_NATS_USER") or None, "nats_password": Secret(password) if password else None,
            "nats_ca_bundle": r.ca_bundle("S3_SYNC_NATS_CA_BUNDLE"),
            "nats_retention": retention,
            # Unset, it follows a retention below two days: half of it, so a message is
            # dead-lettered well before the stream would drop it.
            "nats_dead_letter_age": r.number("S3_SYNC_NATS_DEAD_LETTER_AGE", min(86400.0, retention / 2))}


def _session_token(r: Reader, keys: bool) -> Secret | None:
    """S3_SYNC_SESSION_TOKEN: temporary keys' third part, meaningless without the keys."""
    token = r.raw("S3_SYNC_SESSION_TOKEN")
    if not token:
        return None
    if not keys:
        r.bad("S3_SYNC_SESSION_TOKEN", "***", f"given without {r.label('S3_SYNC_ACCESS_KEY')} and "
                                            f"{r.label('S3_SYNC_SECRET_KEY')}, whose temporary keys it completes")
        return None
    return Secret(token)


_STORAGE_CLASS = re.compile(r"^[A-Z0-9_]{1,64}$")
_KMS_KEY_ID = re.compile(r"^[\x21-\x7e]{1,2048}$")  # printable ASCII: an ARN, an alias, a key name


def customer_key(value: str) -> bytes | None:
    """PURE: an SSE-C key's 32 bytes from what the user wrote: the 32 bytes themselves,
    or their base64 (44 characters); None for anything else. The two can't be
    confused: 32 characters of base64 decode to 24 bytes."""
    raw = value.encode("utf-8", "surrogateescape")
    if len(raw) == 32:
        return raw
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if len(decoded) == 32 else None


def _encryption(r: Reader) -> dict[str, Any]:
    """S3_SYNC_SSE, S3_SYNC_SSE_KMS_KEY_ID, S3_SYNC_SSE_C_KEY and S3_SYNC_STORAGE_CLASS."""
    sse = {"": None, "aes256": "AES256", "aws:kms": "aws:kms"}.get((r.raw("S3_SYNC_SSE") or "").lower(), "?")
    if sse == "?":
        r.bad("S3_SYNC_SSE", r.raw("S3_SYNC_SSE") or "", "expected AES256 (SSE-S3) or aws:kms (SSE-KMS); "
                                                         "for SSE-C, set S3_SYNC_SSE_C_KEY instead")
        sse = None
    kms = r.raw("S3_SYNC_SSE_KMS_KEY_ID") or None
    if kms and not _KMS_KEY_ID.match(kms):
        r.bad("S3_SYNC_SSE_KMS_KEY_ID", kms, "expected a key ID, ARN or alias, without spaces")
        kms = None
    key = r.raw("S3_SYNC_SSE_C_KEY") or None
    if key and customer_key(key) is None:
        # The value is a secret: never shown, not even a wrong one (it may be one typo from right).
        r.bad("S3_SYNC_SSE_C_KEY", "***", f"expected a 256-bit key: 32 bytes, or their base64 (44 characters); "
                                          f"got {len(key)} characters")
        key = None
    storage_class = r.raw("S3_SYNC_STORAGE_CLASS") or None
    if storage_class and not _STORAGE_CLASS.match(storage_class):
        hint = f" such as {storage_class.upper()}" if _STORAGE_CLASS.match(storage_class.upper()) else ""
        r.bad("S3_SYNC_STORAGE_CLASS", storage_class,
              f"expected a storage class as the provider names it{hint or ' (such as STANDARD_IA)'}: upper-case "
              "letters, digits and underscores")
        storage_class = None
    return {"sse": sse, "sse_kms_key_id": kms, "sse_c_key": Secret(key) if key else None,
            "storage_class": storage_class}


# --- proxies ------------------------------------------------------------------------

def _proxy_for(r: Reader, endpoint: Endpoint) -> str | None:
    """The proxy for ``endpoint``, as curl and most tools read the environment: the
    scheme's variable (HTTPS_PROXY or HTTP_PROXY; the lower-case name wins when both are
    set), unless NO_PROXY names the host."""
    if endpoint.host == "invalid":
        return None
    name = f"{endpoint.scheme}_proxy"
    chosen = name if r.raw(name) else name.upper()
    proxy = r.raw(chosen)
    no_proxy = r.raw("no_proxy") if r.raw("no_proxy") is not None else r.raw("NO_PROXY")
    if not proxy:
        return None
    parts = urlsplit(endpoint.url)
    if bypasses(parts.hostname or "", parts.port or (443 if endpoint.scheme == "https" else 80), no_proxy or ""):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy  # "proxy:3128", as curl reads it
    shown = _without_password(proxy)
    try:
        proxy_parts = urlsplit(proxy)
        proxy_parts.port  # noqa: B018 - raises on a port that isn't one
    except ValueError:
        r.bad(chosen, shown, "not a proxy URL (expected http://host:port)")
        return None
    if proxy_parts.scheme not in ("http", "https") or not proxy_parts.hostname:
        r.bad(chosen, shown, "expected an http:// or https:// proxy URL with a host (SOCKS proxies are not supported)")
        return None
    return proxy


def bypasses(host: str, port: int, no_proxy: str) -> bool:
    """PURE: whether NO_PROXY exempts ``host:port``. Entries are comma-separated: ``*``
    (everything), a host or domain (``example.com`` and ``.example.com`` both match the
    domain and its subdomains), an IP address or CIDR range (``10.0.0.0/8``), each
    optionally with ``:port``."""
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.replace(" ", ",").split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        entry_port = None
        if entry.count(":") == 1 or (entry.startswith("[") and "]:" in entry):
            entry, _, port_text = entry.rpartition(":")
            entry_port = int(port_text) if port_text.isdigit() else -1
        entry = entry.strip("[]")
        if entry_port is not None and entry_port != port:
            continue
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return True
            continue
        except ValueError:
            pass
        domain = entry.lstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _without_password(url: str) -> str:
    """A proxy URL as it may be shown: its password replaced."""
    password = proxy_password(url)
    return url.replace(f":{password}@", ":***@", 1) if password else url


def proxy_password(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url).password
    except ValueError:
        return None


# --- variables no setting reads ------------------------------------------------------------

_PREFIX = "S3_SYNC_"


class RecordingEnvironment(Mapping[str, str]):
    """An environment that remembers every name it is asked for (``read``): how
    :func:`known_variables` learns them, and how the tests check it. ``get`` and ``in``
    ask ``__getitem__`` (Mapping's mixins), so they are remembered too."""

    def __init__(self, values: Mapping[str, str]):
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@functools.cache
def known_variables() -> frozenset[str]:
    """Every variable :func:`load` reads, learnt by watching it read them: a setting added
    to ``load`` is known without being listed a second time."""
    env = RecordingEnvironment({"S3_SYNC_ACCESS_KEY": "key", "S3_SYNC_SECRET_KEY": "secret",
                                "S3_SYNC_BUCKET": "mirror"})
    try:
        load_all(env)
    except ConfigError:  # the defaults are valid; and the names were read all the same
        pass
    return frozenset(env.read)


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """A warning for each ``S3_SYNC_*`` variable in ``env`` that no setting reads, naming
    the closest one that does: ``S3_SYNC_DELET=false`` otherwise leaves deletions on
    without a word. Names only: the value may be a credential under a misspelt name.
    ``MINIO_*`` is left alone: MinIO's own server reads those, from the same .env files."""
    known = known_variables()
    # Compared without the shared prefix, which would make every name look alike
    # (S3_SYNC_FOO is not "close" to S3_SYNC_REGION). A MINIO_* name counts whole:
    # S3_SYNC_MINIO_BUCKET means MINIO_BUCKET.
    candidates = {n.removeprefix(_PREFIX): n for n in sorted(known)}
    messages = []
    for name in sorted(n for n in env if n.startswith(_PREFIX) and n not in known):
        close = difflib.get_close_matches(name.removeprefix(_PREFIX), list(candidates), n=1)
        hint = f" (did you mean {candidates[close[0]]}?)" if close else ""
        messages.append(f"{name} is not a replicator setting{hint}; ignored")
    return messages


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy with some fields changed (tests and CLI flags)."""
    return dataclasses.replace(settings, **changes)
