"""replicator: keep an S3-compatible bucket an exact, live mirror of a MinIO bucket."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("replicator")  # the one place it is written is pyproject.toml
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
