# The replicator sidecar. Build: docker-compose build s3-sync (or docker build -t replicator .)
# Configuration comes from the environment at run time (.env via docker-compose); no
# credential is ever baked into the image.
#
# The base is pinned by tag only: its digest could not be read where this was written (no
# route to registry-1.docker.io). Where the registry is reachable, pin it:
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
# and write FROM python:3.11-slim-bookworm@sha256:<that digest>, keeping the tag for readers.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The dependencies first, each at the version and with the hashes requirements.lock pins
# (scripts/lock.sh makes it from pyproject.toml): a rebuild gets the same bytes, and this
# layer is reused until the lock changes.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY replicator ./replicator
# --no-deps --no-build-isolation: nothing beyond the lock (setuptools, the build
# backend, is in it). The user has no home; S3_SYNC_STATE_DIR (the registry of
# multipart uploads in flight, for aborting those a crash leaves) gets a directory of
# its own, which docker-compose.yml keeps in a volume.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin replicator \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/replicator

USER 10001:10001

EXPOSE 8080
# slim images have no curl; the standard library does the probe. The port follows
# S3_SYNC_HTTP_PORT, like the service itself.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('S3_SYNC_HTTP_PORT', '8080'), timeout=4)"]

# Exec form: Python is PID 1 and receives SIGTERM itself (a shell in between would
# swallow it, and docker stop would end in SIGKILL after the grace period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "replicator"]
CMD ["run"]
