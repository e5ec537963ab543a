"""The MinIO source: minio-py for bucket checks and HEADs; raw signed requests
(transport.py) for listing pages, the copies' GETs and tags, on the pool minio-py uses
too. Maps every exception into errors.*."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from botocore.credentials import Credentials, ReadOnlyCredentials
from minio import Minio
from minio.error import S3Error
from urllib3.exceptions import HTTPError as Urllib3Error

from ..config import Settings
from ..errors import FatalError, NotFound, PermanentError, SourceChanged, StoreError, TransientError, classify
from ..model import ObjectInfo, SourceObject
from . import answers, listing, parallel_listing
from .object_lock import object_lock
from .transport import Body, Transport, object_path, query_string, release

# Headers a copy carries over besides Content-Type and user metadata.
COPIED_HEADERS = ("Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language", "Expires")
# MinIO's metrics as a Prometheus scrape of the cluster reads them: every node's counters,
# each labelled with its server (the node endpoint answers for one node only).
METRICS_PATH = "/minio/v2/metrics/cluster"
TOKEN_LIFETIME = 3600  # seconds: minted per read, it outlasts any sane clock skew


def prometheus_token(credentials: ReadOnlyCredentials, now: float) -> str:
    """PURE: the bearer token MinIO's metrics take, as ``mc admin prometheus generate``
    makes it: a JWT with the access key as subject and ``prometheus`` as issuer, HS512
    with the secret key. Signing one fixed token is this much; a JWT library's weight
    (and a pin to keep up) is in verifying, which MinIO does."""
    def part(value: dict[str, object]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).rstrip(b"=")

    signed = part({"alg": "HS512", "typ": "JWT"}) + b"." + part(
        {"iss": "prometheus", "sub": credentials.access_key, "exp": int(now) + TOKEN_LIFETIME})
    signature = hmac.new((credentials.secret_key or "").encode(), signed, hashlib.sha512).digest()
    return (signed + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


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


def holdable(key: str) -> bool:
    """Whether MinIO accepts ``key`` as an object name (cmd/object-api-utils.go)."""
    return (len(key.encode("utf-8", "surrogatepass")) <= 1024 and "//" not in key and "\0" not in key
            and not any(part in (".", "..") for part in key.split("/")))


class MinioSource:
    side = "source"

    def __init__(self, settings: Settings):
        self.bucket = settings.source_bucket
        self.endpoint = settings.source_endpoint.url
        self.list_concurrency = settings.list_concurrency
        self.list_page_size = settings.list_page_size
        access, secret = settings.source_access_key.reveal(), settings.source_secret_key.reveal()
        # The region is the bucket's, asked once (_region); until then, MinIO's default.
        self._transport = Transport(
            self.side, settings.source_endpoint.url, region="us-east-1", credentials=Credentials(access, secret),
            verify=settings.source_verify_tls, ca_bundle=settings.source_ca_bundle,
            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
            # Listings, the copies' GETs, the event workers' HEADs and tag reads, and the
            # notification stream.
            maxsize=settings.copy_connections + settings.workers + settings.list_concurrency + 4,
            proxy=settings.source_proxy)
        self.client = Minio(
            settings.source_endpoint.host, access_key=access, secret_key=secret,
            secure=settings.source_endpoint.secure, http_client=self._transport.pool,
            cert_check=settings.source_verify_tls,
        )
        self._region_known = False
        self._region_lock = threading.Lock()

    # -- error mapping ---------------------------------------------------------

    def _map(self, exc: Exception, op: str, key: str | None, *, bucket_op: bool = False) -> StoreError:
        return self._transport.map_error(op, key, exc, bucket_op=bucket_op)

    # -- raw requests ------------------------------------------------------------

    def _region(self) -> str:
        """The bucket's region, asked once (GetBucketLocation, which MinIO answers
        whatever region the request is signed for): MinIO refuses a signature for any
        other region than its own (MINIO_SITE_REGION)."""
        if self._region_known:
            return self._transport.region
        with self._region_lock:
            if not self._region_known:
                response = self._transport.request("get location", self.bucket, "GET", f"/{self.bucket}?location=",
                                                   region="us-east-1")
                if response.status != 200:
                    raise self._transport.error("get location", self.bucket, response, bucket_op=True)
                try:
                    self._transport.region = answers.location_constraint(response.data)
                except answers.MalformedAnswer as exc:
                    raise TransientError(self.side, "get location", self.bucket, f"{self.endpoint}: {exc}") from exc
                self._region_known = True
        return self._transport.region

    def _request(self, op: str, key: str | None, path: str, *, headers: dict[str, str] | None = None,
                 stream: bool = False, read_timeout: float | None = None):
        return self._transport.request(op, key, "GET", path, headers=headers, stream=stream, region=self._region(),
                                       read_timeout=read_timeout)

    def listen(self, query: Sequence[tuple[str, str]], read_timeout: float):
        """MinIO's ListenBucketNotification stream for the bucket (notifications.py
        reads it): the response, streaming, its own read timeout."""
        response = self._request("listen", self.bucket, f"/{self.bucket}?{query_string(query)}", stream=True,
                                 read_timeout=read_timeout)
        if response.status != 200:
            try:
                response.data  # read whole, for the error  # noqa: B018
            except (Urllib3Error, OSError) as exc:
                raise self._transport.map_error("listen", self.bucket, exc) from exc
            finally:
                response.release_conn()
            raise self._transport.error("listen", self.bucket, response, bucket_op=True)
        return response

    # -- SourceStore -------------------------------------------------------------

    def check(self) -> None:
        try:
            exists = self.client.bucket_exists(self.bucket)
        except Exception as exc:
            raise self._map(exc, "check bucket", self.bucket, bucket_op=True) from exc
        if not exists:
            raise FatalError(self.side, "check bucket", self.bucket, f"bucket does not exist at {self.endpoint}")

    def notification_targets(self) -> list[tuple[str, list[str]]]:
        """The bucket's queue notification rules: (target ARN, events) each."""
        try:
            config = self.client.get_bucket_notification(self.bucket)
        except Exception as exc:
            raise self._map(exc, "get notification", self.bucket, bucket_op=True) from exc
        return [(rule.queue or "", list(rule.events)) for rule in config.queue_config_list]

    def metrics(self) -> str:
        """MinIO's cluster metrics, Prometheus' text format, read with a token made from
        the source's keys: their user needs the admin:Prometheus action, or MinIO
        MINIO_PROMETHEUS_AUTH_TYPE=public. Raises errors.*, with MinIO's reason."""
        op = "read metrics"
        response = self._transport.request(op, None, "GET", METRICS_PATH,
                                           bearer=lambda keys: prometheus_token(keys, time.time()))
        if response.status == 200:
            return response.data.decode("utf-8", errors="replace")
        try:
            # MinIO refuses a metrics read as its admin API does: in JSON, not S3's XML.
            answer = json.loads(response.data)
            code, message = answer.get("Code"), answer.get("Message")
        except (ValueError, AttributeError):
            raise self._transport.error(op, None, response) from None
        raise classify(self.side, op, None, code, response.status, server_message=message)

    def list_from(self, start_after: str | None, *, prefix: str = "", metadata: bool = False) -> Iterator[ObjectInfo]:
        fetch = (lambda request: self._list_page(request, metadata=True)) if metadata else self._list_page
        return parallel_listing.walk(listing.Lister(self.side, self.bucket, fetch), start_after,
                                     self.list_concurrency, prefix)

    def _list_page(self, request: listing.PageRequest, *, metadata: bool = False) -> bytes:
        # Raw, and parsed by listing.py: minio-py's own list_objects costs 3x the CPU.
        query = query_string(request.query(self.list_page_size, metadata))
        response = self._request("list", request.subject, f"/{self.bucket}?{query}")
        if response.status != 200:
            raise self._transport.error("list", request.subject, response, bucket_op=True)
        return response.data

    def _get(self, key: str, headers: dict[str, str] | None = None):
        """A streaming GET of ``key``; errors.* for anything but 200/206."""
        return self._transport.get_object(key, object_path(f"/{self.bucket}", key), headers=headers,
                                          region=self._region())

    @contextmanager
    def open(self, key: str):
        response = self._get(key)
        try:
            yield describe(key, response.headers), Body(response, self._transport, key)
        finally:
            release(response)

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
            data = Body(response, self._transport, key).read()
        finally:
            release(response)
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
        if not obj.metadata or not obj.metadata.get("ETag"):
            raise TransientError(self.side, "stat", key, f"{self.endpoint} answered a HEAD without an ETag: "
                                 "not an S3 answer")
        return describe(key, obj.metadata)  # minio-py puts the raw response headers there

    def part_sizes(self, key: str, etag: str) -> list[int] | None:
        """The sizes of the object's parts as it was uploaded, in order (S3's
        GetObjectAttributes, paged); None where the source won't say. The ETag pins
        the version: another one is SourceChanged, and the copy starts again."""
        sizes: list[int] = []
        marker = 0
        while True:
            query = "?attributes=" + (f"&part-number-marker={marker}" if marker else "")
            response = self._request("get attributes", key, object_path(f"/{self.bucket}", key, query),
                                     headers={"x-amz-object-attributes": "ETag,ObjectParts",
                                              "x-amz-max-parts": "1000"})
            if response.status != 200:
                error = self._transport.error("get attributes", key, response)
                if isinstance(error, PermanentError) and not isinstance(error, NotFound):
                    return None  # not offered here (NotImplemented, AccessDenied): parts of our own then
                raise error
            try:
                seen, parts, marker_next = answers.object_parts(response.data)
            except answers.MalformedAnswer as exc:
                raise TransientError(self.side, "get attributes", key, f"{self.endpoint}: {exc}") from exc
            if seen != etag:
                raise SourceChanged(self.side, "get attributes", key, f"object changed during the copy: ETag {seen}")
            for number, size in parts:
                if number != len(sizes) + 1:
                    return None  # parts missing from the list: not a layout to copy
                sizes.append(size)
            if marker_next is None:
                return sizes or None
            marker = marker_next

    def get_tags(self, key: str) -> dict[str, str]:
        # Raw, and proven (answers.py): minio-py's get_object_tags reads an HTML page at
        # 200 as "no tags", and the copy would then remove the destination's.
        response = self._request("get tags", key, object_path(f"/{self.bucket}", key, "?tagging="))
        if response.status != 200:
            error = self._transport.error("get tags", key, response)
            if error.code == "NoSuchTagSet" or isinstance(error, NotFound):
                return {}
            raise error
        try:
            return answers.tag_set(response.data)
        except answers.MalformedAnswer as exc:
            raise TransientError(self.side, "get tags", key, f"{self.endpoint}: {exc}") from exc
