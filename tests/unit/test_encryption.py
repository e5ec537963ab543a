"""Destination encryption and storage class by tables: what config.load accepts and
refuses (S3_SYNC_SSE, S3_SYNC_SSE_KMS_KEY_ID, S3_SYNC_SSE_C_KEY, S3_SYNC_STORAGE_CLASS),
and the headers encryption.write_options makes of it. What a PUT carries on the wire:
test_destination.py."""

from __future__ import annotations

import base64
import hashlib

import pytest

from replicator import config
from replicator.stores.encryption import write_options
from tests.unit.test_config import load, problem

KEY = bytes(range(32))  # 32 bytes, not all printable
KEY_B64 = base64.b64encode(KEY).decode()
RAW_KEY = "k" * 16 + "K" * 16  # 32 printable bytes, as a .env can hold them
KEY_MD5 = base64.b64encode(hashlib.md5(KEY, usedforsecurity=False).digest()).decode()




# --- settings ---------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "expected"), [
    ({"S3_SYNC_SSE": "AES256"}, {"sse": "AES256"}),
    ({"S3_SYNC_SSE": "aes256"}, {"sse": "AES256"}),
    ({"S3_SYNC_SSE": "aws:kms"}, {"sse": "aws:kms", "sse_kms_key_id": None}),
    ({"S3_SYNC_SSE": "AWS:KMS", "S3_SYNC_SSE_KMS_KEY_ID": "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab"},
     {"sse": "aws:kms", "sse_kms_key_id": "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab"}),
    ({"S3_SYNC_SSE": "aws:kms", "S3_SYNC_SSE_KMS_KEY_ID": "alias/backups"}, {"sse_kms_key_id": "alias/backups"}),
    ({"S3_SYNC_SSE_C_KEY": KEY_B64}, {"sse": None, "sse_c_key": config.Secret(KEY_B64)}),
    ({"S3_SYNC_SSE_C_KEY": RAW_KEY}, {"sse_c_key": config.Secret(RAW_KEY)}),
    ({"S3_SYNC_STORAGE_CLASS": "STANDARD_IA"}, {"storage_class": "STANDARD_IA"}),
    ({"S3_SYNC_STORAGE_CLASS": "GLACIER_IR", "S3_SYNC_SSE": "AES256"}, {"storage_class": "GLACIER_IR"}),
    ({"S3_SYNC_SSE": "", "S3_SYNC_SSE_KMS_KEY_ID": " ", "S3_SYNC_SSE_C_KEY": "", "S3_SYNC_STORAGE_CLASS": ""},
     {"sse": None, "sse_kms_key_id": None, "sse_c_key": None, "storage_class": None}),
])
def test_accepted(env, expected):
    settings = load(**env)
    assert {name: getattr(settings, name) for name in expected} == expected


@pytest.mark.parametrize(("env", "shown", "why"), [
    ({"S3_SYNC_SSE": "aws:kms:dsse"}, "S3_SYNC_SSE='aws:kms:dsse'", "expected AES256 (SSE-S3) or aws:kms"),
    ({"S3_SYNC_SSE": "SSE-C"}, "S3_SYNC_SSE='SSE-C'", "set S3_SYNC_SSE_C_KEY instead"),
    ({"S3_SYNC_SSE": "aws:kms", "S3_SYNC_SSE_KMS_KEY_ID": "my key"}, "S3_SYNC_SSE_KMS_KEY_ID='my key'",
     "without spaces"),
    ({"S3_SYNC_SSE_KMS_KEY_ID": "alias/backups"}, "S3_SYNC_SSE_KMS_KEY_ID='alias/backups'",
     "only S3_SYNC_SSE=aws:kms uses (S3_SYNC_SSE is unset)"),
    ({"S3_SYNC_SSE": "AES256", "S3_SYNC_SSE_KMS_KEY_ID": "alias/backups"}, "S3_SYNC_SSE_KMS_KEY_ID=",
     "(S3_SYNC_SSE is AES256)"),
    ({"S3_SYNC_SSE": "AES256", "S3_SYNC_SSE_C_KEY": KEY_B64}, "S3_SYNC_SSE='AES256'",
     "contradicts S3_SYNC_SSE_C_KEY"),
    ({"S3_SYNC_SSE_C_KEY": "short-key"}, "S3_SYNC_SSE_C_KEY='***'", "32 bytes, or their base64 (44 characters)"),
    ({"S3_SYNC_SSE_C_KEY": base64.b64encode(bytes(16)).decode()}, "S3_SYNC_SSE_C_KEY='***'", "got 24 characters"),
    ({"S3_SYNC_SSE_C_KEY": KEY_B64[:-2] + "!!"}, "S3_SYNC_SSE_C_KEY='***'", "a 256-bit key"),
    ({"S3_SYNC_SSE_C_KEY": KEY_B64, "S3_SYNC_ENDPOINT": "http://s3.example.com"}, "S3_SYNC_SSE_C_KEY='***'",
     "over plain HTTP"),
    ({"S3_SYNC_STORAGE_CLASS": "standard_ia"}, "S3_SYNC_STORAGE_CLASS='standard_ia'", "such as STANDARD_IA"),
    ({"S3_SYNC_STORAGE_CLASS": "STANDARD IA"}, "S3_SYNC_STORAGE_CLASS='STANDARD IA'", "upper-case letters"),
    ({"S3_SYNC_STORAGE_CLASS": "X" * 65}, "S3_SYNC_STORAGE_CLASS=", "upper-case letters"),
])
def test_refused(env, shown, why):
    message = problem(**env)
    assert shown in message
    assert why in message


@pytest.mark.parametrize("key", [KEY_B64, RAW_KEY, "short-key"])
def test_the_customer_key_is_never_shown(key):
    for env in ({"S3_SYNC_SSE_C_KEY": key, "S3_SYNC_SSE": "AES256"},
                {"S3_SYNC_SSE_C_KEY": key, "S3_SYNC_ENDPOINT": "http://s3.example.com"}):
        assert key not in problem(**env)
    if key != "short-key":
        settings = load(S3_SYNC_SSE_C_KEY=key)
        assert key not in repr(settings) and key not in str(settings.summary())
        assert key not in repr(write_options(settings))
        # Both spellings of it, as given and as sent, are redacted from the logs.
        assert {key, base64.b64encode(config.customer_key(key) or b"").decode()} <= set(settings.secrets())


def test_an_invalid_sse_is_not_also_a_contradiction():
    message = problem(S3_SYNC_SSE="kms", S3_SYNC_SSE_KMS_KEY_ID="alias/backups")
    assert "S3_SYNC_SSE='kms'" in message
    assert "S3_SYNC_SSE_KMS_KEY_ID" not in message


@pytest.mark.parametrize(("value", "key"), [
    (KEY_B64, KEY), (RAW_KEY, RAW_KEY.encode()), ("é" * 16, "é".encode() * 16),  # 32 bytes in UTF-8
    ("short", None), ("x" * 33, None), (base64.b64encode(bytes(33)).decode(), None), ("*" * 44, None),
])
def test_customer_key(value, key):
    assert config.customer_key(value) == key


@pytest.mark.parametrize(("env", "banner"), [
    ({}, {}),
    ({"S3_SYNC_SSE": "AES256"}, {"Encryption": "SSE-S3 (AES256)"}),
    ({"S3_SYNC_SSE": "aws:kms", "S3_SYNC_SSE_KMS_KEY_ID": "alias/b"}, {"Encryption": "SSE-KMS, key alias/b"}),
    ({"S3_SYNC_SSE_C_KEY": KEY_B64, "S3_SYNC_STORAGE_CLASS": "ONEZONE_IA"},
     {"Encryption": "SSE-C (the customer's key)", "Storage Class": "ONEZONE_IA"}),
])
def test_the_banner_names_what_is_set(env, banner):
    summary = load(**env).summary()
    assert {name: summary[name] for name in ("Encryption", "Storage Class") if name in summary} == banner


# --- headers ------------------------------------------------------------------------------

SSE_C = {
    "x-amz-server-side-encryption-customer-algorithm": "AES256",
    "x-amz-server-side-encryption-customer-key": KEY_B64,
    "x-amz-server-side-encryption-customer-key-MD5": KEY_MD5,
}


@pytest.mark.parametrize(("env", "create", "customer"), [
    ({}, {}, {}),
    ({"S3_SYNC_SSE": "AES256"}, {"x-amz-server-side-encryption": "AES256"}, {}),
    ({"S3_SYNC_SSE": "aws:kms"}, {"x-amz-server-side-encryption": "aws:kms"}, {}),
    ({"S3_SYNC_SSE": "aws:kms", "S3_SYNC_SSE_KMS_KEY_ID": "alias/b"},
     {"x-amz-server-side-encryption": "aws:kms", "x-amz-server-side-encryption-aws-kms-key-id": "alias/b"}, {}),
    ({"S3_SYNC_STORAGE_CLASS": "STANDARD_IA"}, {"x-amz-storage-class": "STANDARD_IA"}, {}),
    ({"S3_SYNC_SSE_C_KEY": KEY_B64}, SSE_C, SSE_C),
    ({"S3_SYNC_SSE_C_KEY": RAW_KEY},  # sent as its base64, whichever way it was given
     {**SSE_C, "x-amz-server-side-encryption-customer-key": base64.b64encode(RAW_KEY.encode()).decode(),
      "x-amz-server-side-encryption-customer-key-MD5": base64.b64encode(
          hashlib.md5(RAW_KEY.encode(), usedforsecurity=False).digest()).decode()}, None),
    ({"S3_SYNC_SSE_C_KEY": KEY_B64, "S3_SYNC_STORAGE_CLASS": "REDUCED_REDUNDANCY"},
     {**SSE_C, "x-amz-storage-class": "REDUCED_REDUNDANCY"}, SSE_C),
])
def test_headers(env, create, customer):
    options = write_options(load(**env))
    assert options.create == create
    if customer is not None:
        assert options.customer == customer
    # Storage class and SSE-S3/KMS go only with the writes that create an object; SSE-C
    # with every request that touches its bytes, and boto3 gets the same key.
    assert not any(name.startswith("x-amz-storage-class") or name in ("x-amz-server-side-encryption",)
                   for name in options.customer)
    assert bool(options.customer_params) == bool(options.customer)


def test_boto3_gets_the_raw_key():
    assert write_options(load(S3_SYNC_SSE_C_KEY=KEY_B64)).customer_params == {
        "SSECustomerAlgorithm": "AES256", "SSECustomerKey": KEY}
