"""PURE: what differs between a source object and its copy, beyond the bytes.

A listing compares sizes and ETags, so a reconcile sees every change of an object's
bytes and none of these: its Content-Type and the headers a copy carries
(Cache-Control, Content-Disposition, Content-Encoding, Content-Language, Expires),
its user metadata, its tags, its retention and its legal hold. A CopyObject with
``MetadataDirective=REPLACE`` changes the first two over the same bytes; tagging and
object lock calls change the rest. Events report them, but an event can be lost.
The event workers (a change that failed and was kept) and the metadata sweep compare
both sides with this one rule, from a HEAD of each (and, for tags, both tag sets).
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl

from .model import SOURCE_ETAG_META, ObjectLock, SourceObject

ATTRIBUTES = "attributes"  # Content-Type, the copied headers and user metadata: a copy repairs them
TAGS = "tags"
RETENTION = "retention"
LEGAL_HOLD = "legal_hold"


def recorded_etag(copy: SourceObject) -> str | None:
    """The source ETag the copy records it was made from (model.SOURCE_ETAG_META)."""
    return (copy.metadata.get(SOURCE_ETAG_META) or "").strip('"').lower() or None


def same_bytes(source: SourceObject, copy: SourceObject) -> bool:
    """Whether ``copy`` was made from the bytes ``source`` has now."""
    return recorded_etag(copy) == source.etag


def differences(source: SourceObject, copy: SourceObject, *, lock: ObjectLock | None) -> frozenset[str]:
    """What of ``source`` its ``copy`` (the destination's HEAD) does not have.

    ``lock`` is the lock the copy should carry (what the destination is sent of the
    source's: ``S3Destination.lock_for``), or None where the destination takes no lock
    settings at all: then retention and legal hold are not compared, or they would
    differ for ever. Tags are compared by count here; ``tags_differ`` compares sets."""
    found = set()
    if not same_attributes(source, copy):
        found.add(ATTRIBUTES)
    if source.tag_count != copy.tag_count:
        found.add(TAGS)
    if lock is not None:
        if (lock.mode, lock.retain_until) != (copy.lock.mode, copy.lock.retain_until):
            found.add(RETENTION)
        if lock.legal_hold != copy.lock.legal_hold:
            found.add(LEGAL_HOLD)
    return frozenset(found)


def same_attributes(source: SourceObject, copy: SourceObject) -> bool:
    """Content-Type, copied headers and user metadata equal (the copy's record of the
    source's ETag aside)."""
    if (source.content_type or "") != (copy.content_type or ""):
        return False
    if {name: _header(name, value) for name, value in source.headers.items()} != \
            {name: _header(name, value) for name, value in copy.headers.items()}:
        return False
    return source.metadata == {name: value for name, value in copy.metadata.items() if name != SOURCE_ETAG_META}


def _header(name: str, value: str) -> object:
    """A header's value for comparison: an Expires date by the instant it names, as a
    provider may store the date written another way."""
    if name.lower() == "expires":
        try:
            return parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            pass
    return value.strip()


def tags_differ(source: dict[str, str], copy: dict[str, str]) -> bool:
    return source != copy


# What of MinIO's listed UserMetadata a copy carries. An allow-list, not everything
# listed: a source encrypted or in another storage class lists more, which the copy
# doesn't have, and a rule comparing it would copy such objects in every reconcile.
_LISTED_HEADERS = frozenset({"content-type", "cache-control", "content-disposition", "content-encoding",
                             "content-language", "expires"})
_MARKER = "x-amz-meta-" + SOURCE_ETAG_META


def listed_attributes(user_metadata: dict[str, str], user_tags: str | None) -> frozenset[tuple[str, str]]:
    """An object's attributes and tags as MinIO lists them with ``metadata=true``
    (``<UserMetadata>``, ``<UserTags>``), in a form two listings can compare: names
    lower-cased, the copy's record of the source ETag left out, tags decoded (MinIO
    encodes a space as ``%20`` in one place and ``+`` in another)."""
    found = {("tag:" + name, value) for name, value in parse_qsl(user_tags or "", keep_blank_values=True)}
    for name, value in user_metadata.items():
        lower = name.lower()
        if lower in _LISTED_HEADERS or (lower.startswith("x-amz-meta-") and lower != _MARKER):
            found.add((lower, value.strip()))
    return frozenset(found)


def listed_alike(source: frozenset[tuple[str, str]] | None, copy: frozenset[tuple[str, str]] | None) -> bool:
    """Whether two listings' attributes agree; True where either listing has none."""
    return source is None or copy is None or source == copy
