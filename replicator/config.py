"""Settings, parsed once from an environment mapping into a frozen object.

The variable names are the ones the shell sidecar's users already have in their
``.env`` files (``S3_SYNC_*`` for the destination and behaviour, ``MINIO_*`` for the
source). Parsing collects *every* problem before raising, so a user fixes their file
once, not once per variable. Nothing else in replicator reads ``os.environ``.

Secrets are held in :class:`Secret`, whose ``repr``/``str`` never show the value, so
a settings object can be logged, put in an exception or shown by a debugger frame
without leaking a credential.
"""

from __future__ import annotations

import dataclasses
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import ConfigError

REQUIRED = ("S3_SYNC_ACCESS_KEY", "S3_SYNC_SECRET_KEY", "S3_SYNC_BUCKET")

MiB = 1024 * 1024


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


@dataclass(frozen=True)
class Settings:
    # Destination (S3-compatible)
    dest_access_key: Secret
    dest_secret_key: Secret
    dest_bucket: str
    dest_endpoint: Endpoint = field(default_factory=lambda: Endpoint("https", "s3.amazonaws.com"))
    dest_region: str = "us-east-1"
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
    workers: int = 16
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
    http_host: str = "0.0.0.0"
    shutdown_timeout: float = 10.0
    state_dir: str = "/var/lib/replicator"
    queue_size: int = 10000
    listen_timeout: float = 30.0
    reconcile_cooldown: float = 30.0

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
            for s in (self.dest_access_key, self.dest_secret_key, self.source_access_key, self.source_secret_key)
            if s.reveal()
        )

    def summary(self) -> dict[str, str]:
        """What the start-up banner shows. Access keys are identifiers, but we still
        show only their first characters: a leaked key id narrows a brute force."""
        return {
            "Source": f"{self.source_endpoint}/{self.source_bucket}",
            "Destination": f"{self.dest_endpoint}/{self.dest_bucket} ({self.dest_region})",
            "Interval": f"{self.interval:g} seconds",
            "Max Retries": str(self.max_retries),
            "Retry Delay": f"{self.retry_delay:g} seconds",
            "Delete": (
                f"mirror deletions (guard: >{self.delete_max_percent:g}% above {self.delete_guard_floor} objects)"
                if self.delete
                else "off"
            ),
            "Workers": str(self.workers),
        }


# --- parsing ---------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9\-._]*[A-Za-z0-9])?)(:\d{1,5})?$")
# botocore's own rule: anything else makes client creation raise, after config parsing.
_REGION = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?$")
_USERINFO = re.compile(r"(^|//)[^/]*@")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$")


class _Reader:
    """Reads variables, collecting problems instead of raising at the first."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        return value.strip() if value is not None else None

    def bad(self, name: str, value: str, why: str) -> None:
        self.problems.append(f"{name}={value!r}: {why}")

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

    def number(self, name: str, default: float, *, minimum: float = 0, integer: bool = False,
               above: bool = False, maximum: float | None = None) -> float:
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
        if (parsed <= minimum) if above else (parsed < minimum):
            self.bad(name, value, f"must be {'greater than' if above else 'at least'} {minimum:g}")
            return default
        if maximum is not None and parsed > maximum:
            self.bad(name, value, f"must be at most {maximum:g}")
            return default
        return parsed

    def size(self, name: str, default: int, *, minimum: int) -> int:
        value = self.raw(name)
        if not value:
            return default
        m = _SIZE.match(value)
        if not m:
            self.bad(name, value, "expected a size such as 8MiB or 8388608")
            return default
        unit = (m.group(2) or "b").lower().rstrip("b").rstrip("i")
        factor = {"": 1, "k": 1024, "m": MiB, "g": 1024 * MiB, "t": 1024 * 1024 * MiB}[unit]
        parsed = int(float(m.group(1)) * factor)
        if parsed < minimum:
            self.bad(name, value, f"must be at least {minimum // MiB} MiB")
            return default
        return parsed

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

    def region(self, name: str, default: str) -> str:
        value = self.text(name, default)
        if not _REGION.match(value):
            self.bad(name, value, "not a valid region name (such as us-east-1 or auto)")
            return default
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self.raw(name) or default).lower()
        if value not in choices:
            self.bad(name, value, f"expected one of {', '.join(choices)}")
            return default
        return value

    def ca_bundle(self, name: str) -> str | None:
        import os.path  # only a file check; the value itself comes from the mapping

        value = self.raw(name)
        if not value:
            return None
        if not os.path.isfile(value):
            self.bad(name, value, "no such file")
        return value


def load(env: Mapping[str, str]) -> Settings:
    """Parse settings from ``env``. Raises one ConfigError naming every problem."""
    missing = [name for name in REQUIRED if not (env.get(name) or "").strip()]
    if missing:
        raise ConfigError(f"Missing required environment variables: {', '.join(missing)}")

    r = _Reader(env)
    dest_endpoint = r.endpoint("S3_SYNC_ENDPOINT", "s3.amazonaws.com")
    path_style = r.choice("S3_SYNC_PATH_STYLE", "auto", ("auto", "true", "false"))
    timezone = r.text("S3_SYNC_TIMEZONE", "UTC")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        r.bad("S3_SYNC_TIMEZONE", timezone, "unknown timezone (use an IANA name such as Europe/Berlin)")
        timezone = "UTC"
    chunk = r.size("S3_SYNC_MULTIPART_CHUNK_SIZE", 8 * MiB, minimum=5 * MiB)
    threshold = r.size("S3_SYNC_MULTIPART_THRESHOLD", 16 * MiB, minimum=5 * MiB)

    settings = Settings(
        dest_access_key=Secret(env["S3_SYNC_ACCESS_KEY"].strip()),
        dest_secret_key=Secret(env["S3_SYNC_SECRET_KEY"].strip()),
        dest_bucket=r.bucket("S3_SYNC_BUCKET", None),
        dest_endpoint=dest_endpoint,
        dest_region=r.region("S3_SYNC_REGION", "us-east-1"),
        # Virtual-hosted style is AWS's preference; every other provider we target
        # (MinIO, B2, Wasabi, Spaces, R2) accepts path style, and only path style
        # works with an IP address or a bucket name containing dots under TLS.
        dest_path_style=(not dest_endpoint.is_aws) if path_style == "auto" else path_style == "true",
        dest_verify_tls=r.flag("S3_SYNC_VERIFY_TLS", True),
        dest_ca_bundle=r.ca_bundle("S3_SYNC_CA_BUNDLE"),
        source_endpoint=r.endpoint("MINIO_ENDPOINT", "http://minio:9000"),
        source_access_key=Secret(r.text("MINIO_ACCESS_KEY", "minioadmin")),
        source_secret_key=Secret(r.text("MINIO_SECRET_KEY", "minioadmin")),
        source_bucket=r.bucket("MINIO_BUCKET", "relics"),
        source_verify_tls=r.flag("MINIO_VERIFY_TLS", True),
        source_ca_bundle=r.ca_bundle("MINIO_CA_BUNDLE"),
        state_dir=r.text("S3_SYNC_STATE_DIR", "/var/lib/replicator"),
        enabled=r.flag("S3_SYNC_ENABLED", False),
        interval=r.number("S3_SYNC_INTERVAL", 1800.0, minimum=0, above=True),
        max_retries=int(r.number("S3_SYNC_MAX_RETRIES", 3, minimum=1, integer=True, maximum=100)),
        retry_delay=r.number("S3_SYNC_RETRY_DELAY", 60.0, minimum=0),
        timezone=timezone,
        delete=r.flag("S3_SYNC_DELETE", True),
        delete_max_percent=r.number("S3_SYNC_DELETE_MAX_PERCENT", 50.0, minimum=0, maximum=100),
        delete_guard_floor=int(r.number("S3_SYNC_DELETE_GUARD_FLOOR", 10, minimum=0, integer=True)),
        allow_empty_source=r.flag("S3_SYNC_ALLOW_EMPTY_SOURCE", False),
        workers=int(r.number("S3_SYNC_WORKERS", 16, minimum=1, integer=True, maximum=256)),
        multipart_threshold=threshold,
        multipart_chunk_size=chunk,
        multipart_concurrency=int(r.number("S3_SYNC_MULTIPART_CONCURRENCY", 4, minimum=1, integer=True, maximum=64)),
        list_concurrency=int(r.number("S3_SYNC_LIST_CONCURRENCY", 8, minimum=1, integer=True, maximum=64)),
        list_page_size=int(r.number("S3_SYNC_LIST_PAGE_SIZE", 1000, minimum=1, integer=True, maximum=1000)),
        connect_timeout=r.number("S3_SYNC_CONNECT_TIMEOUT", 10.0, minimum=0, above=True),
        read_timeout=r.number("S3_SYNC_READ_TIMEOUT", 60.0, minimum=0, above=True),
        log_level=r.choice("S3_SYNC_LOG_LEVEL", "info", ("trace", "debug", "info", "success", "warning", "error")).upper(),
        log_format=r.choice("S3_SYNC_LOG_FORMAT", "text", ("text", "json")),
        http_port=int(r.number("S3_SYNC_HTTP_PORT", 8080, minimum=0, integer=True, maximum=65535)),
        http_host=r.text("S3_SYNC_HTTP_HOST", "0.0.0.0"),
        shutdown_timeout=r.number("S3_SYNC_SHUTDOWN_TIMEOUT", 10.0, minimum=0),
        queue_size=int(r.number("S3_SYNC_QUEUE_SIZE", 10000, minimum=1, integer=True)),
        listen_timeout=r.number("S3_SYNC_LISTEN_TIMEOUT", 30.0, minimum=0, above=True),
        reconcile_cooldown=r.number("S3_SYNC_RECONCILE_COOLDOWN", 30.0, minimum=0),
    )
    if r.problems:
        raise ConfigError("Invalid configuration: " + "; ".join(r.problems))
    return settings


def replace(settings: Settings, **changes) -> Settings:
    """A copy with some fields changed (tests and CLI flags)."""
    return dataclasses.replace(settings, **changes)
