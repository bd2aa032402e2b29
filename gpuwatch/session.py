"""The NVML session: open it (on a backoff), drop it when the driver goes, open it again; Xid events.

NVML missing or failing at start is not fatal: the daemon serves its own metrics and tries again
on a backoff (1 s doubling to 60 s). A session lost under a running poll (the driver unloaded or
reloaded) is closed and opened anew at the next poll. Error counts outlive the readers that made
them, so ``gpuwatch_nvml_errors_total`` never goes back across a reload.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from gpuwatch.analysis.backoff import Backoff
from gpuwatch.nvml import NvmlReader, NvmlSessionLost, NvmlUnavailable, XidEvent, XidWatcher

log = logging.getLogger(__name__)


class NvmlSession:
    """One NVML reader at a time, and the Xid watcher over its GPUs.

    With ``event_thread`` (the daemon) Xid events are awaited by a thread of their own; without it
    (tests, `gpuwatch status`) :meth:`take_events` collects those already queued, without waiting.
    Used from the poll loop only (one thread at a time).
    """

    def __init__(self, reader_factory: Callable[[], NvmlReader], event_thread: bool = False) -> None:
        self._reader_factory = reader_factory
        self._event_thread = event_thread
        self._reader: NvmlReader | None = None
        self._events: XidWatcher | None = None
        self._backoff = Backoff()
        self._errors_before: Counter[tuple[int, str]] = Counter()  # of readers closed since start
        self.error: str | None = "not polled yet"  # why NVML is not up; None while it is
        # when the current Xid watcher began (daemon time): the kernel log's Xids before it are NVML's blind spot
        self.events_since: float | None = None

    def open(self, now: float) -> NvmlReader | None:
        """The open reader; opens one when none is and the backoff allows; None while NVML is down."""
        if self._reader is not None:
            return self._reader
        if not self._backoff.due(now):
            return None
        reader = self._reader_factory()
        try:
            reader.open()
        except NvmlUnavailable as exc:
            self.error = str(exc)
            self._backoff = self._backoff.failed(now)
            log.error("%s; retrying in %.0f s", exc, self._backoff.next_at - now)
            return None
        self._reader, self.error, self._backoff = reader, None, Backoff()
        self._events = reader.open_events()
        self.events_since = None if self._events is None else now
        if self._events is not None and self._event_thread:
            self._events.start()
        return reader

    def drop(self, exc: NvmlSessionLost) -> None:
        """NVML went away under us: close this session; the next :meth:`open` starts a new one."""
        log.error("NVML stopped answering (%s): the driver was unloaded or reloaded; opening NVML again", exc)
        if self._reader is not None:
            self._errors_before += Counter(self._reader.error_counts())
        self.close()
        self.error = f"NVML session lost ({exc}); opening it again"
        self._backoff = Backoff()

    def take_events(self) -> list[XidEvent]:
        """The Xid events that arrived since the last call."""
        if self._events is None:
            return []
        if not self._event_thread:
            self._events.pump(0)
        return self._events.drain()

    def error_counts(self) -> dict[tuple[int, str], int]:
        """Failed NVML queries since start, by (GPU index, query), across every reader."""
        errors = self._reader.error_counts() if self._reader is not None else {}
        if self._errors_before:  # only after a driver reload
            return dict(self._errors_before + Counter(errors))
        return errors

    def close(self) -> None:
        reader, self._reader = self._reader, None
        events, self._events = self._events, None
        self.events_since = None
        if events is not None:
            events.close()
        if reader is not None:
            reader.close()
