"""The raw ListObjectsV2 page parser both adapters use."""

import pytest

from replicator.errors import TransientError
from replicator.model import ObjectInfo
from replicator.stores.listing import MalformedPage, Page, PageRequest, pages, parse, parse_page, query

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def page(entries: str, truncated: bool = False, encoding: str = "url", ns: str = NS) -> bytes:
    enc = f"<EncodingType>{encoding}</EncodingType>" if encoding else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult {ns}><Name>b</Name>{enc}'
            f"<IsTruncated>{str(truncated).lower()}</IsTruncated>{entries}</ListBucketResult>").encode()


def entry(key: str, size: int = 1, etag: str = "&quot;ABC&quot;") -> str:
    return (f"<Contents><Key>{key}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
            f"<ETag>{etag}</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>")


@pytest.mark.parametrize(("encoded", "key"), [
    ("plain", "plain"),
    ("with+space", "with space"),
    ("a%2Bb", "a+b"),
    ("100%25", "100%"),
    ("q%3F%23", "q?#"),
    ("%C3%BCn%C3%AF", "ünï"),
    ("dir%2F", "dir/"),
    ("a%2F%2Fb", "a//b"),
])
def test_url_encoded_keys_are_decoded_like_the_sdks(encoded, key):
    items, _ = parse_page(page(entry(encoded)))
    assert items == [ObjectInfo(key, 1, "abc")]


def test_without_url_encoding_keys_are_taken_verbatim():
    items, _ = parse_page(page(entry("a+b"), encoding=""))
    assert items[0].key == "a+b"


def test_sizes_etags_and_truncation():
    items, truncated = parse_page(page(entry("a", 0, "&quot;d41d8cd98f00b204e9800998ecf8427e&quot;")
                                       + entry("b", 12345, "&quot;0F-3&quot;"), truncated=True))
    assert items == [ObjectInfo("a", 0, "d41d8cd98f00b204e9800998ecf8427e"), ObjectInfo("b", 12345, "0f-3")]
    assert truncated is True


def test_empty_page():
    assert parse_page(page("")) == ([], False)


def test_a_provider_without_the_namespace_is_understood():
    items, truncated = parse_page(page(entry("x%20y"), ns=""))
    assert (items, truncated) == ([ObjectInfo("x y", 1, "abc")], False)


@pytest.mark.parametrize("body", [b"not xml", page("<Contents><Size>1</Size></Contents>")])
def test_malformed_pages_are_errors_not_empty_listings(body):
    # An unreadable page must never look like "no objects": that would plan deletes.
    with pytest.raises(MalformedPage):
        parse_page(body)


def test_query_paginates_by_start_after():
    assert query(None) == {"list-type": "2", "max-keys": "1000", "encoding-type": "url"}
    assert query("k/1")["start-after"] == "k/1"


def test_query_of_a_delimited_continuation_page():
    request = PageRequest(prefix="photos/", delimiter="/", token="opaque+token")
    assert request.query() == {"list-type": "2", "max-keys": "1000", "encoding-type": "url",
                               "prefix": "photos/", "delimiter": "/", "continuation-token": "opaque+token"}
    assert request.subject == "photos/"
    assert PageRequest("photos/a", "photos/").subject == "photos/a"


def prefix_entry(prefix: str) -> str:
    return f"<CommonPrefixes><Prefix>{prefix}</Prefix></CommonPrefixes>"


@pytest.mark.parametrize("ns", [NS, ""])
def test_common_prefixes_and_the_continuation_token_are_read(ns):
    body = page(entry("top") + prefix_entry("a%2F") + prefix_entry("%C3%A9+x%2F")
                + "<NextContinuationToken>tok/1=</NextContinuationToken>", truncated=True, ns=ns)
    got = parse(body)
    assert got == Page([ObjectInfo("top", 1, "abc")], True, ["a/", "é x/"], "tok/1=")


def test_a_page_without_prefixes_or_token():
    assert parse(page(entry("a"))) == Page([ObjectInfo("a", 1, "abc")], False, [], None)


def test_a_common_prefix_without_its_prefix_is_malformed():
    with pytest.raises(MalformedPage):
        parse(page("<CommonPrefixes></CommonPrefixes>"))


def test_pages_follow_start_after_and_an_unreadable_page_is_a_transient_error():
    bodies = iter([page(entry("p/a") + entry("p/b"), truncated=True), page(entry("p/c")), b"<oops"])
    requests = []

    def fetch(request):
        requests.append(request)
        return next(bodies)

    assert [[o.key for o in items] for items in pages("source", fetch, None, "p/")] == [["p/a", "p/b"], ["p/c"]]
    assert requests == [PageRequest(None, "p/"), PageRequest("p/b", "p/")]
    with pytest.raises(TransientError, match="source: list x: listing is not XML"):
        list(pages("source", fetch, "x"))


def test_a_truncated_page_without_entries_is_an_error_not_the_end():
    with pytest.raises(TransientError, match="truncated listing page with no entries"):
        list(pages("destination", lambda request: page("", truncated=True), None))
