"""The raw ListObjectsV2 page parser both adapters use, and the proof it asks of a page:
anything but the page that was asked for is an error, never a short listing."""

import pytest

from replicator.errors import TransientError
from replicator.model import ObjectInfo
from replicator.stores.answers import MalformedAnswer
from replicator.stores.listing import Lister, Page, PageRequest, parse

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
TOP = PageRequest()


def page(entries: str, truncated: bool = False, encoding: str = "url", ns: str = NS, name: str = "b",
         token: str | None = "tok", extra: str = "") -> bytes:
    enc = f"<EncodingType>{encoding}</EncodingType>" if encoding else ""
    next_token = f"<NextContinuationToken>{token}</NextContinuationToken>" if truncated and token else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult {ns}><Name>{name}</Name>{enc}'
            f"<IsTruncated>{str(truncated).lower()}</IsTruncated>{next_token}{extra}{entries}"
            "</ListBucketResult>").encode()


def entry(key: str, size: int | str = 1, etag: str = "&quot;ABC&quot;") -> str:
    return (f"<Contents><Key>{key}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
            f"<ETag>{etag}</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>")


def prefix_entry(prefix: str) -> str:
    return f"<CommonPrefixes><Prefix>{prefix}</Prefix></CommonPrefixes>"


def keys(body: bytes, request: PageRequest = TOP, after: str | None = None) -> list[str]:
    return [item.key for item in parse(body, "b", request, after).items]


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
    assert parse(page(entry(encoded)), "b", TOP).items == [ObjectInfo(key, 1, "abc")]


def test_without_url_encoding_keys_are_taken_verbatim():
    assert keys(page(entry("a+b"), encoding="")) == ["a+b"]


def test_sizes_etags_and_truncation():
    got = parse(page(entry("a", 0, "&quot;d41d8cd98f00b204e9800998ecf8427e&quot;")
                     + entry("b", 12345, "&quot;0F-3&quot;"), truncated=True), "b", TOP)
    assert got.items == [ObjectInfo("a", 0, "d41d8cd98f00b204e9800998ecf8427e"), ObjectInfo("b", 12345, "0f-3")]
    assert (got.truncated, got.token) == (True, "tok")


def test_an_empty_last_page_is_an_empty_listing():
    assert parse(page(""), "b", TOP) == Page([], False, [], None)


def test_a_provider_without_the_namespace_is_understood():
    got = parse(page(entry("x%20y"), ns=""), "b", TOP)
    assert (got.items, got.truncated) == ([ObjectInfo("x y", 1, "abc")], False)


@pytest.mark.parametrize("ns", [NS, ""])
def test_common_prefixes_and_the_continuation_token_are_read(ns):
    body = page(entry("top") + prefix_entry("a%2F") + prefix_entry("%C3%A9+x%2F"), truncated=True, ns=ns,
                token="tok/1=")
    got = parse(body, "b", PageRequest(delimiter="/"))
    assert got == Page([ObjectInfo("top", 1, "abc")], True, ["a/", "é x/"], "tok/1=")
    assert got.last == "é x/"


def test_echoes_of_the_request_are_accepted_encoded_or_not():
    # MinIO encodes the echoed Prefix, moto too, but moto not its StartAfter (unchecked).
    request = PageRequest("a b/1", "a b/", "/")
    for prefix in ("a+b/", "a%20b/", "a b/"):
        body = page(entry("a+b%2F2"),
                    extra=f"<Prefix>{prefix}</Prefix><Delimiter>%2F</Delimiter><KeyCount>1</KeyCount>")
        assert keys(body, request) == ["a b/2"]


# --- what is not the page that was asked for -----------------------------------------------

HTML = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Welcome</body></html>"
XHTML = b"<html><head><title>Sign in</title></head><body><p>Welcome</p></body></html>"
ERROR_DOC = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
             b"<Message>We encountered an internal error.</Message></Error>")


@pytest.mark.parametrize(("body", "request_", "after", "why"), [
    (b"", TOP, None, "not XML"),
    (b"not xml", TOP, None, "not XML"),
    (HTML, TOP, None, "not a <ListBucketResult> document (root element <html>)"),
    (XHTML, TOP, None, "not a <ListBucketResult> document (root element <html>)"),
    (ERROR_DOC, TOP, None, "an S3 error document: InternalError: We encountered an internal error."),
    (ERROR_DOC.replace(b"<Error>", f"<Error {NS}>".encode()), TOP, None, "error document: InternalError"),
    (b'<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>', TOP, None,
     "root element <ListAllMyBucketsResult>"),
    (page(entry("a"), name="other"), TOP, None, "for bucket 'other', not 'b'"),
    (page(entry("a")).replace(b"<Name>b</Name>", b""), TOP, None, "names no bucket"),
    (page(entry("a")).replace(b"<IsTruncated>false</IsTruncated>", b""), TOP, None, "IsTruncated"),
    (page(entry("a")).replace(b">false<", b">maybe<"), TOP, None, "IsTruncated"),
    (page(entry("a"), truncated=True, token=None), TOP, None, "truncated page without a NextContinuationToken"),
    (page("<Contents><Size>1</Size><ETag>e</ETag></Contents>"), TOP, None, "without its Key, Size or ETag"),
    (page("<Contents><Key>a</Key><ETag>e</ETag></Contents>"), TOP, None, "without its Key, Size or ETag"),
    (page("<Contents><Key>a</Key><Size>1</Size></Contents>"), TOP, None, "without its Key, Size or ETag"),
    (page(entry("a", "-1")), TOP, None, "Size '-1'"),
    (page(entry("a", "lots")), TOP, None, "Size 'lots'"),
    (page(entry("a"), extra="<KeyCount>2</KeyCount>"), TOP, None, "KeyCount '2' but 1 entries"),
    (page(entry("b") + entry("a")), TOP, None, "key 'a' came after 'b': the page is out of order"),
    (page(entry("a") + entry("a")), TOP, None, "out of order"),
    (page(entry("a") + entry("c") + entry("b")), TOP, None, "key 'b' came after 'c'"),
    (page(entry("a")), PageRequest("a"), None, "key 'a' does not come after 'a'"),
    (page(entry("a")), PageRequest("b"), None, "does not come after 'b'"),
    (page(entry("c")), PageRequest(delimiter="/", token="t"), "d", "does not come after 'd'"),
    (page(entry("q/1")), PageRequest(prefix="p/"), None, "key 'q/1' lies outside the prefix 'p/'"),
    (page(entry("p/1"), extra="<Prefix>q/</Prefix>"), PageRequest(prefix="p/"), None, "answers Prefix 'q/'"),
    (page("", extra="<Delimiter>%2F</Delimiter>"), TOP, None, "answers Delimiter '%2F', not ''"),
    (page(prefix_entry("a%2F")), TOP, None, "common prefixes in a listing asked for without a delimiter"),
    (page(prefix_entry("b%2F") + prefix_entry("a%2F")), PageRequest(delimiter="/"), None, "prefix 'a/' came after"),
    (page(prefix_entry("q%2F")), PageRequest(prefix="p/", delimiter="/"), None, "prefix 'q/' lies outside"),
    (page(prefix_entry("p%2F")), PageRequest(prefix="p/", delimiter="/"), None, "prefix 'p/' lies outside"),
    (page("<CommonPrefixes></CommonPrefixes>"), PageRequest(delimiter="/"), None, "without its Prefix"),
])
def test_an_answer_that_is_not_the_page_asked_for_is_refused(body, request_, after, why):
    with pytest.raises(MalformedAnswer) as caught:
        parse(body, "b", request_, after)
    assert why in str(caught.value)


def test_a_prefix_the_page_starts_inside_may_be_named_again():
    # After "a/b", a server may roll "a/c" up into "a/" once more (parallel_listing).
    got = parse(page(prefix_entry("a%2F") + prefix_entry("b%2F")), "b", PageRequest("a/b", delimiter="/"))
    assert got.prefixes == ["a/", "b/"]


# --- Lister ---------------------------------------------------------------------------------

def test_pages_follow_start_after_and_an_unreadable_page_is_a_transient_error():
    bodies = iter([page(entry("p/a") + entry("p/b"), truncated=True), page(entry("p/c")), b"<oops"])
    requests = []

    def fetch(request):
        requests.append(request)
        return next(bodies)

    lister = Lister("source", "b", fetch)
    assert [[o.key for o in items] for items in lister.pages(None, "p/")] == [["p/a", "p/b"], ["p/c"]]
    assert requests == [PageRequest(None, "p/"), PageRequest("p/b", "p/")]
    with pytest.raises(TransientError, match="source: list x: the answer is not XML"):
        list(lister.pages("x"))


def test_a_truncated_page_without_entries_is_an_error_not_the_end():
    with pytest.raises(TransientError, match="truncated listing page with no entries"):
        list(Lister("destination", "b", lambda request: page("", truncated=True)).paginate(None))


def test_query_paginates_by_start_after():
    assert PageRequest().query() == {"list-type": "2", "max-keys": "1000", "encoding-type": "url"}
    assert PageRequest("k/1").query(5) == {"list-type": "2", "max-keys": "5", "encoding-type": "url",
                                            "start-after": "k/1"}


def test_query_of_a_delimited_continuation_page():
    request = PageRequest(prefix="photos/", delimiter="/", token="opaque+token")
    assert request.query() == {"list-type": "2", "max-keys": "1000", "encoding-type": "url",
                               "prefix": "photos/", "delimiter": "/", "continuation-token": "opaque+token"}
    assert request.subject == "photos/"
    assert PageRequest("photos/a", "photos/").subject == "photos/a"


def test_minio_listed_attributes_are_read_where_a_page_has_them():
    with_meta = ("<Contents><Key>a</Key><ETag>e</ETag><Size>1</Size><UserMetadata><content-type>text/plain"
                 "</content-type><X-Amz-Meta-Color>red</X-Amz-Meta-Color><X-Amz-Meta-Replicator-Source-Etag>e"
                 "</X-Amz-Meta-Replicator-Source-Etag><X-Amz-Server-Side-Encryption>AES256"
                 "</X-Amz-Server-Side-Encryption></UserMetadata><UserTags>team=blue%20b&amp;x=1</UserTags></Contents>")
    items = parse(page(with_meta + entry("b")), "b", TOP).items
    assert items[0].attributes == frozenset({("content-type", "text/plain"), ("x-amz-meta-color", "red"),
                                             ("tag:team", "blue b"), ("tag:x", "1")})
    assert items[1].attributes is None  # no UserMetadata: nothing to compare
