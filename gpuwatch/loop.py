"""The threads that keep polling: a loop thread on a fixed interval, and a watcher for hung reads.

How one hung GPU stays one GPU's problem (README, "Failure behaviour"): a GPU read that has made
no progress for :attr:`LoopSupervisor.stuck_after_s` (three poll intervals, at least 2 s and at
most 10 s) while this process was being scheduled is left behind (:mod:`gpuwatch.stalls`, which
also says why CPU starvation alone never counts): the watcher marks that GPU stuck (the sampler
shows its last values as stale) and starts a fresh loop thread, which polls on without it. The thread left behind ends as soon as its call returns, and frees the GPU for the
next poll; so one thread at most waits on each hung GPU. Only a loop stuck outside a GPU read (in
``nvmlInit``, or a bug) stops polling, and with it the systemd watchdog pings.

Threading contract: :attr:`poll_interval_s` may be set from any thread (SIGHUP); the new interval
applies to the wait already under way. Everything else is used by the loop threads alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from gpuwatch.stalls import HEARTBEAT_S, PollSuperseded, StallWatch

log = logging.getLogger(__name__)

STUCK_POLLS = 3  # poll intervals a read may take before it counts as hung ...
STUCK_MIN_S = 2.0  # ... but never less than this: a loaded host can deschedule a process that long
STUCK_MAX_S = 10.0  # ... nor more: the poll goes on well within the systemd watchdog's 30 s
STALE_POLLS = 3  # poll intervals after which the latest poll's data is stale (/status: unknown)

T = TypeVar("T")


class Clock(Protocol):
    """Daemon time (epoch seconds) and how long a span of it takes on the wall clock."""

    def time(self) -> float: ...

    def to_wall(self, seconds: float) -> float: ...


class WallClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def to_wall(self, seconds: float) -> float:
        return seconds


class LoopSupervisor:
    """Runs ``poll`` every :attr:`poll_interval_s` and leaves hung GPU reads behind."""

    def __init__(
        self,
        poll: Callable[[], object],
        clock: Clock,
        poll_interval_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._poll = poll
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self._monotonic = monotonic
        self._polled_at: float | None = None  # monotonic, when a loop thread last finished a poll
        self.stalls = StallWatch(monotonic, clock.time)
        self._stop = threading.Event()
        self._wake = threading.Event()  # cuts the wait between polls short: stop, or a new interval
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None

    @property
    def poll_interval_s(self) -> float:
        return self._poll_interval_s

    @poll_interval_s.setter
    def poll_interval_s(self, seconds: float) -> None:
        self._poll_interval_s = seconds
        self._wake.set()

    @property
    def stuck_after_s(self) -> float:
        """Scheduled time after which a GPU read counts as hung: three poll intervals, within 2-10 s."""
        return min(max(STUCK_POLLS * self._clock.to_wall(self._poll_interval_s), STUCK_MIN_S), STUCK_MAX_S)

    @property
    def stale_after_s(self) -> float:
        """Wall time after which the latest poll counts as stale: three poll intervals, at least 2 s
        (less would call a merely busy host's data stale, as for a hung read)."""
        return max(STALE_POLLS * self._clock.to_wall(self._poll_interval_s), STUCK_MIN_S)

    def data_age_s(self) -> float | None:
        """Wall seconds since a loop thread last finished a poll; None before the first."""
        polled_at = self._polled_at
        return None if polled_at is None else max(self._monotonic() - polled_at, 0.0)

    def watched(self, generation: int, index: int, read: Callable[[], T]) -> T:
        """``read()`` of GPU ``index`` under the stall watch; raises :class:`PollSuperseded` when
        this poll was left behind while it ran."""
        self.stalls.begin(generation, index)
        try:
            return read()
        finally:
            self._end(generation, index)  # a superseded poll must not publish, whatever the read did

    def _end(self, generation: int, index: int) -> None:
        try:
            self.stalls.end(generation, index)
        except PollSuperseded as exc:
            log.warning("%s; polling it again", exc)
            raise

    def check_stalled(self) -> bool:
        """One heartbeat of the watcher: leave behind a read that has been blocked for
        :attr:`stuck_after_s`; True when it did (the watcher then starts a new loop thread)."""
        self.stalls.heartbeat()
        stuck = self.stalls.leave_behind(self.stuck_after_s)
        if stuck is None:
            return False
        log.error(
            "GPU %d: an NVML call has not returned for %.1f s (blocked %.1f s of it while gpuwatch ran); "
            "showing its last values as stale and polling the other GPUs without it until the call returns",
            stuck.index,
            stuck.for_s,
            stuck.blocked_s,
        )
        return True

    def start(self) -> None:
        self._start_loop()
        self._watcher = threading.Thread(target=self._watch_stalls, name="gpuwatch-stall-watch", daemon=True)
        self._watcher.start()

    def _start_loop(self) -> None:
        thread = threading.Thread(target=self._run, name="gpuwatch-sampler", daemon=True)
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self._clock.time()
            try:
                self._poll()
                self._polled_at = self._monotonic()
            except PollSuperseded:
                return  # another loop thread polls now
            except Exception:  # a bug in one poll must not end polling
                log.exception("poll failed")
            self._wait_for_next_poll(started)

    def _wait_for_next_poll(self, started: float) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before reading the interval, so a new one set meanwhile is not missed
            wall_s = self._clock.to_wall(self._poll_interval_s - (self._clock.time() - started))
            if wall_s <= 0:
                return
            self._wake.wait(wall_s)

    def _watch_stalls(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if self.check_stalled():
                self._start_loop()

    def stop(self, timeout_s: float = 1.0) -> bool:
        """Stop polling; True when no loop thread is left in a call (so NVML may be shut down)."""
        self._stop.set()
        self._wake.set()
        for thread in (self._thread, self._watcher):
            if thread is not None:
                thread.join(timeout_s)
        return (self._thread is None or not self._thread.is_alive()) and not self.stalls.any_stuck
