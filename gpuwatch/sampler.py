"""The poll loop: reads every GPU on a fixed interval into immutable snapshots.

Scrapes and `gpuwatch status` read :attr:`Sampler.latest`; nothing but this loop calls NVML, so
a hung driver call delays the next snapshot (visible through ``gpuwatch_last_poll_timestamp_seconds``)
but never a scrape. Time is injected: tests step :meth:`Sampler.poll_once` with a manual clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from gpuwatch.analysis.counters import ResetSafeCounter
from gpuwatch.model import GpuProcess, GpuStatus, Snapshot
from gpuwatch.nvml import GpuLost, NvmlReader, NvmlUnavailable, PollFailed

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


class Sampler:
    """Owns the NVML reader and publishes one :class:`Snapshot` per poll."""

    def __init__(
        self,
        reader_factory: Callable[[], NvmlReader],
        clock: Clock,
        poll_interval_s: float = 1.0,
        process_interval_s: float = 10.0,
    ) -> None:
        self._reader_factory = reader_factory
        self._clock = clock
        self.poll_interval_s = poll_interval_s
        self.process_interval_s = process_interval_s
        self._reader: NvmlReader | None = None
        self._nvml_error: str | None = "not polled yet"
        self._next_open_at = float("-inf")
        self._backoff_s = _BACKOFF_START_S
        self._energy: dict[int, ResetSafeCounter] = {}
        self._processes: dict[int, tuple[GpuProcess, ...]] = {}
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
            refresh_processes = started >= self._next_processes_at
            if refresh_processes:
                self._next_processes_at = started + self.process_interval_s
            gpus = tuple(self._poll_gpu(reader, i, refresh_processes) for i in range(len(reader.identities)))
        self._polls += 1
        snapshot = Snapshot(
            timestamp=self._clock.time(),
            nvml_up=reader is not None,
            nvml_error=self._nvml_error,
            driver_version=reader.driver_version if reader else None,
            cuda_driver_version=reader.cuda_driver_version if reader else None,
            gpus=gpus,
            poll_duration_seconds=time.perf_counter() - wall_started,
            polls_total=self._polls,
            nvml_errors_total=dict(reader.errors) if reader else {},
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
        return reader

    def _poll_gpu(self, reader: NvmlReader, index: int, refresh_processes: bool) -> GpuStatus:
        identity = reader.identities[index]
        try:
            reading = reader.read(index, slow=refresh_processes)
        except (GpuLost, PollFailed) as exc:
            return GpuStatus(identity=identity, up=False, error=str(exc))
        counter = self._energy.get(index)
        if reading.energy_joules is not None:
            counter = (
                ResetSafeCounter(reading.energy_joules) if counter is None else counter.advance(reading.energy_joules)
            )
            self._energy[index] = counter
        if refresh_processes:
            self._processes[index] = reader.processes(index)
        return GpuStatus(
            identity=identity,
            up=True,
            reading=reading,
            energy_joules_total=None if counter is None else counter.total,
            processes=self._processes.get(index, ()),
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
            if reader is not None:
                reader.close()
