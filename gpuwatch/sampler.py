"""The poll loop: reads every GPU on a fixed interval into immutable snapshots.

Scrapes and `gpuwatch status` read :attr:`Sampler.latest`; nothing but this loop calls NVML, so
a hung driver call delays the next snapshot (visible through ``gpuwatch_last_poll_timestamp_seconds``)
but never a scrape. Time is injected: tests step :meth:`Sampler.poll_once` with a manual clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from gpuwatch.analysis.counters import ResetSafeCounter
from gpuwatch.analysis.health import GpuFacts, HealthThresholds, gpu_verdict, host_verdict
from gpuwatch.analysis.throttle import ThrottleSample, ThrottleWindow, accumulate_reason_seconds, classify
from gpuwatch.model import GpuProcess, GpuReading, GpuStatus, Snapshot
from gpuwatch.nvml import GpuLost, NvmlReader, NvmlUnavailable, PollFailed, XidWatcher
from gpuwatch.tokens.tracker import TokenTracker

log = logging.getLogger(__name__)

_BACKOFF_START_S = 1.0
_BACKOFF_MAX_S = 60.0


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


_RECENT_XIDS = 32
_BUSY_UTILIZATION = 0.05


@dataclass(slots=True)
class _GpuHistory:
    """What the sampler remembers about one GPU between polls."""

    throttle: ThrottleWindow
    energy: ResetSafeCounter | None = None
    violations: dict[str, ResetSafeCounter] = field(default_factory=dict)
    reason_seconds: dict[str, float] = field(default_factory=dict)
    processes: tuple[GpuProcess, ...] = ()
    xid_counts: Counter[int] = field(default_factory=Counter)
    recent_xids: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=_RECENT_XIDS))


def _advance(counter: ResetSafeCounter | None, raw: float) -> ResetSafeCounter:
    return ResetSafeCounter(raw) if counter is None else counter.advance(raw)


def _throttle_sample(reading: GpuReading, max_sm_hertz: float | None) -> ThrottleSample:
    reasons = reading.clock_event_reasons or frozenset()
    utilization = reading.utilization_ratio.get("gpu")
    busy = utilization >= _BUSY_UTILIZATION if utilization is not None else "idle" not in reasons
    sm = reading.clocks_hertz.get("sm")
    return ThrottleSample(
        timestamp=reading.timestamp,
        reasons=reasons,
        busy=busy,
        sm_clock_ratio=sm / max_sm_hertz if sm is not None and max_sm_hertz else None,
    )


class Sampler:
    """Owns the NVML reader and publishes one :class:`Snapshot` per poll.

    With ``event_thread`` (the daemon), Xid events are awaited by a thread of their own; without
    it (tests, `gpuwatch status`), each poll collects the events already queued, without waiting.
    """

    def __init__(
        self,
        reader_factory: Callable[[], NvmlReader],
        clock: Clock,
        poll_interval_s: float = 1.0,
        process_interval_s: float = 10.0,
        health: HealthThresholds | None = None,
        event_thread: bool = False,
        tokens: TokenTracker | None = None,
    ) -> None:
        self._reader_factory = reader_factory
        self._clock = clock
        self.poll_interval_s = poll_interval_s
        self.process_interval_s = process_interval_s
        self.health = health or HealthThresholds()
        self._event_thread = event_thread
        self.tokens = tokens
        self._reader: NvmlReader | None = None
        self._events: XidWatcher | None = None
        self._nvml_error: str | None = "not polled yet"
        self._next_open_at = float("-inf")
        self._backoff_s = _BACKOFF_START_S
        self._history: dict[int, _GpuHistory] = {}
        self._next_processes_at = float("-inf")
        self._polls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.latest = Snapshot(timestamp=clock.time(), nvml_up=False, nvml_error=self._nvml_error)
        self.ready = threading.Event()  # set after the first poll, whatever its outcome
        self.on_poll: Callable[[Snapshot], None] | None = None  # after each poll, e.g. pre-render /metrics

    # -- one poll ---------------------------------------------------------------------------------

    def poll_once(self) -> Snapshot:
        """Poll every GPU once, publish and return the snapshot."""
        started = self._clock.time()
        wall_started = time.perf_counter()
        reader = self._ensure_reader(started)
        gpus: tuple[GpuStatus, ...] = ()
        if reader is not None:
            self._take_events()
            refresh_processes = started >= self._next_processes_at
            if refresh_processes:
                self._next_processes_at = started + self.process_interval_s
            gpus = tuple(self._poll_gpu(reader, i, refresh_processes) for i in range(len(reader.identities)))
        self._polls += 1
        now = self._clock.time()
        gpus = tuple(replace(g, verdict=gpu_verdict(self._facts(g, now), self.health)) for g in gpus)
        sources = self.tokens.observe(gpus) if self.tokens is not None else ()
        snapshot = Snapshot(
            timestamp=now,
            nvml_up=reader is not None,
            nvml_error=self._nvml_error,
            driver_version=reader.driver_version if reader else None,
            cuda_driver_version=reader.cuda_driver_version if reader else None,
            gpus=gpus,
            poll_duration_seconds=time.perf_counter() - wall_started,
            polls_total=self._polls,
            nvml_errors_total=dict(reader.errors) if reader else {},
            verdict=host_verdict(reader is not None, self._nvml_error, [g.verdict for g in gpus]),
            sources=sources,
        )
        self.latest = snapshot
        self.ready.set()
        if self.on_poll is not None:
            self.on_poll(snapshot)
        return snapshot

    def _ensure_reader(self, now: float) -> NvmlReader | None:
        if self._reader is not None:
            return self._reader
        if now < self._next_open_at:
            return None
        reader = self._reader_factory()
        try:
            reader.open()
        except NvmlUnavailable as exc:
            self._nvml_error = str(exc)
            self._next_open_at = now + self._backoff_s
            log.error("%s; retrying in %.0f s", exc, self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)
            return None
        self._reader, self._nvml_error, self._backoff_s = reader, None, _BACKOFF_START_S
        self._events = reader.open_events()
        if self._events is not None and self._event_thread:
            self._events.start()
        return reader

    def _history_of(self, index: int) -> _GpuHistory:
        history = self._history.get(index)
        if history is None:
            window = ThrottleWindow(
                length_seconds=self.health.window_seconds, max_gap_seconds=max(5.0, 3 * self.poll_interval_s)
            )
            history = self._history[index] = _GpuHistory(throttle=window)
        return history

    def _take_events(self) -> None:
        if self._events is None:
            return
        if not self._event_thread:
            self._events.pump(0)
        for event in self._events.drain():
            history = self._history_of(event.gpu_index)
            history.xid_counts[event.xid] += 1
            history.recent_xids.append((event.timestamp, event.xid))

    def _poll_gpu(self, reader: NvmlReader, index: int, refresh_processes: bool) -> GpuStatus:
        identity = reader.identities[index]
        history = self._history_of(index)
        xid_errors, recent_xids = dict(history.xid_counts), tuple(history.recent_xids)
        try:
            reading = reader.read(index, slow=refresh_processes)
        except (GpuLost, PollFailed) as exc:
            return GpuStatus(identity, up=False, error=str(exc), xid_errors=xid_errors, recent_xids=recent_xids)
        sample = _throttle_sample(reading, identity.max_clocks_hertz.get("sm"))
        span = history.throttle.add(sample)
        history.reason_seconds = accumulate_reason_seconds(history.reason_seconds, sample.reasons - {"other"}, span)
        if reading.energy_joules is not None:
            history.energy = _advance(history.energy, reading.energy_joules)
        for policy, seconds in reading.violation_seconds.items():
            history.violations[policy] = _advance(history.violations.get(policy), seconds)
        if refresh_processes:
            history.processes = reader.processes(index)
        return GpuStatus(
            identity=identity,
            up=True,
            reading=reading,
            energy_joules_total=None if history.energy is None else history.energy.total,
            energy_resets=0 if history.energy is None else history.energy.resets,
            violation_seconds_total={p: c.total for p, c in history.violations.items()},
            processes=history.processes,
            throttle=history.throttle.summary(),
            throttle_class=classify(sample),
            clocks_event_seconds=dict(history.reason_seconds),
            xid_errors=xid_errors,
            recent_xids=recent_xids,
        )

    def _facts(self, status: GpuStatus, now: float) -> GpuFacts:
        r = status.reading
        if not status.up or r is None:
            return GpuFacts(
                index=status.identity.index, up=False, error=status.error, recent_xids=status.recent_xids, now=now
            )
        return GpuFacts(
            index=status.identity.index,
            up=True,
            temperature_celsius=r.temperature_celsius,
            margin_celsius=r.temperature_margin_celsius,
            thresholds_celsius=status.identity.temperature_thresholds_celsius,
            throttle=status.throttle,
            uncorrected_volatile_ecc=r.ecc_errors.get(("uncorrected", "volatile")),
            row_remap_pending=r.row_remap_pending,
            row_remap_failure=r.row_remap_failure,
            retired_pages_pending=r.retired_pages_pending,
            recent_xids=status.recent_xids,
            now=now,
        )

    # -- the loop ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Poll in a background thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="gpuwatch-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self._clock.time()
            try:
                self.poll_once()
            except Exception:  # a bug in one poll must not end polling
                log.exception("poll failed")
            elapsed = self._clock.time() - started
            self._stop.wait(self._clock.to_wall(max(0.0, self.poll_interval_s - elapsed)))

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop polling; a poll stuck in a driver call is left behind (the thread is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._thread is None or not self._thread.is_alive():
            reader, self._reader = self._reader, None
            if self._events is not None:
                self._events.close()
                self._events = None
            if reader is not None:
                reader.close()
