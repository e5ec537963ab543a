"""replicator: keep an S3-compatible bucket an exact, live mirror of a MinIO bucket."""

__version__ = "0.1.0"
