"""The /metrics body, rendered once per poll and format and shared by every scrape until the next.

Encoding thousands of series is the dominant cost of a scrape (about 50 ms for 64 GPUs with
prometheus_client), while the snapshot it encodes changes only once per poll. Scrapes between two
polls, and concurrent scrapes of the same poll, therefore reuse one rendering; concurrent scrapes
of a new poll wait for the single rendering in progress instead of each starting their own. The
daemon's own process metrics in that rendering are as old as the poll (at most one poll interval).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder

from gpuwatch.exporter import text
from gpuwatch.model import Snapshot


class CachedExposition:
    """Renders ``registry`` at most once per (snapshot, format)."""

    def __init__(self, registry: CollectorRegistry, latest: Callable[[], Snapshot]) -> None:
        self._registry = registry
        self._latest = latest
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None  # held, not its id(): an id can be reused
        self._bodies: dict[str, bytes] = {}

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition body for an ``Accept`` header, and its content type."""
        encoder, content_type = choose_encoder(accept)
        if encoder is generate_latest:  # the classic text format: gpuwatch's faster writer
            encoder = text.generate
        with self._lock:
            snapshot = self._latest()
            if snapshot is not self._snapshot:
                self._snapshot, self._bodies = snapshot, {}
            body = self._bodies.get(content_type)
            if body is None:
                body = self._bodies[content_type] = encoder(self._registry)
        return body, content_type
