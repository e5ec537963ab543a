"""Any S3-compatible destination: boto3 for the control calls (bucket checks,
multipart start and complete, tags, object lock, deletes), raw signed requests
(transport.py) for listing pages and the PUTs that carry the bytes. Maps botocore
exceptions into errors.*."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote, urlencode, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from loguru import logger
from urllib3 import HTTPHeaderDict

from ..config import Settings
from ..drift import recorded_etag
from ..errors import ConfigError, FatalError, NotFound, PermanentError, StoreError, TransientError, annotated
from ..model import NO_LOCK, SOURCE_ETAG_META, ObjectInfo, ObjectLock, SourceObject
from ..ratelimit import Limits
from . import answers, listing, parallel_listing
from .encryption import write_options
from .object_lock import RETENTION_MARGIN, iso8601, lock_headers, sendable_lock
from .source import describe
from .transport import Body, Transport, object_path, prove_answer, query_string, release

_UNSUPPORTED = frozenset({"NotImplemented", "MethodNotAllowed", "NotSupported", "XNotImplemented"})

# What XML 1.0 can't carry: every C0 control but tab, newline and carriage return.
_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")

# How a destination refuses the lock settings of a write: a bucket without object lock
# (InvalidRequest "Bucket is missing ObjectLockConfiguration", from AWS, MinIO and moto
# alike), credentials without s3:PutObjectRetention or s3:PutObjectLegalHold
# (AccessDenied), a provider without object lock at all.
_LOCK_REFUSED = frozenset({"InvalidRequest", "InvalidArgument", "AccessDenied"}) | _UNSUPPORTED

T = TypeVar("T")
# S3's first region: where an unnamed region is, and where a bucket is created by default.
DEFAULT_REGION = "us-east-1"


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _etag(value: str | None) -> str:
    return (value or "").strip('"').lower()


def _server_message(error: StoreError) -> str:
    """The server's own words for an error ("Bucket is missing ObjectLockConfiguration"), if any."""
    return f": {error.server_message}" if error.server_message else ""


def client_config(settings: Settings, region: str) -> Config:
    aws = settings.dest_endpoint.is_aws
    return Config(
        region_name=region,
        signature_version="s3v4",
        s3={"addressing_style": "path" if settings.dest_path_style else "virtual"},
        # One attempt per call: retry.py owns retries (attempts would multiply otherwise).
        # botocore's "max_attempts" counts retries *after* the first try; "total_max_attempts"
        # counts tries.
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=settings.workers + settings.multipart_concurrency + 4,
        tcp_keepalive=True,
        # botocore >= 1.36 adds CRC checksum headers by default; B2, older MinIO and
        # others reject them. We send Content-MD5 ourselves, which every provider
        # verifies, so outside AWS only what an operation requires is sent.
        request_checksum_calculation="when_supported" if aws else "when_required",
        response_checksum_validation="when_supported" if aws else "when_required",
        # The proxy config.py chose, or none: an empty mapping keeps botocore from
        # reading the environment with rules of its own.
        proxies={settings.dest_endpoint.scheme: settings.dest_proxy} if settings.dest_proxy else {},
    )


_CHAIN = ("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws, web identity "
          "(AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN), container credentials (ECS, EKS Pod Identity) and the "
          "EC2 instance profile")


def _session(settings: Settings) -> boto3.session.Session:
    """The destination's boto3 session: the configured keys, or botocore's credential
    chain, whose credentials its providers renew before they expire. No credentials
    at all is a configuration error, named like the old sidecar's."""
    if settings.dest_access_key is not None and settings.dest_secret_key is not None:
        return boto3.session.Session(
            aws_access_key_id=settings.dest_access_key.reveal(),
            aws_secret_access_key=settings.dest_secret_key.reveal(),
            aws_session_token=settings.dest_session_token.reveal() if settings.dest_session_token else None,
        )
    session = boto3.session.Session()
    try:
        credentials = session.get_credentials()
    except BotoCoreError as exc:  # a profile that doesn't exist, a token file that can't be read, ...
        raise ConfigError(f"destination credentials: the AWS credential chain failed: {exc}") from exc
    if credentials is None:
        raise ConfigError("Missing required environment variables: S3_SYNC_ACCESS_KEY, S3_SYNC_SECRET_KEY "
                          f"(or credentials from the AWS chain; none found in {_CHAIN})")
    logger.info("destination credentials: the AWS credential chain ({})", credentials.method)
    return session


@dataclass
class Capabilities:
    """What the destination turned out to take, learnt once per process: from check()
    (the bucket's HEAD and object lock configuration), or from the first write a
    provider refused for want of it. Each is said once, in a warning, when it is lost."""

    tagging: bool = True  # cleared once the provider says it doesn't do tags
    batch_delete: bool = True  # cleared once DeleteObjects is refused as unsupported
    # Whether the bucket takes object lock settings: None until check() asks, or until a
    # write carrying them is refused; False means copies go without them.
    object_lock: bool | None = None
    object_lock_cause: str = ""  # why it is False, for the one warning
    object_lock_warned: bool = False
    # MinIO lists each object's attributes and tags when asked (metadata=true), so a
    # reconcile sees a metadata rewrite over the same bytes at no extra request. Learnt
    # from the bucket's HEAD ("Server: MinIO") where S3_SYNC_LIST_METADATA asks for it.
    lists_metadata: bool = False
    list_metadata_asked: bool = False  # cleared once found impossible, so it is said once


class S3Destination:
    side = "destination"

    @property
    def lists_metadata(self) -> bool:
        return self.can.lists_metadata

    def __init__(self, settings: Settings, limits: Limits | None = None):
        self.bucket = settings.dest_bucket
        self._settings = settings
        self._limits = limits  # bandwidth and request rate, on both HTTP stacks (ratelimit.py)
        # Signed for S3_SYNC_REGION until check() has asked the bucket (_learn_region).
        self.region = settings.dest_region or DEFAULT_REGION
        endpoint = settings.dest_endpoint
        self.endpoint = endpoint.url
        self._session = _session(settings)
        self.client = self._client(self.region)
        # Listing pages and the PUTs that carry the bytes go out as raw signed requests
        # (transport.py): botocore's per-call machinery (endpoint rules resolved per key,
        # event hooks, serialisers) costs more CPU than a small PUT's exchange, and its
        # generic parser most of a no-op reconcile's. The bucket's base URL comes from
        # botocore, so addressing (virtual or path style, regional endpoints, dotted
        # bucket names) follows its rules; so do the credentials, refreshed by its
        # provider.
        bucket_url = urlsplit(self.client.generate_presigned_url("head_bucket", Params={"Bucket": self.bucket}))
        self._aws = endpoint.is_aws
        self._bucket_path = bucket_url.path.rstrip("/")  # "/bucket" (path style) or "" (virtual)
        credentials = self._session.get_credentials()
        assert credentials is not None  # _session() refuses to return a session without them
        self._transport = Transport(
            self.side, f"{bucket_url.scheme}://{bucket_url.netloc}", region=self.region,
            credentials=credentials, verify=settings.dest_verify_tls,
            ca_bundle=settings.dest_ca_bundle,
            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
            maxsize=settings.copy_connections + settings.list_concurrency + 2, proxy=settings.dest_proxy,
            limits=limits)
        self.list_concurrency = settings.list_concurrency
        self.list_page_size = settings.list_page_size
        self.can = Capabilities(list_metadata_asked=settings.list_metadata)
        # Encryption and storage class (encryption.py): on each write; SSE-C on reads too.
        self._write = write_options(settings)
        self._lock = threading.Lock()

    def _client(self, region: str):
        endpoint = self._settings.dest_endpoint
        # The bare global endpoint means "AWS, whichever region": let botocore pick the
        # regional endpoint, as a user of the established sidecar would expect.
        endpoint_url = None if endpoint.host == "s3.amazonaws.com" and endpoint.secure else endpoint.url
        verify: bool | str = self._settings.dest_ca_bundle or self._settings.dest_verify_tls
        client = self._session.client("s3", endpoint_url=endpoint_url, verify=verify, region_name=region,
                                      config=client_config(self._settings, region))
        client.meta.events.register("before-parse.s3.*", prove_answer)
        if self._limits is not None:
            self._limits.hook(client.meta.events)
        return client

    # -- error mapping ---------------------------------------------------------

    def _map(self, exc: Exception, op: str, key: str | None, *, bucket_op: bool = False) -> StoreError:
        return self._transport.map_error(op, key, exc, bucket_op=bucket_op)

    def _call(self, op: str, key: str | None, fn, /, *, bucket_op: bool = False, **kwargs):
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except Exception as exc:
            raise self._map(exc, op, key, bucket_op=bucket_op) from exc

    # -- DestinationStore ----------------------------------------------------------

    def check(self, create: bool) -> None:
        head = self._head_bucket()
        if head.status in (301, 400) and self._learn_region(head):
            head = self._head_bucket()
        if head.status == 200:
            logger.info("destination bucket {}: signing for {}", self.bucket, self.region)
            self._learn_server(head.headers.get("Server") or "")
            self._probe_object_lock()
            return
        error = self._transport.error("check bucket", self.bucket, head, bucket_op=True)
        if head.status in (301, 400):
            raise FatalError(self.side, "check bucket", self.bucket,
                             f"{error.detail}: requests were signed for {self.region}, and the bucket named no other "
                             "region; set S3_SYNC_REGION to the bucket's", code=error.code)
        if head.status != 404:
            raise error
        if not create:
            raise FatalError(self.side, "check bucket", self.bucket, f"bucket does not exist at {self.endpoint}")
        region = self._settings.dest_region or DEFAULT_REGION
        logger.info("{}: destination bucket missing; creating it in {}", self.bucket, region)
        kwargs = {}
        if region != DEFAULT_REGION:  # us-east-1 rejects an explicit LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._call("create bucket", self.bucket, self.client.create_bucket, bucket_op=True, **kwargs)
        except StoreError as error:
            if error.code not in ("BucketAlreadyOwnedByYou",):
                raise
        self._probe_object_lock()

    def _head_bucket(self):
        return self._transport.request("check bucket", self.bucket, "HEAD", self._bucket_path or "/")

    def _learn_region(self, refusal) -> bool:
        """Sign for the bucket's own region; True if it names another than ours. A
        request signed for another region is refused (400 AuthorizationHeaderMalformed,
        or 301 PermanentRedirect from AWS's global endpoint), and the refusal says where
        the bucket is: in the x-amz-bucket-region header, or in the error document's
        <Region>. A bucket that takes the configured region is never asked, whatever it
        calls itself (R2 says "auto"; a MinIO without a site region takes any)."""
        region = refusal.headers.get("x-amz-bucket-region")
        if not region:  # a HEAD has no body: ask for one, to read its <Region>
            query = query_string({"list-type": "2", "max-keys": "0"})
            region = answers.error_region(
                self._transport.request("check bucket", self.bucket, "GET", f"{self._bucket_path}/?{query}").data)
        if not region or region == self.region:
            return False
        configured = self._settings.dest_region
        if configured:
            logger.warning("S3_SYNC_REGION={}, but destination bucket {} is in {}: signing for {}",
                           configured, self.bucket, region, region)
        else:
            logger.info("destination bucket {} is in {}: signing for {}", self.bucket, region, region)
        self.region = self._transport.region = region
        self.client = self._client(region)
        return True

    def _learn_server(self, server: str) -> None:
        if not self.can.list_metadata_asked or self.can.lists_metadata:
            return
        self.can.lists_metadata = server.lower().startswith("minio")
        if not self.can.lists_metadata:
            self.can.list_metadata_asked = False  # not asked again: the warning is said once
            logger.warning("S3_SYNC_LIST_METADATA=true, but the destination ({}) is not MinIO and can't list "
                           "metadata; reconciles compare sizes and ETags, and the metadata sweep the rest",
                           server or "unnamed server")

    def _probe_object_lock(self) -> None:
        """Ask the bucket once whether it has object lock. Only a clear "no" decides
        it: a provider or a policy that won't say (AccessDenied, NotImplemented)
        leaves it to the first write that carries lock settings. Never fails the check."""
        if self.can.object_lock is not None:
            return
        try:
            answer = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "ObjectLockConfigurationNotFoundError":
                self.can.object_lock = False
                self.can.object_lock_cause = f"destination bucket {self.bucket} has no object lock ({code})"
            else:
                logger.debug("{}: object lock configuration unknown ({}); the first locked object will tell",
                             self.bucket, code)
            return
        except BotoCoreError as exc:
            logger.debug("{}: object lock configuration unknown ({}); the first locked object will tell",
                         self.bucket, type(exc).__name__)
            return
        enabled = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        self.can.object_lock = enabled
        if not enabled:
            self.can.object_lock_cause = f"destination bucket {self.bucket} has object lock disabled"

    def list_from(self, start_after: str | None, *, prefix: str = "") -> Iterator[ObjectInfo]:
        """The listing (of the keys under ``prefix``); with each object's attributes and
        tags where the destination can list them (``lists_metadata``)."""
        return parallel_listing.walk(listing.Lister(self.side, self.bucket, self._list_page), start_after,
                                     self.list_concurrency, prefix)

    def _list_page(self, request: listing.PageRequest) -> bytes:
        # Raw, and parsed by listing.py: botocore's generic parser is most of a no-op
        # reconcile's CPU.
        query = query_string(request.query(self.list_page_size, metadata=self.lists_metadata))
        response = self._transport.request("list", request.subject, "GET", f"{self._bucket_path}/?{query}")
        if response.status != 200:
            raise self._transport.error("list", request.subject, response, bucket_op=True)
        return response.data

    def head_source_etag(self, key: str) -> str | None:
        copy = self.stat(key)
        return recorded_etag(copy) if copy is not None else None

    def stat(self, key: str) -> SourceObject | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, **self._write.customer_params)
        except Exception as exc:
            error = self._map(exc, "head", key)
            if isinstance(error, NotFound):
                return None
            if self._write.customer and isinstance(exc, ClientError):
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 400:
                    # S3 and MinIO refuse an SSE-C key for an object not encrypted with
                    # one: written before S3_SYNC_SSE_C_KEY was set, or by someone else.
                    # As good as missing: the copy that replaces it is encrypted.
                    logger.debug("{}: not encrypted with S3_SYNC_SSE_C_KEY (HTTP 400); copied again", key)
                    return None
                if status == 403:
                    error = annotated(error, "; or the object is encrypted with another SSE-C key than "
                                             "S3_SYNC_SSE_C_KEY")
            raise error from exc
        # The raw headers, read as the source's are: one rule (drift.py) compares both.
        return describe(key, HTTPHeaderDict(head["ResponseMetadata"]["HTTPHeaders"]))

    @contextmanager
    def open(self, key: str):
        """GET the whole object: its description, read as the source's are, and its bytes."""
        response = self._transport.get_object(key, object_path(self._bucket_path, key), headers=self._write.customer)
        try:
            yield describe(key, response.headers), Body(response, self._transport, key)
        finally:
            release(response)

    def get_tags(self, key: str) -> dict[str, str]:
        if not self.can.tagging:
            return {}
        result = self._call("get tags", key, self.client.get_object_tagging, Key=key)
        return {tag["Key"]: tag["Value"] for tag in result.get("TagSet", ())}

    def mirrored_lock(self, src: SourceObject) -> ObjectLock | None:
        if self.can.object_lock is False:
            return None
        return sendable_lock(src.lock, time.time())

    # -- object lock ---------------------------------------------------------------

    def lock_for(self, key: str, src: SourceObject) -> ObjectLock:
        """The lock settings a write of ``key`` should carry: the source's, minus a
        retention about to end; none once the bucket turned out not to take them."""
        lock = sendable_lock(src.lock, time.time())
        if lock and self.can.object_lock is False:
            self._warn_no_object_lock(key)
            return NO_LOCK
        return lock

    def _warn_no_object_lock(self, key: str) -> None:
        with self._lock:
            if self.can.object_lock_warned:
                return
            self.can.object_lock_warned = True
        logger.warning("{}: {}; replicating without retention and legal holds from now on",
                       key, self.can.object_lock_cause)

    def _without_lock_if_refused(self, key: str, src: SourceObject, send: Callable[[ObjectLock], T]) -> T:
        """``send(lock)`` writes the object with ``lock``'s settings. If the destination
        refuses them and takes the object without, it doesn't take them at all (no
        object lock on the bucket, or no permission): say so once and stop sending them.
        A copy never fails for want of object lock. Works for any request ``send`` makes."""
        lock = self.lock_for(key, src)
        if not lock:
            return send(NO_LOCK)
        try:
            return send(lock)
        except PermanentError as error:
            if isinstance(error, NotFound) or error.code not in _LOCK_REFUSED:
                raise
            result = send(NO_LOCK)  # raises if the lock settings weren't the cause
            with self._lock:
                self.can.object_lock = False
                self.can.object_lock_cause = (f"destination bucket {self.bucket} refused the object's retention and "
                                           f"legal hold ({error.detail}{_server_message(error)})")
            self._warn_no_object_lock(key)
            return result

    def put_retention(self, key: str, lock: ObjectLock) -> None:
        """Give the destination object ``lock``'s retention, or none when it has none.

        A later date goes as it is. Shortening or removing a GOVERNANCE retention (and,
        on MinIO, turning it into COMPLIANCE) needs the bypass, so after a refusal the
        change is sent once more with BypassGovernanceRetention: the source's owner
        could only make it with the same privilege. The bypass is never sent first, so
        credentials without s3:BypassGovernanceRetention mirror everything else. A
        COMPLIANCE retention can't be shortened or removed by anyone; that refusal is
        permanent."""
        if self.can.object_lock is False:
            self._warn_no_object_lock(key)
            return
        sendable = sendable_lock(lock, time.time())
        if lock.mode is not None and sendable.mode is None:
            logger.debug("{}: retention ends within {}s; not mirrored", key, RETENTION_MARGIN)
            return
        retention = {"Mode": lock.mode, "RetainUntilDate": lock.retain_until} if lock.mode else {}
        try:
            self._lock_call("put retention", key, self.client.put_object_retention, Retention=retention)
            return
        except PermanentError as error:
            if isinstance(error, NotFound):
                raise
        try:
            self._lock_call("put retention", key, self.client.put_object_retention, Retention=retention,
                            BypassGovernanceRetention=True)
        except PermanentError as error:
            if isinstance(error, NotFound):
                raise
            wanted = (f"{lock.mode} until {iso8601(lock.retain_until)}" if lock.mode and lock.retain_until
                      else "no retention")
            raise PermanentError(
                self.side, "put retention", key,
                f"{error.detail}{_server_message(error)}: the destination refuses {wanted} (a COMPLIANCE retention "
                "can never be shortened or removed; a GOVERNANCE one only with s3:BypassGovernanceRetention)",
                code=error.code) from error

    def put_legal_hold(self, key: str, on: bool) -> None:
        if self.can.object_lock is False:
            self._warn_no_object_lock(key)
            return
        self._lock_call("put legal hold", key, self.client.put_object_legal_hold,
                        LegalHold={"Status": "ON" if on else "OFF"})

    def _lock_call(self, op: str, key: str, fn, **kwargs) -> None:
        try:
            self._call(op, key, fn, Key=key, **kwargs)
        except PermanentError as error:
            if error.code == "MethodNotAllowed":
                # S3 and MinIO answer 405 when the key's current version is a delete
                # marker: for a mirror, the object isn't there.
                raise NotFound(self.side, op, key, f"{error.detail}: no current version",
                               code=error.code) from error
            raise

    # -- writes ----------------------------------------------------------------------

    def _without_tags_if_unsupported(self, send: Callable[[dict[str, str] | None], T],
                                     tags: dict[str, str] | None) -> T:
        """``send(tags)``; if the provider rejects tagging, warn once and ``send(None)``."""
        tagged = bool(tags) and self.can.tagging
        try:
            return send(tags)
        except PermanentError as error:
            if not tagged or error.code not in _UNSUPPORTED:
                raise
            self._tags_unsupported(error)
            return send(None)

    def _object_headers(self, src: SourceObject, tags: dict[str, str] | None,
                        lock: ObjectLock = NO_LOCK) -> dict[str, str]:
        """The one encoding of what a write of ``src`` carries beside its bytes, for a
        PutObject and a CreateMultipartUpload alike: Content-Type, the copied headers,
        user metadata with the source ETag, tags, the lock settings, encryption and
        storage class."""
        headers = {f"x-amz-meta-{name}": value for name, value in src.metadata.items()}
        headers[f"x-amz-meta-{SOURCE_ETAG_META}"] = src.etag
        if src.content_type:
            headers["Content-Type"] = src.content_type
        headers.update(src.headers)  # Cache-Control, Expires, ... verbatim, as the source sent them
        if tags and self.can.tagging:
            headers["x-amz-tagging"] = urlencode(tags)
        headers.update(lock_headers(lock))
        headers.update(self._write.create)
        return headers

    def _needs_md5(self, headers: dict[str, str]) -> bool:
        return self._transport.secure or self._aws or any(name.startswith("x-amz-object-lock-") for name in headers)

    def _send(self, op: str, key: str, query: str, headers: dict[str, str], body: bytes):
        """One signed PUT for ``key``; returns the response, raises errors.* for
        anything but 200.

        Each body carries one check the destination verifies: over HTTPS, Content-MD5
        (and the payload goes unsigned); over plain HTTP, the signed SHA-256 (a mismatch
        is refused as XAmzContentSHA256Mismatch), as botocore does it. Content-MD5 is
        added anyway where a provider demands it: a write carrying object-lock
        settings, and anything sent to AWS, which wants it for every upload into an
        object-locked bucket."""
        if self._needs_md5(headers):
            headers = {**headers, "Content-MD5": _md5_b64(body)}
        response = self._transport.request(op, key, "PUT", object_path(self._bucket_path, key, query),
                                           headers=headers, body=body)
        if response.status != 200:
            raise self._transport.error(op, key, response)
        if not response.headers.get("ETag"):
            # S3 answers every upload with the ETag it stored; a 200 without one (a captive
            # portal's page, say) stored nothing.
            raise TransientError(self.side, op, key, f"{self.endpoint} answered 200 without an ETag: not an S3 answer")
        return response

    def _tags_unsupported(self, error: StoreError) -> None:
        with self._lock:
            if self.can.tagging:
                logger.warning("destination does not support object tags ({}); replicating without them",
                               error.code)
            self.can.tagging = False

    def put(self, key: str, data: bytes, src: SourceObject, tags: dict[str, str] | None) -> None:
        def send(lock: ObjectLock) -> None:
            self._without_tags_if_unsupported(
                lambda tagging: self._send("put", key, "", self._object_headers(src, tagging, lock), data), tags)

        self._without_lock_if_refused(key, src, send)

    def start_multipart(self, key: str, src: SourceObject, tags: dict[str, str] | None) -> str:
        def send(lock: ObjectLock) -> str:
            return self._without_tags_if_unsupported(
                lambda tagging: self._start_upload(key, self._object_headers(src, tagging, lock)), tags)

        return self._without_lock_if_refused(key, src, send)

    def _start_upload(self, key: str, headers: dict[str, str]) -> str:
        response = self._transport.request("start multipart", key, "POST",
                                           object_path(self._bucket_path, key, "?uploads="), headers=headers,
                                           body=b"")
        if response.status != 200:
            raise self._transport.error("start multipart", key, response)
        try:
            return answers.upload_id(response.data)
        except answers.MalformedAnswer as exc:
            raise TransientError(self.side, "start multipart", key, f"{self.endpoint}: {exc}") from exc

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        query = f"?partNumber={number}&uploadId={quote(upload_id, safe='-_.~')}"
        return self._send("put part", key, query, dict(self._write.customer), data).headers["ETag"]

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        self._call("complete multipart", key, self.client.complete_multipart_upload, Key=key, UploadId=upload_id,
                   MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]},
                   **self._write.customer_params)

    def abort_multipart(self, key: str, upload_id: str) -> bool:
        try:
            self._call("abort multipart", key, self.client.abort_multipart_upload, Key=key, UploadId=upload_id)
        except NotFound:
            return False  # NoSuchUpload: completed or aborted already
        return True

    def put_tags(self, key: str, tags: dict[str, str]) -> None:
        if not self.can.tagging:
            return
        try:
            if tags:
                self._call("put tags", key, self.client.put_object_tagging, Key=key,
                           Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})
            else:
                self._call("delete tags", key, self.client.delete_object_tagging, Key=key)
        except PermanentError as error:
            if error.code not in _UNSUPPORTED:
                raise
            self.can.tagging = False

    def delete_many(self, keys: list[str]) -> dict[str, str]:
        if not keys:
            return {}
        # DeleteObjects carries its keys in XML 1.0, which can't hold most C0 controls:
        # MinIO answers MalformedXML and moto a 500, for the whole batch. Such keys are
        # deleted one by one (their names travel in the URL).
        batch = [key for key in keys if not _XML_UNSAFE.search(key)]
        singles = [key for key in keys if _XML_UNSAFE.search(key)]
        failed: dict[str, str] = {}
        if self.can.batch_delete and batch:
            try:
                result = self._call("delete", f"{len(batch)} objects", self.client.delete_objects,
                                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            except PermanentError as error:
                if error.code not in _UNSUPPORTED:
                    raise
                logger.warning("destination has no batch delete ({}); deleting one at a time", error.code)
                self.can.batch_delete = False
            else:
                failed = {e["Key"]: e.get("Code", "error") for e in result.get("Errors", ())}
                batch = []
        for key in batch + singles:
            try:
                self._call("delete", key, self.client.delete_object, Key=key)
            except (PermanentError, NotFound) as error:
                if not isinstance(error, NotFound):
                    failed[key] = error.code or str(error)
        return failed
