"""PURE: prove that an S3 answer is the one that was asked for, before anything uses it.

A 200 is not proof. A captive portal or a misrouted load balancer answers 200 with an
HTML page; some providers send an S3 ``<Error>`` document with status 200 (S3 itself
does for CopyObject and CompleteMultipartUpload). An SDK parses either into an empty
result: no tags (so the destination's would be removed), no failed deletes (so they
would be counted done), a completed upload that never completed. So every answer
whose content replicator relies on is checked here first, and anything else is a
``MalformedAnswer``, which the adapters raise as a ``TransientError``: retried like a
failed request, and counted as a failure if it persists (a failure makes a reconcile
dirty, and a dirty reconcile deletes nothing).

listing.py proves listing pages the same way, with more to check.
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.etree import ElementTree


class MalformedAnswer(ValueError):
    """The answer is not the one that was asked for."""


def local_name(tag: str) -> str:
    """``{namespace}Name`` -> ``Name``: providers differ on the namespace."""
    return tag.rsplit("}", 1)[-1]


def document(body: bytes, expected: str) -> ElementTree.Element:
    """The root of ``body``, which must be an ``expected`` document."""
    root = _parse(body, "the answer is not XML")
    name = local_name(root.tag)
    if name != expected:
        raise MalformedAnswer(f"the answer is not a <{expected}> document (root element <{name}>)")
    return root


def _parse(body: bytes, not_xml: str) -> ElementTree.Element:
    """The root of ``body``; never an S3 error document."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise MalformedAnswer(f"{not_xml} ({len(body)} bytes)") from exc
    if local_name(root.tag) == "Error":
        code = _text(root, "Code") or "no code"
        message = (_text(root, "Message") or "")[:200]
        raise MalformedAnswer(f"the answer is an S3 error document: {code}" + (f": {message}" if message else ""))
    return root


def _text(element: ElementTree.Element, name: str) -> str | None:
    """The text of ``element``'s child ``name``, in whatever namespace it is."""
    for child in element:
        if local_name(child.tag) == name:
            return child.text or ""
    return None


def _children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [child for child in element if local_name(child.tag) == name]


def tag_set(body: bytes) -> dict[str, str]:
    """A GetObjectTagging answer's tags. A Tag without its Key or Value is malformed."""
    root = document(body, "Tagging")
    tags: dict[str, str] = {}
    for tag_set_element in _children(root, "TagSet"):
        for tag in _children(tag_set_element, "Tag"):
            key, value = _text(tag, "Key"), _text(tag, "Value")
            if key is None or value is None:
                raise MalformedAnswer("a tag without its Key or Value")
            tags[key] = value
    return tags


def upload_id(body: bytes) -> str:
    """A CreateMultipartUpload answer's UploadId."""
    root = document(body, "InitiateMultipartUploadResult")
    found = (_text(root, "UploadId") or "").strip()
    if not found:
        raise MalformedAnswer("the InitiateMultipartUploadResult has no UploadId")
    return found


def location_constraint(body: bytes) -> str:
    """A GetBucketLocation answer's region; an empty one is us-east-1, as S3 defines it."""
    root = document(body, "LocationConstraint")
    return (root.text or "").strip() or "us-east-1"


def error_region(body: bytes) -> str | None:
    """The <Region> an S3 error document names (AuthorizationHeaderMalformed,
    PermanentRedirect), if it is one and names one."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None
    if local_name(root.tag) != "Error":
        return None
    return (_text(root, "Region") or "").strip() or None


def object_parts(body: bytes) -> tuple[str, list[tuple[int, int]], int | None]:
    """A GetObjectAttributes answer asked for ObjectParts: the object's ETag, its parts
    on this page as (number, size), and the marker of the next page (None on the
    last). MinIO names the root ``getObjectAttributesResponse``, AWS
    ``GetObjectAttributesResponse``."""
    root = _parse(body, "the answer is not XML")
    if local_name(root.tag).lower() != "getobjectattributesresponse":
        raise MalformedAnswer(f"the answer is not a <GetObjectAttributesResponse> (root <{local_name(root.tag)}>)")
    etag = (_text(root, "ETag") or "").strip('"').lower()
    if not etag:
        raise MalformedAnswer("the object's attributes have no ETag")
    found = _children(root, "ObjectParts")
    if not found:
        return etag, [], None
    [objects] = found
    parts = []
    for part in _children(objects, "Part"):
        try:
            parts.append((int(_text(part, "PartNumber") or ""), int(_text(part, "Size") or "")))
        except ValueError as exc:
            raise MalformedAnswer("a part without a number or a size") from exc
    truncated = (_text(objects, "IsTruncated") or "").strip().lower() == "true"
    marker = _text(objects, "NextPartNumberMarker")
    if not truncated:
        return etag, parts, None
    if marker is None or not marker.strip().isdigit():
        raise MalformedAnswer("a truncated list of parts without its NextPartNumberMarker")
    return etag, parts, int(marker)


def no_document(body: bytes) -> None:
    """An answer that carries no document on success (PutObjectTagging, DeleteObject,
    …). Some providers send one anyway, so any XML but an error document or an HTML
    page passes."""
    if not body.strip():
        return
    root = _parse(body, "the answer carries a body that is not S3's")
    if local_name(root.tag).lower() == "html":
        raise MalformedAnswer("the answer is an HTML page, not S3's")


# botocore operation -> (the document its 2xx answer is, the fields it must have).
# Operations answered with no document are in BODILESS.
DOCUMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "CreateMultipartUpload": ("InitiateMultipartUploadResult", ("UploadId",)),
    "CompleteMultipartUpload": ("CompleteMultipartUploadResult", ("ETag",)),
    "DeleteObjects": ("DeleteResult", ()),
    "GetObjectLockConfiguration": ("ObjectLockConfiguration", ()),
    "GetObjectTagging": ("Tagging", ()),
}
BODILESS = frozenset({
    "HeadBucket", "HeadObject", "CreateBucket", "PutObjectTagging", "DeleteObjectTagging", "PutObjectRetention",
    "PutObjectLegalHold", "AbortMultipartUpload", "DeleteObject",
})
# Answers that always carry these headers on success; one without is not S3's.
REQUIRED_HEADERS = {"HeadObject": ("ETag",)}


def prove(operation: str, headers: Mapping[str, str], body: bytes) -> None:
    """Raise MalformedAnswer unless ``body`` and ``headers`` are what a successful
    ``operation`` answers. Operations not named here pass unchecked."""
    for header in REQUIRED_HEADERS.get(operation, ()):
        if not any(name.lower() == header.lower() for name in headers):
            raise MalformedAnswer(f"the answer has no {header} header: not an S3 answer")
    if operation in BODILESS:
        no_document(body)
        return
    if operation not in DOCUMENTS:
        return
    expected, fields = DOCUMENTS[operation]
    root = document(body, expected)
    for name in fields:
        if not _text(root, name):
            raise MalformedAnswer(f"the {expected} has no {name}")
    if operation == "DeleteObjects":
        for error in _children(root, "Error"):
            if not _text(error, "Key"):
                raise MalformedAnswer("the DeleteResult names an error without its Key")
