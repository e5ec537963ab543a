"""PURE: parse one ListObjectsV2 response page, fast.

Listing is the whole cost of an in-sync reconcile, and the SDKs' generic parsers
spend most of it building objects we don't need (profiled at 100,000 keys: minio-py
6.0 s and botocore 8.4 s of CPU, against 1.8 s for the raw requests). Both adapters
fetch the raw XML page instead and hand it here: one ElementTree parse, four fields
per entry, nothing else.

Pages are requested with ``encoding-type=url`` (keys are percent-encoded, so odd
bytes survive XML) and decoded with ``unquote_plus``, as minio-py and botocore do.
Pagination uses ``start-after`` with the last key rather than continuation tokens:
it works the same on every provider and is what lets a failed listing resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import unquote_plus
from xml.etree import ElementTree

from ..errors import TransientError
from ..model import ObjectInfo

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_CONTENTS = _NS + "Contents"
_KEY, _SIZE, _ETAG = _NS + "Key", _NS + "Size", _NS + "ETag"
_TRUNCATED = _NS + "IsTruncated"
_ENCODING = _NS + "EncodingType"


class MalformedPage(ValueError):
    pass


def parse_page(body: bytes) -> tuple[list[ObjectInfo], bool]:
    """The page's objects, in the order given, and whether more pages follow."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise MalformedPage(f"listing is not XML: {exc}") from exc
    if not root.tag.startswith(_NS):  # some providers omit the namespace
        return _parse_without_namespace(root)
    encoded = (root.findtext(_ENCODING) or "").lower() == "url"
    items: list[ObjectInfo] = []
    append = items.append
    for contents in root.iterfind(_CONTENTS):
        key = size = etag = None
        for child in contents:
            tag = child.tag
            if tag == _KEY:
                key = child.text or ""
            elif tag == _SIZE:
                size = child.text
            elif tag == _ETAG:
                etag = child.text
        if key is None:
            raise MalformedPage("listing entry without a Key")
        append(ObjectInfo(unquote_plus(key) if encoded else key, int(size or 0),
                          (etag or "").strip('"').lower()))
    return items, (root.findtext(_TRUNCATED) or "").strip().lower() == "true"


def _parse_without_namespace(root) -> tuple[list[ObjectInfo], bool]:
    encoded = (root.findtext("EncodingType") or "").lower() == "url"
    items = []
    for contents in root.iterfind("Contents"):
        key = contents.findtext("Key")
        if key is None:
            raise MalformedPage("listing entry without a Key")
        items.append(ObjectInfo(unquote_plus(key) if encoded else key, int(contents.findtext("Size") or 0),
                                (contents.findtext("ETag") or "").strip('"').lower()))
    return items, (root.findtext("IsTruncated") or "").strip().lower() == "true"


def query(start_after: str | None, max_keys: int = 1000) -> dict[str, str]:
    """The query parameters of one page."""
    params = {"list-type": "2", "max-keys": str(max_keys), "encoding-type": "url"}
    if start_after:
        params["start-after"] = start_after
    return params


def paginate(side: str, fetch: Callable[[str | None], bytes], start_after: str | None) -> Iterator[ObjectInfo]:
    """Every object after ``start_after``, page by page. ``fetch(start_after)`` returns
    one raw page (raising errors.* itself); an unreadable page is a transient error,
    never an empty listing: an empty listing would plan deletes."""
    while True:
        body = fetch(start_after)
        try:
            items, truncated = parse_page(body)
        except MalformedPage as exc:
            raise TransientError(side, "list", start_after, str(exc)) from exc
        yield from items
        if not truncated:
            return
        if not items:
            raise TransientError(side, "list", start_after, "truncated listing page with no entries")
        start_after = items[-1].key
