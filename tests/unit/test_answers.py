"""answers.prove: a 2xx answer is used only if it is the answer the call expects."""

import pytest

from replicator.stores import answers
from replicator.stores.answers import MalformedAnswer, prove, tag_set

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
HTML = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Welcome</body></html>"
NOT_XML = b"<html><body>unclosed"
ERROR_200 = b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>"
ETAG = {"ETag": '"abc"'}


def doc(root: str, inner: str = "", ns: str = NS) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><{root} {ns}>{inner}</{root}>'.encode()


GOOD = [
    ("CreateMultipartUpload", {},
     doc("InitiateMultipartUploadResult", "<Bucket>b</Bucket><Key>k</Key><UploadId>u-1</UploadId>")),
    ("CreateMultipartUpload", {}, doc("InitiateMultipartUploadResult", "<UploadId>u-1</UploadId>", ns="")),
    ("CompleteMultipartUpload", {}, doc("CompleteMultipartUploadResult", "<Key>k</Key><ETag>&quot;e-2&quot;</ETag>")),
    ("DeleteObjects", {}, doc("DeleteResult")),
    ("DeleteObjects", {}, doc("DeleteResult", "<Error><Key>k</Key><Code>AccessDenied</Code></Error>")),
    ("GetObjectLockConfiguration", {},
     doc("ObjectLockConfiguration", "<ObjectLockEnabled>Enabled</ObjectLockEnabled>")),
    ("GetObjectTagging", {}, doc("Tagging", "<TagSet/>")),
    ("PutObjectTagging", {}, b""),
    ("PutObjectRetention", {}, b"  \n"),
    ("DeleteObject", {}, b""),
    ("AbortMultipartUpload", {}, b""),
    ("PutObjectLegalHold", {}, doc("SomethingAProviderSends")),  # tolerated: XML, not an error
    ("HeadObject", ETAG, b""),
    ("HeadObject", {"etag": '"abc"'}, b""),
    ("HeadBucket", {}, b""),
    ("ListBuckets", {}, HTML),  # not an operation replicator relies on: unchecked
]


@pytest.mark.parametrize(("operation", "headers", "body"), GOOD)
def test_the_answers_each_call_expects_pass(operation, headers, body):
    prove(operation, headers, body)


BAD = [
    ("CreateMultipartUpload", {}, HTML, "not a <InitiateMultipartUploadResult> document (root element <html>)"),
    ("CreateMultipartUpload", {}, ERROR_200, "an S3 error document: InternalError: We encountered"),
    ("CreateMultipartUpload", {}, NOT_XML, "not XML"),
    ("CreateMultipartUpload", {}, doc("InitiateMultipartUploadResult", "<Key>k</Key>"), "has no UploadId"),
    ("CreateMultipartUpload", {}, doc("InitiateMultipartUploadResult", "<UploadId></UploadId>"), "has no UploadId"),
    ("CompleteMultipartUpload", {}, HTML, "root element <html>"),
    ("CompleteMultipartUpload", {}, ERROR_200, "error document: InternalError"),
    ("CompleteMultipartUpload", {}, doc("CompleteMultipartUploadResult", "<Key>k</Key>"), "has no ETag"),
    ("CompleteMultipartUpload", {}, b"", "not XML"),
    ("DeleteObjects", {}, HTML, "not a <DeleteResult> document"),
    ("DeleteObjects", {}, b"", "not XML"),
    ("DeleteObjects", {}, ERROR_200, "error document"),
    ("DeleteObjects", {}, doc("DeleteResult", "<Error><Code>AccessDenied</Code></Error>"), "error without its Key"),
    ("GetObjectLockConfiguration", {}, HTML, "not a <ObjectLockConfiguration> document"),
    ("GetObjectTagging", {}, doc("Tags"), "not a <Tagging> document"),
    ("PutObjectTagging", {}, HTML, "an HTML page"),
    ("PutObjectRetention", {}, NOT_XML, "a body that is not S3's"),
    ("PutObjectLegalHold", {}, ERROR_200, "error document"),
    ("DeleteObject", {}, b"<HTML><BODY>Gateway</BODY></HTML>", "an HTML page"),
    ("HeadObject", {}, b"", "no ETag header"),
    ("HeadObject", {"Content-Type": "text/html"}, b"", "no ETag header"),
]


@pytest.mark.parametrize(("operation", "headers", "body", "why"), BAD)
def test_anything_else_is_refused(operation, headers, body, why):
    with pytest.raises(MalformedAnswer) as caught:
        prove(operation, headers, body)
    assert why in str(caught.value)


@pytest.mark.parametrize(("body", "expected"), [
    (doc("Tagging", "<TagSet/>"), {}),
    (doc("Tagging"), {}),
    (doc("Tagging", "<TagSet><Tag><Key>a</Key><Value>1</Value></Tag><Tag><Key>b</Key><Value></Value></Tag></TagSet>"),
     {"a": "1", "b": ""}),
    (doc("Tagging", "<TagSet><Tag><Key>é x</Key><Value>&lt;v&gt;</Value></Tag></TagSet>", ns=""), {"é x": "<v>"}),
])
def test_tag_sets(body, expected):
    assert tag_set(body) == expected


@pytest.mark.parametrize(("body", "why"), [
    (HTML, "not a <Tagging> document"),
    (ERROR_200, "error document"),
    (b"", "not XML"),
    (doc("Tagging", "<TagSet><Tag><Key>a</Key></Tag></TagSet>"), "a tag without its Key or Value"),
    (doc("Tagging", "<TagSet><Tag><Value>1</Value></Tag></TagSet>"), "a tag without its Key or Value"),
])
def test_a_tag_set_that_is_not_one_is_refused_not_read_as_no_tags(body, why):
    # Read as "no tags", it would make the copy remove the destination's tags.
    with pytest.raises(MalformedAnswer) as caught:
        tag_set(body)
    assert why in str(caught.value)


# -- GetObjectAttributes (ObjectParts) ----------------------------------------------

MINIO_ATTRIBUTES = (b'<?xml version="1.0" encoding="UTF-8"?>\n<getObjectAttributesResponse><ETag>e5c6-3</ETag>'
                    b'<ObjectParts><IsTruncated>false</IsTruncated><MaxParts>10000</MaxParts><NextPartNumberMarker>3'
                    b'</NextPartNumberMarker><PartNumberMarker>0</PartNumberMarker><PartsCount>3</PartsCount>'
                    b'<Part><PartNumber>1</PartNumber><Size>5242880</Size></Part><Part><PartNumber>2</PartNumber>'
                    b'<Size>7340032</Size></Part><Part><PartNumber>3</PartNumber><Size>1000</Size></Part>'
                    b'</ObjectParts><ObjectSize>12583912</ObjectSize></getObjectAttributesResponse>')


def test_object_parts_as_minio_answers():
    assert answers.object_parts(MINIO_ATTRIBUTES) == ("e5c6-3", [(1, 5242880), (2, 7340032), (3, 1000)], None)


def test_object_parts_of_a_truncated_page_give_the_next_marker():
    body = (b'<GetObjectAttributesResponse xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><ETag>"ab-2"</ETag>'
            b'<ObjectParts><IsTruncated>true</IsTruncated><NextPartNumberMarker>1</NextPartNumberMarker>'
            b'<Part><PartNumber>1</PartNumber><Size>5242880</Size></Part></ObjectParts></GetObjectAttributesResponse>')
    assert answers.object_parts(body) == ("ab-2", [(1, 5242880)], 1)


@pytest.mark.parametrize(("body", "why"), [
    (b"<html><body>sign in</body></html>", "not a <GetObjectAttributesResponse>"),
    (b"<Error><Code>InternalError</Code></Error>", "S3 error document"),
    (b"<GetObjectAttributesResponse><ObjectParts/></GetObjectAttributesResponse>", "no ETag"),
    (b"<GetObjectAttributesResponse><ETag>x-1</ETag><ObjectParts><Part><PartNumber>1</PartNumber></Part>"
     b"</ObjectParts></GetObjectAttributesResponse>", "without a number or a size"),
    (b"<GetObjectAttributesResponse><ETag>x-1</ETag><ObjectParts><IsTruncated>true</IsTruncated>"
     b"</ObjectParts></GetObjectAttributesResponse>", "without its NextPartNumberMarker"),
])
def test_object_parts_that_are_not_are_malformed(body, why):
    with pytest.raises(answers.MalformedAnswer, match=why):
        answers.object_parts(body)
