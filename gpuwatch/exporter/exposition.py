"""The /metrics body, rendered once per poll and format and shared by every scrape until the next.

Encoding thousands of series is the dominant cost of a scrape, while the snapshot it encodes
changes only once per poll. So:

* scrapes between two polls, and concurrent scrapes of the same poll, reuse one rendering;
* while scrapers are active (a scrape within the last ``ACTIVE_WINDOW_S``, and either a scrape
  since the last rendering or, on average, at least ``BUSY_SCRAPES_PER_POLL`` scrapes per poll),
  the poll loop renders the classic text format right after each poll
  (:meth:`CachedExposition.prerender`), and scrapes arriving during that rendering get the last
  rendering (normally the previous poll's) instead of waiting for it. Scraped more often than
  polled (many Prometheus servers, or a fast poll), every poll is rendered, so a poll that
  happens to see no scrape does not leave the next scrape to render it; scraped less often (one
  Prometheus every 15 s), at most one rendering per scrape; with no active scraper nothing is
  rendered until a scrape asks, so an idle daemon spends nothing on it;
* a scrape that finds no rendering of the latest poll in progress renders it itself, and
  concurrent scrapes wait for that one rendering instead of each starting their own.

A gzip-compressed body (for scrapers that accept it, as Prometheus does) is likewise made once
per rendering, at level 1: about a tenth of the CPU of level 9 for a body a fifth larger.

The daemon's own process metrics in a rendering are as old as the poll (at most one interval).
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder

from gpuwatch.exporter import text
from gpuwatch.model import Snapshot

log = logging.getLogger(__name__)

ACTIVE_WINDOW_S = 5.0
BUSY_SCRAPES_PER_POLL = 0.5
_RATE_WEIGHT = 0.2  # of the latest poll interval in the running mean of scrapes per poll
GZIP_LEVEL = 1
GZIP_MIN_BYTES = 1024  # smaller bodies are sent as they are
_TEXT = choose_encoder("")[1]  # the classic text format's content type


class CachedExposition:
    """Renders ``registry`` at most once per (snapshot, format)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        latest: Callable[[], Snapshot],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._latest = latest
        self._monotonic = monotonic
        self._lock = threading.Lock()  # guards the fields below
        self._render_lock = threading.Lock()  # one rendering at a time
        self._snapshot: Snapshot | None = None  # held, not its id(): an id can be reused
        self._bodies: dict[str, bytes] = {}
        self._prerendering: Snapshot | None = None
        self._scraped_since_render = False
        self._last_scrape = float("-inf")
        self._scrapes_since_poll = 0
        self._scrapes_per_poll = 0.0  # running mean
        self.render_error: str | None = None  # why the latest rendering failed; None when it did not

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition body for an ``Accept`` header, and its content type."""
        encoder, content_type = choose_encoder(accept)
        if encoder is generate_latest:  # the classic text format: gpuwatch's faster writer
            encoder = text.generate
        snapshot = self._latest()
        with self._lock:
            self._scraped_since_render, self._last_scrape = True, self._monotonic()
            self._scrapes_since_poll += 1
            body = self._cached(snapshot, content_type)
            if body is None and self._prerendering is snapshot and content_type == _TEXT:
                body = self._bodies.get(_TEXT)  # the poll loop is rendering this poll; the last rendering will do
        if body is None:
            with self._render_lock:
                body = self._cached(snapshot, content_type) or self._store(snapshot, content_type, encoder, True)
        return body, content_type

    def render_encoded(self, accept: str, accept_encoding: str) -> tuple[bytes, str, str | None]:
        """Like :meth:`render`, gzip-compressed when ``accept_encoding`` allows it; the third item
        is the Content-Encoding (None when sent as is)."""
        body, content_type = self.render(accept)
        if len(body) <= GZIP_MIN_BYTES or not accepts_gzip(accept_encoding):
            return body, content_type, None
        key = content_type + ";gzip"
        with self._lock:
            compressed = self._bodies.get(key) if self._bodies.get(content_type) is body else None
        if compressed is None:
            compressed = gzip.compress(body, compresslevel=GZIP_LEVEL)
            with self._lock:
                if self._bodies.get(content_type) is body:  # still the latest rendering: keep it
                    self._bodies[key] = compressed
        return compressed, content_type, "gzip"

    def prerender(self) -> None:
        """After a poll: render the text format of the latest snapshot now if scrapers are active
        (see the module doc)."""
        snapshot = self._latest()
        with self._lock:
            rate = (1 - _RATE_WEIGHT) * self._scrapes_per_poll + _RATE_WEIGHT * self._scrapes_since_poll
            self._scrapes_per_poll, self._scrapes_since_poll = rate, 0
            wanted = self._scraped_since_render or rate >= BUSY_SCRAPES_PER_POLL
            active = wanted and self._monotonic() - self._last_scrape < ACTIVE_WINDOW_S
            if not active:
                return
            self._prerendering = snapshot
        try:
            with self._render_lock:
                if self._cached(snapshot, _TEXT) is None:
                    self._store(snapshot, _TEXT, text.generate, False)
        except Exception:  # logged by _store; the scrape that comes will try again and fail visibly
            pass
        finally:
            with self._lock:
                self._prerendering = None

    def invalidate(self) -> None:
        """Forget the cached renderings: the next scrape renders again (the collectors changed).
        Waits for a rendering under way, which may have used the old collectors."""
        with self._render_lock, self._lock:
            self._snapshot, self._bodies = None, {}

    def _cached(self, snapshot: Snapshot, content_type: str) -> bytes | None:
        return self._bodies.get(content_type) if snapshot is self._snapshot else None

    def _store(
        self, snapshot: Snapshot, content_type: str, encoder: Callable[[CollectorRegistry], bytes], scraped: bool
    ) -> bytes:
        """Render (under the render lock) and publish; ``scraped`` when a scrape asked for it.

        A rendering that fails (a bug: collectors' own failures are caught, see exporter/registry.py)
        is logged as an error when it starts failing, sets :attr:`render_error` (``/-/ready`` then
        answers 503) and raises."""
        try:
            body = encoder(self._registry)
        except Exception as exc:
            if self.render_error is None:
                log.exception("cannot render /metrics; /-/ready answers 503 until it can")
            else:
                log.debug("cannot render /metrics", exc_info=True)
            self.render_error = f"{type(exc).__name__}: {exc}"
            raise
        if self.render_error is not None:
            log.info("/metrics renders again")
            self.render_error = None
        with self._lock:
            if snapshot is not self._snapshot:
                self._snapshot, self._bodies = snapshot, {}
            self._bodies[content_type] = body
            self._scraped_since_render = scraped
        return body


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (RFC 9110 12.5.3): ``gzip`` (or
    ``x-gzip``) with a q-value above 0, or else ``*`` with one; ``gzip;q=0`` refuses it."""
    wildcard: bool | None = None
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # unreadable: not an acceptance
        coding = coding.lower()
        if coding in ("gzip", "x-gzip"):
            return q > 0
        if coding == "*":
            wildcard = q > 0
    return bool(wildcard)
