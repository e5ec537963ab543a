"""PURE: the merge-join of two key-sorted listings, and the "needs a copy?" rule.

Both listings stream in; memory is O(1) in the number of objects. Each listing is
checked for strict ascending order as it goes: a merge-join over an unsorted
listing would call in-sync objects "missing" and plan deletes of objects the source
still has, so an order violation aborts the run instead.

S3 lists keys in UTF-8 byte order. Python compares ``str`` by code point, and UTF-8
preserves code-point order, so plain ``<`` is the byte order we need.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator

from .drift import listed_alike
from .errors import ListingOrderError
from .model import Action, Change, ObjectInfo


def is_multipart_etag(etag: str) -> bool:
    return "-" in etag


def compare(source: ObjectInfo, dest: ObjectInfo) -> Action:
    """Decide what an object present on both sides needs, from the listings alone.

    - Different sizes: the content differs.
    - Equal ETags: the same content (both MD5s, or the same multipart layout). An
      in-sync pair therefore costs no request beyond the listings. Where both listings
      carry attributes (MinIO on both sides), those must agree too.
    - Same size, different ETags: either the content changed (a same-size rewrite,
      which a size+mtime rule would miss) or the ETags aren't comparable (multipart
      source, SSE-KMS or a provider whose ETag isn't the MD5). Only the destination
      object's recorded source ETag can tell these apart, so the caller asks.
    """
    if source.size != dest.size:
        return Action.UPDATE
    if source.etag == dest.etag:
        # Where both listings carry attributes (MinIO's metadata=true), a rewrite of
        # Content-Type, user metadata or tags over the same bytes shows too.
        return Action.UNCHANGED if listed_alike(source.attributes, dest.attributes) else Action.UPDATE
    return Action.VERIFY


def in_sync_by_record(source: ObjectInfo, dest: ObjectInfo, recorded: str | None) -> bool:
    """Settle a pair ``compare`` left to VERIFY (same size, other ETags): in sync when
    the destination object records the source's ETag as the one it was copied from
    (``recorded``, from its HEAD) and, where both listings carry attributes, those agree.
    The one rule for the reconcile and ``verify``."""
    return recorded == source.etag and listed_alike(source.attributes, dest.attributes)


def ordered(listing: Iterable[ObjectInfo], side: str) -> Iterator[ObjectInfo]:
    """Pass a listing through, raising ListingOrderError at the first key out of order."""
    previous: str | None = None
    for item in listing:
        if previous is not None and not previous < item.key:
            raise ListingOrderError(
                side, "list", item.key,
                f"listing out of order: '{item.key}' came after '{previous}'; refusing to diff",
            )
        previous = item.key
        yield item


def plan(source: Iterable[ObjectInfo], dest: Iterable[ObjectInfo]) -> Generator[Change, None, None]:
    """Merge-join two listings into one Change per key, in key order. A generator, so
    that a caller can close it (and the listings it pulls) before the end."""
    src_it = ordered(source, "source")
    dst_it = ordered(dest, "destination")
    s = next(src_it, None)
    d = next(dst_it, None)
    while s is not None and d is not None:
        if s.key < d.key:
            yield Change(Action.COPY, s.key, source=s)
            s = next(src_it, None)
        elif d.key < s.key:
            yield Change(Action.DELETE, d.key, dest=d)
            d = next(dst_it, None)
        else:
            yield Change(compare(s, d), s.key, source=s, dest=d)
            s = next(src_it, None)
            d = next(dst_it, None)
    # One side has ended: the rest of the other is only on its side.
    while s is not None:
        yield Change(Action.COPY, s.key, source=s)
        s = next(src_it, None)
    while d is not None:
        yield Change(Action.DELETE, d.key, dest=d)
        d = next(dst_it, None)
