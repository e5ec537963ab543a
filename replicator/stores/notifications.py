"""MinIO's ListenBucketNotification stream, read by a small reader of our own.

Why not minio-py's ``listen_bucket_notification``: its iterator blocks until a real
event arrives, reconnects silently (losing the gap's events without telling us), has
no stop method, and by default subscribes to ``s3:ObjectAccessed:*`` too. Ours:

- subscribes to exactly ``s3:ObjectCreated:*`` and ``s3:ObjectRemoved:*``;
- asks MinIO for a keep-alive record every ``PING`` seconds (``ping=N``), and reads
  with a socket timeout longer than that, so a half-open connection surfaces as a
  timeout instead of a silent hang;
- can be stopped from any thread: urllib3's ``HTTPResponse.shutdown()`` (>= 2.3)
  interrupts the blocked read;
- raises ``TransientError`` on any disconnect, so the caller decides how to reconnect
  and knows to reconcile the gap.

Keys on this stream are raw (MinIO only URL-escapes them for configured targets):
they are used as they come.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

from urllib3.exceptions import HTTPError as Urllib3Error

from ..config import Settings
from ..errors import TransientError
from .source import MinioSource

EVENTS = ("s3:ObjectCreated:*", "s3:ObjectRemoved:*")
# Seconds between MinIO's keep-alive records. Short, because MinIO sends no response
# headers before its first write: the ping is also how we learn we're subscribed.
PING = 2


class Subscription:
    """One open notification stream."""

    def __init__(self, response, endpoint: str):
        self._response = response
        self._endpoint = endpoint
        self._closed = threading.Event()

    def records(self) -> Iterator[dict]:
        """Each notification record as a dict, until the stream breaks (TransientError)
        or ``close()`` is called (the iterator just ends)."""
        buffer = b""
        try:
            for chunk in self._response.stream(amt=None, decode_content=False):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    line = line.strip()
                    if not line:
                        continue  # the older whitespace keep-alive
                    try:
                        event = json.loads(line)
                    except ValueError as exc:
                        raise TransientError("source", "listen", None, "malformed notification line") from exc
                    yield from event.get("Records") or ()  # an empty record list is the ping
        except (Urllib3Error, OSError, ValueError, AttributeError) as exc:
            if self._closed.is_set():
                return
            raise TransientError("source", "listen", None,
                                 f"notification stream from {self._endpoint} broke: {type(exc).__name__}") from exc
        if not self._closed.is_set():
            raise TransientError("source", "listen", None, f"{self._endpoint} closed the notification stream")

    def close(self) -> None:
        """Interrupt a blocked read from any thread, then release the connection."""
        if self._closed.is_set():
            return
        self._closed.set()
        # Best effort by design: a response that already ended or was released makes
        # urllib3 raise ValueError or RuntimeError here, and either way it's closed.
        try:
            self._response.shutdown()
        except Exception:  # noqa: BLE001, S110 - best effort, as above
            pass
        try:
            self._response.close()
            self._response.release_conn()
        except Exception:  # noqa: BLE001, S110 - best effort, as above
            pass


class Notifications:
    """The source bucket's notification stream, on the source's own pool. Its read
    timeout is its own: the data path's is sized for object bodies, this one for
    noticing a dead stream."""

    def __init__(self, source: MinioSource, settings: Settings, prefix: str | None = None):
        self.source = source
        self.bucket = source.bucket
        self.read_timeout = max(settings.listen_timeout, PING + 5)
        # Only the events under the mirror's prefix (``prefix``: the one every mirror of
        # the bucket shares): MinIO matches "prefix*" as a wildcard pattern, so a '*' or
        # '?' in the prefix lets more through, never less; the rules, and the prefix
        # itself, are converge's to apply to what comes (filters.py).
        self.prefix = settings.key_filter.prefix if prefix is None else prefix

    def subscribe(self) -> Subscription:
        query = [*(("events", event) for event in EVENTS), ("ping", str(PING)), ("prefix", self.prefix),
                 ("suffix", "")]
        return Subscription(self.source.listen(query, self.read_timeout), self.source.endpoint)
