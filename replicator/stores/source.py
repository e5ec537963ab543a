"""The MinIO source: minio-py for bucket checks, listings, HEADs and tags; raw signed
GETs (transport, http_client) for the copies' bytes. Maps every exception into errors.*."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from minio import Minio
from minio.credentials import Credentials
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import HTTPError as Urllib3Error

from ..config import Settings
from ..errors import FatalError, NotFound, PermanentError, StoreError, TransientError, classify, parse_retry_after
from ..model import NO_LOCK, ObjectInfo, ObjectLock, SourceObject
from . import answers, listing, parallel_listing
from .http_client import HttpClient
from .transport import map_transport_error, object_path, pool_manager, raw_error, signed_request

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

# Headers a copy carries over besides Content-Type and user metadata.
COPIED_HEADERS = ("Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language", "Expires")
LOCK_MODES = frozenset({"GOVERNANCE", "COMPLIANCE"})


def _etag(value: str | None) -> str:
    return (value or "").strip('"').lower()


def describe(key: str, headers) -> SourceObject:
    """A SourceObject from a GET/HEAD response's headers."""
    meta = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("x-amz-meta-"):
            meta[lower[len("x-amz-meta-"):]] = value
    copied = {h: headers[h] for h in COPIED_HEADERS if headers.get(h)}
    return SourceObject(
        key=key,
        size=int(headers.get("Content-Length") or 0),
        etag=_etag(headers.get("ETag")),
        content_type=headers.get("Content-Type"),
        headers=copied,
        metadata=meta,
        tag_count=int(headers.get("x-amz-tagging-count") or 0),
        lock=object_lock(headers),
    )


def object_lock(headers) -> ObjectLock:
    """PURE: the Object Lock settings in a GET/HEAD response's headers.

    MinIO sends them only to a user allowed ``s3:GetObjectRetention`` and
    ``s3:GetObjectLegalHold``; to anyone else an object looks unlocked. A retention
    without a readable date is ignored rather than guessed."""
    mode = (headers.get("x-amz-object-lock-mode") or "").strip().upper()
    until = _datetime(headers.get("x-amz-object-lock-retain-until-date"))
    hold = (headers.get("x-amz-object-lock-legal-hold") or "").strip().upper() == "ON"
    if mode not in LOCK_MODES or until is None:
        mode, until = None, None
    if mode is None and not hold:
        return NO_LOCK
    return ObjectLock(mode, until, hold)


def _datetime(value: str | None) -> datetime | None:
    """An ISO-8601 timestamp (MinIO: ``2026-11-27T21:01:23.000Z``), timezone-aware."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def holdable(key: str) -> bool:
    """Whether MinIO accepts ``key`` as an object name (cmd/object-api-utils.go)."""
    return (len(key.encode("utf-8", "surrogatepass")) <= 1024 and "//" not in key and "\0" not in key
            and not any(part in (".", "..") for part in key.split("/")))


class _Body:
    """The object's stored bytes (http_client never decodes: an object stored with
    Content-Encoding: gzip is copied as the gzip bytes)."""

    def __init__(self, response, side: str, key: str, endpoint: str):
        self._response = response
        self._side, self._key, self._endpoint = side, key, endpoint

    def read(self, hashes: Sequence[Hash] = ()) -> bytes | bytearray:
        try:
            return self._response.read(hashes)
        except OSError as exc:
            raise map_transport_error(self._side, "get", self._key, self._endpoint, exc) from exc


class MinioSource:
    side = "source"

    def __init__(self, settings: Settings, *, read_timeout: float | None = None, pool_size: int | None = None):
        self.bucket = settings.source_bucket
        self.endpoint = settings.source_endpoint.url
        self.list_concurrency = settings.list_concurrency
        self.list_page_size = settings.list_page_size
        http = pool_manager(
            settings, verify=settings.source_verify_tls, ca_bundle=settings.source_ca_bundle,
            read_timeout=read_timeout or settings.read_timeout,
            # minio-py's pool: listings, and the event workers' HEADs and tag reads (the
            # copies' GETs have their own client, below).
            maxsize=pool_size or settings.workers + settings.list_concurrency + 4,
        )
        self.client = Minio(
            settings.source_endpoint.host,
            access_key=settings.source_access_key.reveal(),
            secret_key=settings.source_secret_key.reveal(),
            secure=settings.source_endpoint.secure,
            http_client=http,
            cert_check=settings.source_verify_tls,
        )
        # GETs, the source half of every copy, go out as raw signed requests
        # (transport.signed_request, http_client): a fifth of minio-py's get_object CPU.
        self._objects = HttpClient(
            settings.source_endpoint.url, connect_timeout=settings.connect_timeout,
            read_timeout=read_timeout or settings.read_timeout, verify=settings.source_verify_tls,
            ca_bundle=settings.source_ca_bundle, maxsize=settings.copy_connections)
        self._credentials = Credentials(settings.source_access_key.reveal(), settings.source_secret_key.reveal())

    # -- error mapping ---------------------------------------------------------

    def _map(self, exc: Exception, op: str, key: str | None, *, bucket_op: bool = False) -> StoreError:
        if isinstance(exc, S3Error):
            headers = exc.response.headers if exc.response is not None else {}
            status = exc.response.status if exc.response is not None else None
            return classify(self.side, op, key, exc.code, status, bucket_op=bucket_op,
                            retry_after=parse_retry_after(headers.get("Retry-After")))
        if isinstance(exc, ServerError):
            return classify(self.side, op, key, None, exc.status_code, bucket_op=bucket_op)
        if isinstance(exc, InvalidResponseError):
            # A non-XML answer: a proxy's error page, or not an S3 endpoint at all.
            return TransientError(self.side, op, key, f"{self.endpoint} gave a non-S3 response: {exc}")
        if isinstance(exc, (Urllib3Error, OSError)):
            return map_transport_error(self.side, op, key, self.endpoint, exc)
        raise exc

    # -- SourceStore -------------------------------------------------------------

    def check(self) -> None:
        try:
            exists = self.client.bucket_exists(self.bucket)
        except Exception as exc:
            raise self._map(exc, "check bucket", self.bucket, bucket_op=True) from exc
        if not exists:
            raise FatalError(self.side, "check bucket", self.bucket, f"bucket does not exist at {self.endpoint}")

    def list_from(self, start_after: str | None, *, metadata: bool = False) -> Iterator[ObjectInfo]:
        fetch = (lambda request: self._list_page(request, metadata=True)) if metadata else self._list_page
        return parallel_listing.walk(listing.Lister(self.side, self.bucket, fetch), start_after,
                                     self.list_concurrency)

    def _list_page(self, request: listing.PageRequest, *, metadata: bool = False) -> bytes:
        # A raw page through minio-py's signed-request primitive: minio-py's own
        # list_objects costs 3x the CPU (see listing.py).
        try:
            return self.client._execute("GET", self.bucket,  # noqa: SLF001
                                        query_params=request.query(self.list_page_size, metadata)).data
        except Exception as exc:
            raise self._map(exc, "list", request.subject, bucket_op=True) from exc

    def _get(self, key: str, headers: dict[str, str] | None = None):
        """A streaming GET of ``key``; errors.* for anything but 200/206."""
        try:
            region = self.client._get_region(self.bucket)  # noqa: SLF001 - minio-py's cached lookup
        except Exception as exc:
            raise self._map(exc, "get", key) from exc
        try:
            response = signed_request(self._objects, "GET", object_path(f"/{self.bucket}", key),
                                      region=region, credentials=self._credentials, headers=headers)
            if response.status not in (200, 206):
                response.read()  # the error document, for raw_error
        except OSError as exc:
            raise map_transport_error(self.side, "get", key, self.endpoint, exc) from exc
        if response.status not in (200, 206):
            raise raw_error(self.side, "get", key, response)
        if not response.headers.get("ETag"):
            # MinIO sends every object's ETag; a 200 without one is somebody else's page,
            # and copying it would store that page as the object.
            response.release()
            raise TransientError(self.side, "get", key, f"{self.endpoint} answered {response.status} without an "
                                 "ETag: not an S3 answer")
        return response

    @contextmanager
    def open(self, key: str):
        response = self._get(key)
        try:
            yield describe(key, response.headers), _Body(response, self.side, key, self.endpoint)
        finally:
            response.release()  # unread bytes (an object too big for one PUT) drop the connection

    def read_range(self, key: str, offset: int, length: int, etag: str) -> bytes:
        # If-Match pins the version: if the object is overwritten between parts, the
        # next part fails with 412 (SourceChanged) instead of mixing two versions.
        response = self._get(key, {"Range": f"bytes={offset}-{offset + length - 1}", "If-Match": f'"{etag}"'})
        try:
            if response.status != 206:
                # A 200 is the whole object: something between us and MinIO dropped the
                # Range header. Reading it for every part would cost the object's size each.
                raise PermanentError(self.side, "get", key, f"asked for bytes {offset}-{offset + length - 1}, "
                                     f"got HTTP {response.status} without a range: a proxy in the way?")
            data = _Body(response, self.side, key, self.endpoint).read()
        finally:
            response.release()
        if len(data) != length:
            raise TransientError(self.side, "get", key, f"short read: {len(data)} of {length} bytes")
        return data

    def stat(self, key: str) -> SourceObject | None:
        try:
            obj = self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NotFound", "ResourceNotFound"):
                return None
            if exc.code in ("BadRequest", "XMinioInvalidObjectName") and not holdable(key):
                # A destination-only key MinIO could never store ("a//b" is fine on S3):
                # MinIO rejects the name with 400 instead of answering 404.
                return None
            raise self._map(exc, "stat", key) from exc
        except Exception as exc:
            raise self._map(exc, "stat", key) from exc
        if not obj.metadata.get("ETag"):
            raise TransientError(self.side, "stat", key, f"{self.endpoint} answered a HEAD without an ETag: "
                                 "not an S3 answer")
        return describe(key, obj.metadata)  # minio-py puts the raw response headers there

    def get_tags(self, key: str) -> dict[str, str]:
        # Raw, and proven (answers.py): minio-py's get_object_tags reads an HTML page at
        # 200 as "no tags", and the copy would then remove the destination's.
        try:
            response = self.client._execute("GET", self.bucket, key, query_params={"tagging": ""})  # noqa: SLF001
        except S3Error as exc:
            if exc.code == "NoSuchTagSet":
                return {}
            error = self._map(exc, "get tags", key)
            if isinstance(error, NotFound):
                return {}
            raise error from exc
        except Exception as exc:
            raise self._map(exc, "get tags", key) from exc
        try:
            return answers.tag_set(response.data)
        except answers.MalformedAnswer as exc:
            raise TransientError(self.side, "get tags", key, f"{self.endpoint}: {exc}") from exc
