"""Storage adapters: the only modules that import an S3 SDK.

- ``source.py``: the MinIO source (minio-py): list, read, stat, tags, notifications.
- ``destination.py``: any S3-compatible destination (boto3).
- ``memory.py``: an in-memory fake of both, for pure unit tests.
"""
