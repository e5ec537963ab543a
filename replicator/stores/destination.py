"""Any S3-compatible destination, through boto3. Maps botocore exceptions into errors.*."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from urllib.parse import urlencode
from xml.etree import ElementTree

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
from urllib3.exceptions import HTTPError as Urllib3Error

from ..config import Settings
from ..errors import FatalError, NotFound, PermanentError, StoreError, TransientError, classify, parse_retry_after
from ..model import SOURCE_ETAG_META, ObjectInfo, SourceObject
from . import listing, parallel_listing
from .transport import map_transport_error, pool_manager

# SourceObject.headers name -> boto3 parameter.
_HEADER_PARAMS = {
    "Cache-Control": "CacheControl",
    "Content-Disposition": "ContentDisposition",
    "Content-Encoding": "ContentEncoding",
    "Content-Language": "ContentLanguage",
    "Expires": "Expires",
}
_UNSUPPORTED = frozenset({"NotImplemented", "MethodNotAllowed", "NotSupported", "XNotImplemented"})


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _etag(value: str | None) -> str:
    return (value or "").strip('"').lower()


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


def _no_expect_for_empty_body(request, **kwargs) -> None:
    """botocore sends ``Expect: 100-continue`` even with an empty body. A Go server
    (MinIO) then answers at once, without a 100, and botocore's handling of that
    leaves the pooled connection out of step: the *next* request on it stalls for the
    whole read timeout. Every zero-byte object (folder markers) cost a minute. With no
    body there is nothing to hold back, so the header has no use anyway."""
    if request.headers.get("Content-Length") in (b"0", "0") and "Expect" in request.headers:
        del request.headers["Expect"]


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
        self.client.meta.events.register("before-send.s3.PutObject", _no_expect_for_empty_body)
        # Listing pages only: one connection per prefix listed at once, plus the top level.
        self._http = pool_manager(settings, verify=settings.dest_verify_tls, ca_bundle=settings.dest_ca_bundle,
                                  read_timeout=settings.read_timeout, maxsize=settings.list_concurrency + 2)
        self.list_concurrency = settings.list_concurrency
        self._tagging = True  # cleared once the provider says it doesn't do tags
        self._batch_delete = True
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
        if isinstance(exc, SSLError):
            return FatalError(self.side, op, key, f"TLS handshake with {self.endpoint} failed"
                              " (check S3_SYNC_CA_BUNDLE, or the endpoint's scheme)")
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
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            error = self._map(exc, "check bucket", self.bucket, bucket_op=True)
            if error.code not in ("NotFound", "NoSuchBucket") or not create:
                if error.code in ("NotFound", "NoSuchBucket"):
                    raise FatalError(self.side, "check bucket", self.bucket,
                                     f"bucket does not exist at {self.endpoint}") from exc
                raise error from exc
        except Exception as exc:
            raise self._map(exc, "check bucket", self.bucket, bucket_op=True) from exc
        logger.info("{}: destination bucket missing; creating it in {}", self.bucket, self.region)
        kwargs = {}
        if self.region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._call("create bucket", self.bucket, self.client.create_bucket, bucket_op=True, **kwargs)
        except StoreError as error:
            if error.code not in ("BucketAlreadyOwnedByYou",):
                raise

    def list_from(self, start_after: str | None) -> Iterator[ObjectInfo]:
        return parallel_listing.walk(self.side, self._list_page, start_after, self.list_concurrency)

    def _list_page(self, request: listing.PageRequest) -> bytes:
        # botocore signs the page request (presigned, so every auth and addressing rule
        # stays botocore's); we fetch and parse it raw: botocore's generic parser is
        # most of a no-op reconcile's CPU (see listing.py).
        params = {"Bucket": self.bucket, "MaxKeys": 1000, "EncodingType": "url"}
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
            raise self._raw_error(response, "list", request.subject)
        return response.data

    def _raw_error(self, response, op: str, key: str | None) -> StoreError:
        code = None
        try:
            code = ElementTree.fromstring(response.data).findtext("Code")
        except ElementTree.ParseError:
            pass
        return classify(self.side, op, key, code, response.status, bucket_op=True,
                        retry_after=parse_retry_after(response.headers.get("Retry-After")))

    def head_source_etag(self, key: str) -> str | None:
        try:
            head = self._call("head", key, self.client.head_object, Key=key)
        except NotFound:
            return None
        return _etag(head.get("Metadata", {}).get(SOURCE_ETAG_META)) or None

    def _object_params(self, key: str, src: SourceObject, tags: dict[str, str] | None) -> dict:
        params: dict = {"Key": key, "Metadata": {**src.metadata, SOURCE_ETAG_META: src.etag}}
        if src.content_type:
            params["ContentType"] = src.content_type
        for header, param in _HEADER_PARAMS.items():
            if header in src.headers:
                params[param] = src.headers[header]
        if tags and self._tagging:
            params["Tagging"] = urlencode(tags)
        return params

    def _without_tags_if_unsupported(self, op: str, key: str, fn, params: dict):
        """Call fn; if the provider rejects tagging, warn once and go on without tags."""
        try:
            return self._call(op, key, fn, **params)
        except PermanentError as error:
            if "Tagging" not in params or error.code not in _UNSUPPORTED:
                raise
            with self._lock:
                if self._tagging:
                    logger.warning("destination does not support object tags ({}); replicating without them",
                                   error.code)
                self._tagging = False
            params = {k: v for k, v in params.items() if k != "Tagging"}
            return self._call(op, key, fn, **params)

    def put(self, key: str, data: bytes, src: SourceObject, tags: dict[str, str] | None) -> None:
        params = self._object_params(key, src, tags)
        params.update(Body=data, ContentMD5=_md5_b64(data), ContentLength=len(data))
        self._without_tags_if_unsupported("put", key, self.client.put_object, params)

    def start_multipart(self, key: str, src: SourceObject, tags: dict[str, str] | None) -> str:
        params = self._object_params(key, src, tags)
        return self._without_tags_if_unsupported(
            "start multipart", key, self.client.create_multipart_upload, params)["UploadId"]

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        result = self._call("put part", key, self.client.upload_part, Key=key, UploadId=upload_id,
                            PartNumber=number, Body=data, ContentMD5=_md5_b64(data), ContentLength=len(data))
        return result["ETag"]

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        self._call("complete multipart", key, self.client.complete_multipart_upload, Key=key, UploadId=upload_id,
                   MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self._call("abort multipart", key, self.client.abort_multipart_upload, Key=key, UploadId=upload_id)
        except NotFound:
            pass

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
        if self._batch_delete:
            try:
                result = self._call("delete", f"{len(keys)} objects", self.client.delete_objects,
                                    Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
            except PermanentError as error:
                if error.code not in _UNSUPPORTED:
                    raise
                logger.warning("destination has no batch delete ({}); deleting one at a time", error.code)
                self._batch_delete = False
            else:
                return {e["Key"]: e.get("Code", "error") for e in result.get("Errors", ())}
        failed = {}
        for key in keys:
            try:
                self._call("delete", key, self.client.delete_object, Key=key)
            except (PermanentError, NotFound) as error:
                if not isinstance(error, NotFound):
                    failed[key] = error.code or str(error)
        return failed
