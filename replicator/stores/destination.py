"""Any S3-compatible destination, through boto3. Maps botocore exceptions into errors.*."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    SSLError,
)
from loguru import logger
from minio.credentials import Credentials as MinioCredentials
from urllib3 import HTTPHeaderDict
from urllib3.exceptions import HTTPError as Urllib3Error

from ..config import Settings
from ..drift import recorded_etag
from ..errors import FatalError, NotFound, PermanentError, StoreError, TransientError, classify, parse_retry_after
from ..model import NO_LOCK, SOURCE_ETAG_META, ObjectInfo, ObjectLock, SourceObject
from . import answers, listing, parallel_listing
from .http_client import HttpClient
from .source import describe
from .transport import map_transport_error, object_path, pool_manager, raw_error, signed_request, tls_failure

# SourceObject.headers name -> boto3 parameter (CreateMultipartUpload still goes through boto3).
_HEADER_PARAMS = {
    "Cache-Control": "CacheControl",
    "Content-Disposition": "ContentDisposition",
    "Content-Encoding": "ContentEncoding",
    "Content-Language": "ContentLanguage",
    "Expires": "Expires",
}
_UNSUPPORTED = frozenset({"NotImplemented", "MethodNotAllowed", "NotSupported", "XNotImplemented"})

# What XML 1.0 can't carry: every C0 control but tab, newline and carriage return.
_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")

# A retention ending sooner than this is not sent with a copy. S3 refuses a retain-until
# date in the past with InvalidRequest, the very code it gives a bucket without object
# lock, and it tolerates 15 minutes of clock skew between client and server. A retention
# that ends within that window protects nothing worth a refused write.
RETENTION_MARGIN = 15 * 60
# How a destination refuses the lock settings of a write: a bucket without object lock
# (InvalidRequest "Bucket is missing ObjectLockConfiguration", from AWS, MinIO and moto
# alike), credentials without s3:PutObjectRetention or s3:PutObjectLegalHold
# (AccessDenied), a provider without object lock at all.
_LOCK_REFUSED = frozenset({"InvalidRequest", "InvalidArgument", "AccessDenied"}) | _UNSUPPORTED

T = TypeVar("T")
# hashlib objects by algorithm name ("sha256", "md5"), fed a body as it was received.
Digests = dict[str, Any]


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _etag(value: str | None) -> str:
    return (value or "").strip('"').lower()


def sendable_lock(lock: ObjectLock, now: float) -> ObjectLock:
    """PURE: what of ``lock`` a write should carry at ``now`` (epoch seconds): the legal
    hold when it is on, and the retention unless it ends within RETENTION_MARGIN."""
    if lock.retain_until is not None and lock.retain_until.timestamp() - now < RETENTION_MARGIN:
        lock = ObjectLock(legal_hold=lock.legal_hold)
    return lock if lock else NO_LOCK


def iso8601(when: datetime) -> str:
    """``2026-11-27T21:01:23.000Z``: the form S3 documents for a retain-until date."""
    utc = when.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def lock_headers(lock: ObjectLock) -> dict[str, str]:
    """PURE: the HTTP headers that give an object written by PutObject or
    CreateMultipartUpload the settings ``lock``: the raw-request twin of the boto3
    parameters ``_object_params`` adds. Pass it ``S3Destination.lock_for(key, src)``,
    which has already dropped what must not be sent."""
    headers = {}
    if lock.mode is not None and lock.retain_until is not None:
        headers["x-amz-object-lock-mode"] = lock.mode
        headers["x-amz-object-lock-retain-until-date"] = iso8601(lock.retain_until)
    if lock.legal_hold:
        headers["x-amz-object-lock-legal-hold"] = "ON"
    return headers


def _lock_params(lock: ObjectLock) -> dict:
    params: dict = {}
    if lock.mode is not None and lock.retain_until is not None:
        params.update(ObjectLockMode=lock.mode, ObjectLockRetainUntilDate=lock.retain_until)
    if lock.legal_hold:
        params["ObjectLockLegalHoldStatus"] = "ON"
    return params


def _server_message(error: StoreError) -> str:
    """The server's own words for an error ("Bucket is missing ObjectLockConfiguration"), if any."""
    message = getattr(error, "server_message", None)  # a raw request's error (transport.raw_error)
    response = getattr(error.__cause__, "response", None)  # a boto3 call's
    if message is None and isinstance(response, dict):
        message = response.get("Error", {}).get("Message")
    return f": {message}" if message else ""


class UnprovenAnswer(BotoCoreError):
    """A 2xx answer to a boto3 call that is not what the call answers (answers.py)."""

    fmt = "{detail}"


def _prove_answer(operation_model, response_dict, **kwargs) -> None:
    """botocore's before-parse hook: an answer botocore would parse into an empty result
    (an HTML page at 200, an error document at 200) is refused before it can be."""
    body = response_dict.get("body")
    if 200 <= response_dict.get("status_code", 0) < 300 and isinstance(body, bytes):
        try:
            answers.prove(operation_model.name, response_dict.get("headers") or {}, body)
        except answers.MalformedAnswer as exc:
            raise UnprovenAnswer(detail=str(exc)) from exc


def client_config(settings: Settings) -> Config:
    aws = settings.dest_endpoint.is_aws
    return Config(
        region_name=settings.dest_region,
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
    )


class S3Destination:
    side = "destination"

    def __init__(self, settings: Settings):
        self.bucket = settings.dest_bucket
        self.region = settings.dest_region
        endpoint = settings.dest_endpoint
        self.endpoint = endpoint.url
        # The bare global endpoint means "AWS, whichever region": let botocore pick the
        # regional endpoint, as a user of the established sidecar would expect.
        endpoint_url = None if endpoint.host == "s3.amazonaws.com" and endpoint.secure else endpoint.url
        session = boto3.session.Session(
            aws_access_key_id=settings.dest_access_key.reveal(),
            aws_secret_access_key=settings.dest_secret_key.reveal(),
            region_name=settings.dest_region,
        )
        verify: bool | str = settings.dest_ca_bundle or settings.dest_verify_tls
        self.client = session.client("s3", endpoint_url=endpoint_url, verify=verify, config=client_config(settings))
        self.client.meta.events.register("before-parse.s3.*", _prove_answer)
        self.client.meta.events.register("before-sign.s3.ListObjectsV2", self._ask_for_metadata)
        # The listings' pool (boto3 keeps its own): one connection per prefix listed at once.
        self._http = pool_manager(settings, verify=settings.dest_verify_tls, ca_bundle=settings.dest_ca_bundle,
                                  read_timeout=settings.read_timeout, maxsize=settings.list_concurrency + 2)
        # The data path (PutObject, UploadPart) is sent as raw signed requests
        # (transport.signed_request, http_client): botocore's per-call machinery (endpoint rules
        # resolved per key, event hooks, serialisers) cost 2.5-3.4 ms of CPU per small
        # PUT. The bucket's base URL comes from botocore, so addressing (virtual or path
        # style, regional endpoints, dotted bucket names) follows its rules.
        bucket_url = urlsplit(self.client.generate_presigned_url("head_bucket", Params={"Bucket": self.bucket}))
        self._origin = f"{bucket_url.scheme}://{bucket_url.netloc}"
        self._secure = bucket_url.scheme == "https"
        self._aws = endpoint.is_aws
        self._bucket_path = bucket_url.path.rstrip("/")  # "/bucket" (path style) or "" (virtual)
        self._objects = HttpClient(self._origin, connect_timeout=settings.connect_timeout,
                                   read_timeout=settings.read_timeout, verify=settings.dest_verify_tls,
                                   ca_bundle=settings.dest_ca_bundle,
                                   maxsize=settings.copy_connections)
        self._credentials = MinioCredentials(settings.dest_access_key.reveal(), settings.dest_secret_key.reveal())
        self.list_concurrency = settings.list_concurrency
        self.list_page_size = settings.list_page_size
        # MinIO lists each object's attributes and tags when asked (metadata=true), so a
        # reconcile sees a metadata rewrite over the same bytes at no extra request.
        # Learnt in check() from the bucket's HEAD ("Server: MinIO").
        self.lists_metadata = False
        self._list_metadata = settings.list_metadata  # asked for; cleared once found impossible
        self._tagging = True  # cleared once the provider says it doesn't do tags
        self._batch_delete = True
        # Whether the bucket takes object lock settings: None until check() asks it, or
        # until a write carrying them is refused. Decided once per process; False means
        # copies go without retention and legal holds.
        self._object_lock: bool | None = None
        self._object_lock_cause = ""  # why it is False, for the one warning
        self._object_lock_warned = False
        self._lock = threading.Lock()

    # -- error mapping ---------------------------------------------------------

    def _map(self, exc: Exception, op: str, key: str | None, *, bucket_op: bool = False) -> StoreError:
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            meta = exc.response.get("ResponseMetadata", {})
            headers = meta.get("HTTPHeaders", {})
            code = error.get("Code")
            status = meta.get("HTTPStatusCode")
            if code and code.isdigit():  # HEAD responses have no body: botocore uses the status
                code = {"404": "NotFound", "403": "AccessDenied", "412": "PreconditionFailed"}.get(code, None)
            return classify(self.side, op, key, code, status, bucket_op=bucket_op,
                            retry_after=parse_retry_after(headers.get("retry-after")))
        if isinstance(exc, UnprovenAnswer):
            return TransientError(self.side, op, key, f"{self.endpoint}: {exc}")
        if isinstance(exc, SSLError):
            return tls_failure(self.side, op, key, self.endpoint, exc)
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
            return TransientError(self.side, op, key, f"cannot connect to {self.endpoint}: {type(exc).__name__}")
        if isinstance(exc, (ReadTimeoutError, ConnectionClosedError)):
            return TransientError(self.side, op, key, f"{self.endpoint}: {type(exc).__name__}")
        if isinstance(exc, NoCredentialsError):
            return FatalError(self.side, op, key, "no credentials")
        if isinstance(exc, BotoCoreError):
            return TransientError(self.side, op, key, f"{self.endpoint}: {type(exc).__name__}")
        raise exc

    def _call(self, op: str, key: str | None, fn, /, *, bucket_op: bool = False, **kwargs):
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except Exception as exc:
            raise self._map(exc, op, key, bucket_op=bucket_op) from exc

    # -- DestinationStore ----------------------------------------------------------

    def check(self, create: bool) -> None:
        try:
            self._learn_server(self.client.head_bucket(Bucket=self.bucket))
        except ClientError as exc:
            error = self._map(exc, "check bucket", self.bucket, bucket_op=True)
            if error.code not in ("NotFound", "NoSuchBucket") or not create:
                if error.code in ("NotFound", "NoSuchBucket"):
                    raise FatalError(self.side, "check bucket", self.bucket,
                                     f"bucket does not exist at {self.endpoint}") from exc
                raise error from exc
        except Exception as exc:
            raise self._map(exc, "check bucket", self.bucket, bucket_op=True) from exc
        else:
            self._probe_object_lock()
            return
        logger.info("{}: destination bucket missing; creating it in {}", self.bucket, self.region)
        kwargs = {}
        if self.region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._call("create bucket", self.bucket, self.client.create_bucket, bucket_op=True, **kwargs)
        except StoreError as error:
            if error.code not in ("BucketAlreadyOwnedByYou",):
                raise
        self._probe_object_lock()

    def _ask_for_metadata(self, request, **kwargs) -> None:
        """botocore's before-sign hook on listings: add MinIO's metadata=true, signed
        with the rest of the query, where the destination is MinIO."""
        if self.lists_metadata:
            request.url += ("&" if "?" in request.url else "?") + "metadata=true"

    def _learn_server(self, head: dict) -> None:
        if not self._list_metadata or self.lists_metadata:
            return
        server = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("server") or ""
        self.lists_metadata = server.lower().startswith("minio")
        if not self.lists_metadata:
            self._list_metadata = False  # not asked again: the warning is said once
            logger.warning("S3_SYNC_LIST_METADATA=true, but the destination ({}) is not MinIO and can't list "
                               "metadata; reconciles compare sizes and ETags, and the metadata sweep the rest",
                               server or "unnamed server")

    def _probe_object_lock(self) -> None:
        """Ask the bucket once whether it has object lock. Only a clear "no" decides
        it: a provider or a policy that won't say (AccessDenied, NotImplemented)
        leaves it to the first write that carries lock settings. Never fails the check."""
        if self._object_lock is not None:
            return
        try:
            answer = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "ObjectLockConfigurationNotFoundError":
                self._object_lock = False
                self._object_lock_cause = f"destination bucket {self.bucket} has no object lock ({code})"
            else:
                logger.debug("{}: object lock configuration unknown ({}); the first locked object will tell",
                             self.bucket, code)
            return
        except BotoCoreError as exc:
            logger.debug("{}: object lock configuration unknown ({}); the first locked object will tell",
                         self.bucket, type(exc).__name__)
            return
        enabled = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        self._object_lock = enabled
        if not enabled:
            self._object_lock_cause = f"destination bucket {self.bucket} has object lock disabled"

    def list_from(self, start_after: str | None) -> Iterator[ObjectInfo]:
        """The listing; with each object's attributes and tags where the destination can
        list them (``lists_metadata``)."""
        return parallel_listing.walk(listing.Lister(self.side, self.bucket, self._list_page), start_after,
                                     self.list_concurrency)

    def _list_page(self, request: listing.PageRequest) -> bytes:
        # botocore signs the page request (presigned, so every auth and addressing rule
        # stays botocore's); we fetch and parse it raw: botocore's generic parser is
        # most of a no-op reconcile's CPU (see listing.py).
        params = {"Bucket": self.bucket, "MaxKeys": self.list_page_size, "EncodingType": "url"}
        for name, value in (("StartAfter", request.start_after), ("Prefix", request.prefix),
                            ("Delimiter", request.delimiter), ("ContinuationToken", request.token)):
            if value:
                params[name] = value
        url = self.client.generate_presigned_url("list_objects_v2", Params=params, ExpiresIn=900)
        try:
            response = self._http.request("GET", url)
        except (Urllib3Error, OSError) as exc:
            raise map_transport_error(self.side, "list", request.subject, self.endpoint, exc) from exc
        if response.status != 200:
            raise raw_error(self.side, "list", request.subject, response, bucket_op=True)
        return response.data

    def head_source_etag(self, key: str) -> str | None:
        copy = self.stat(key)
        return recorded_etag(copy) if copy is not None else None

    def stat(self, key: str) -> SourceObject | None:
        try:
            head = self._call("head", key, self.client.head_object, Key=key)
        except NotFound:
            return None
        # The raw headers, read as the source's are: one rule (drift.py) compares both.
        return describe(key, HTTPHeaderDict(head["ResponseMetadata"]["HTTPHeaders"]))

    def get_tags(self, key: str) -> dict[str, str]:
        if not self._tagging:
            return {}
        result = self._call("get tags", key, self.client.get_object_tagging, Key=key)
        return {tag["Key"]: tag["Value"] for tag in result.get("TagSet", ())}

    def mirrored_lock(self, src: SourceObject) -> ObjectLock | None:
        if self._object_lock is False:
            return None
        return sendable_lock(src.lock, time.time())

    def _object_params(self, key: str, src: SourceObject, tags: dict[str, str] | None,
                       lock: ObjectLock = NO_LOCK) -> dict:
        params: dict = {"Key": key, "Metadata": {**src.metadata, SOURCE_ETAG_META: src.etag}}
        if src.content_type:
            params["ContentType"] = src.content_type
        for header, param in _HEADER_PARAMS.items():
            if header in src.headers:
                params[param] = src.headers[header]
        if tags and self._tagging:
            params["Tagging"] = urlencode(tags)
        params.update(_lock_params(lock))
        return params

    # -- object lock ---------------------------------------------------------------

    def lock_for(self, key: str, src: SourceObject) -> ObjectLock:
        """The lock settings a write of ``key`` should carry: the source's, minus a
        retention about to end; none once the bucket turned out not to take them."""
        lock = sendable_lock(src.lock, time.time())
        if lock and self._object_lock is False:
            self._warn_no_object_lock(key)
            return NO_LOCK
        return lock

    def _warn_no_object_lock(self, key: str) -> None:
        with self._lock:
            if self._object_lock_warned:
                return
            self._object_lock_warned = True
        logger.warning("{}: {}; replicating without retention and legal holds from now on",
                       key, self._object_lock_cause)

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
                self._object_lock = False
                self._object_lock_cause = (f"destination bucket {self.bucket} refused the object's retention and "
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
        if self._object_lock is False:
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
            wanted = f"{lock.mode} until {iso8601(lock.retain_until)}" if lock.mode else "no retention"
            raise PermanentError(
                self.side, "put retention", key,
                f"{error.detail}{_server_message(error)}: the destination refuses {wanted} (a COMPLIANCE retention "
                "can never be shortened or removed; a GOVERNANCE one only with s3:BypassGovernanceRetention)",
                code=error.code) from error

    def put_legal_hold(self, key: str, on: bool) -> None:
        if self._object_lock is False:
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
        tagged = bool(tags) and self._tagging
        try:
            return send(tags)
        except PermanentError as error:
            if not tagged or error.code not in _UNSUPPORTED:
                raise
            self._tags_unsupported(error)
            return send(None)

    def _object_headers(self, src: SourceObject, tags: dict[str, str] | None) -> dict[str, str]:
        """_object_params as raw PutObject headers."""
        headers = {f"x-amz-meta-{name}": value for name, value in src.metadata.items()}
        headers[f"x-amz-meta-{SOURCE_ETAG_META}"] = src.etag
        if src.content_type:
            headers["Content-Type"] = src.content_type
        headers.update(src.headers)  # Cache-Control, Expires, ... verbatim, as the source sent them
        if tags and self._tagging:
            headers["x-amz-tagging"] = urlencode(tags)
        return headers

    def _needs_md5(self, headers: dict[str, str]) -> bool:
        return self._secure or self._aws or any(name.startswith("x-amz-object-lock-") for name in headers)

    def _send(self, op: str, key: str, query: str, headers: dict[str, str], body: bytes,
              digests: Digests | None = None):
        """One signed PUT for ``key`` (transport.signed_request); returns the response,
        raises errors.* for anything but 200.

        Every byte is hashed once, by whichever hash the destination verifies: over
        HTTPS the payload goes unsigned and Content-MD5 is the check; over plain HTTP
        the signed SHA-256 is (a mismatch is refused as XAmzContentSHA256Mismatch), as
        minio-py does it. Content-MD5 is added anyway where a provider demands it: a
        write carrying object-lock settings, and anything sent to AWS, which wants it
        for every upload into an object-locked bucket. ``digests`` holds those already
        taken of ``body`` while it was received (digests_for); the rest are taken here."""
        digests = digests or {}
        if self._needs_md5(headers):
            md5 = digests.get("md5")
            headers = {**headers, "Content-MD5": base64.b64encode(md5.digest()).decode() if md5 else _md5_b64(body)}
        sha256 = digests.get("sha256")
        try:
            response = signed_request(self._objects, "PUT", object_path(self._bucket_path, key, query),
                                      region=self.region, credentials=self._credentials, headers=headers, body=body,
                                      sha256=sha256.hexdigest() if sha256 else None)
            response.read()  # the (error) document; hands the connection back
        except OSError as exc:
            raise map_transport_error(self.side, op, key, self.endpoint, exc) from exc
        if response.status != 200:
            raise raw_error(self.side, op, key, response)
        if not response.headers.get("ETag"):
            # S3 answers every upload with the ETag it stored; a 200 without one (a captive
            # portal's page, say) stored nothing.
            raise TransientError(self.side, op, key, f"{self.endpoint} answered 200 without an ETag: not an S3 answer")
        return response

    def _tags_unsupported(self, error: StoreError) -> None:
        with self._lock:
            if self._tagging:
                logger.warning("destination does not support object tags ({}); replicating without them",
                               error.code)
            self._tagging = False

    def digests_for(self, key: str, src: SourceObject) -> Digests:
        """Fresh hashlib objects for the digests put() will send of ``src``'s body: to be
        fed the body while it is received, so that hashing overlaps the transfer (for a
        1 MiB object, SHA-256 is 0.6 ms here, and the body takes about as long to arrive).
        A lock refused on the way, or tags, change no digest: the body is the same."""
        wanted = {}
        if not self._secure:
            wanted["sha256"] = hashlib.sha256()
        if self._needs_md5(lock_headers(self.lock_for(key, src))):
            wanted["md5"] = hashlib.md5(usedforsecurity=False)
        return wanted

    def put(self, key: str, data: bytes, src: SourceObject, tags: dict[str, str] | None,
            digests: Digests | None = None) -> None:
        def send(lock: ObjectLock) -> None:
            self._without_tags_if_unsupported(
                lambda tagging: self._send("put", key, "", {**self._object_headers(src, tagging),
                                                            **lock_headers(lock)}, data, digests), tags)

        self._without_lock_if_refused(key, src, send)

    def start_multipart(self, key: str, src: SourceObject, tags: dict[str, str] | None) -> str:
        def send(lock: ObjectLock) -> str:
            return self._without_tags_if_unsupported(
                lambda tagging: self._call("start multipart", key, self.client.create_multipart_upload,
                                           **self._object_params(key, src, tagging, lock))["UploadId"], tags)

        return self._without_lock_if_refused(key, src, send)

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        query = f"?partNumber={number}&uploadId={quote(upload_id, safe='-_.~')}"
        return self._send("put part", key, query, {}, data).headers["ETag"]

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        self._call("complete multipart", key, self.client.complete_multipart_upload, Key=key, UploadId=upload_id,
                   MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})

    def abort_multipart(self, key: str, upload_id: str) -> bool:
        try:
            self._call("abort multipart", key, self.client.abort_multipart_upload, Key=key, UploadId=upload_id)
        except NotFound:
            return False  # NoSuchUpload: completed or aborted already
        return True

    def put_tags(self, key: str, tags: dict[str, str]) -> None:
        if not self._tagging:
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
            self._tagging = False

    def delete_many(self, keys: list[str]) -> dict[str, str]:
        if not keys:
            return {}
        # DeleteObjects carries its keys in XML 1.0, which can't hold most C0 controls:
        # MinIO answers MalformedXML and moto a 500, for the whole batch. Such keys are
        # deleted one by one (their names travel in the URL).
        batch = [key for key in keys if not _XML_UNSAFE.search(key)]
        singles = [key for key in keys if _XML_UNSAFE.search(key)]
        failed: dict[str, str] = {}
        if self._batch_delete and batch:
            try:
                result = self._call("delete", f"{len(batch)} objects", self.client.delete_objects,
                                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            except PermanentError as error:
                if error.code not in _UNSUPPORTED:
                    raise
                logger.warning("destination has no batch delete ({}); deleting one at a time", error.code)
                self._batch_delete = False
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
