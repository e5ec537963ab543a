"""PURE: the headers that encrypt a destination object and choose its storage class,
from the settings (S3_SYNC_SSE, S3_SYNC_SSE_KMS_KEY_ID, S3_SYNC_SSE_C_KEY,
S3_SYNC_STORAGE_CLASS).

S3 splits them by request, and a provider refuses a header where it doesn't belong:

============================  =========================  ==================================
request                       SSE-S3, SSE-KMS, class     SSE-C (algorithm, key, key's MD5)
============================  =========================  ==================================
PutObject                     yes                        yes
CreateMultipartUpload         yes                        yes
UploadPart                    no (AWS: InvalidArgument)  yes: each part is encrypted with it
CompleteMultipartUpload       no                         yes (AWS wants it with checksums)
HeadObject, GetObject         no (400)                   yes: without it, 400
tags, retention, legal hold,  no                         no: they act on the metadata
DeleteObject(s), abort
============================  =========================  ==================================

With SSE-KMS (on AWS) and SSE-C the destination's ETag is not the MD5 of the bytes, so
a listing's ETags can't show a pair in sync: the copy's recorded source ETag decides
(diff.compare's VERIFY, one HEAD, which then carries the SSE-C key too).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings, customer_key

SSE_C_ALGORITHM = "AES256"  # the only one S3 defines


@dataclass(frozen=True)
class WriteOptions:
    create: dict[str, str] = field(default_factory=dict)  # PutObject and CreateMultipartUpload
    customer: dict[str, str] = field(default_factory=dict)  # SSE-C: every request that reads or writes the bytes
    customer_params: dict[str, Any] = field(default_factory=dict)  # the same, as boto3 parameters

    def __repr__(self) -> str:  # the SSE-C key is a secret
        return f"WriteOptions(create={sorted(self.create)}, customer={sorted(self.customer)})"


def write_options(settings: Settings) -> WriteOptions:
    create: dict[str, str] = {}
    if settings.sse:
        create["x-amz-server-side-encryption"] = settings.sse
        if settings.sse_kms_key_id:
            create["x-amz-server-side-encryption-aws-kms-key-id"] = settings.sse_kms_key_id
    if settings.storage_class:
        create["x-amz-storage-class"] = settings.storage_class
    key = customer_key(settings.sse_c_key.reveal()) if settings.sse_c_key else None
    if key is None:
        return WriteOptions(create)
    customer = {
        "x-amz-server-side-encryption-customer-algorithm": SSE_C_ALGORITHM,
        "x-amz-server-side-encryption-customer-key": base64.b64encode(key).decode(),
        "x-amz-server-side-encryption-customer-key-MD5":
            base64.b64encode(hashlib.md5(key, usedforsecurity=False).digest()).decode(),
    }
    # boto3 encodes the key and adds its MD5 itself (botocore's sse_md5 handler).
    return WriteOptions(create | customer, customer, {"SSECustomerAlgorithm": SSE_C_ALGORITHM, "SSECustomerKey": key})
