"""The poll loop: reads every GPU on a fixed interval into immutable snapshots.

Scrapes and `gpuwatch status` read :attr:`Sampler.latest`; nothing but this loop calls NVML, so a
hung driver call never delays a scrape. Time is injected: tests step :meth:`Sampler.poll_once`
with a manual clock.

How one fault stays one GPU's problem (README, "Failure behaviour"):

* A GPU read that has not returned after :attr:`Sampler.stuck_after_s` (one poll interval of wall
  time, at least 0.25 s and at most 5 s) is left behind (:mod:`gpuwatch.stalls`): a watcher
  thread marks that GPU stale (its last values stay, with ``stale_since``), and a fresh loop
  thread polls on without it. The thread left behind ends as soon as its call returns, and frees
  the GPU for the next poll. So one thread at most waits on each hung GPU, and a poll makes the
  same calls as before, with no hand-off between threads. Only a loop stuck outside a GPU read
  (in ``nvmlInit``, or a bug) stops polling, and with it the systemd watchdog pings.
* A lost GPU is the reader's to look for again (on a backoff, by UUID).
* NVML gone as a whole (the driver unloaded or reloaded): the reader is closed and opened again
  on the same backoff as at start. Counters are kept per GPU UUID and made reset-safe, so they
  carry on across the reload.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, TypeVar

from gpuwatch.analysis.backoff import Backoff
from gpuwatch.analysis.counters import ResetSafeCounter
from gpuwatch.analysis.health import GpuFacts, HealthThresholds, Verdict, VerdictCache, gpu_verdict, host_verdict
from gpuwatch.analysis.throttle import ThrottleSample, ThrottleWindow, accumulate_reason_seconds
from gpuwatch.model import GpuIdentity, GpuProcess, GpuReading, GpuStatus, Snapshot
from gpuwatch.nvml import GpuLost, NvmlReader, NvmlSessionLost, NvmlUnavailable, PollFailed, XidWatcher
from gpuwatch.stalls import PollSuperseded, StallWatch
from gpuwatch.tokens.tracker import TokenTracker

log = logging.getLogger(__name__)

_STUCK_MIN_S = 0.25
_STUCK_MAX_S = 5.0


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


K = TypeVar("K")


@dataclass(slots=True)
class _Totals(Generic[K]):
    """Reset-safe counters of one kind, and the totals last published.

    The published mapping is shared by every snapshot until a counter moves, and then replaced,
    never changed in place: most of these counts (ECC, replays) stand still for days.
    """

    counters: dict[K, ResetSafeCounter] = field(default_factory=dict)
    published: Mapping[K, float] = field(default_factory=dict)
    source: Mapping[K, float] | None = None  # the raw values last taken in

    def advance(self, raws: Mapping[K, float]) -> Mapping[K, float]:
        if raws is self.source:  # the very values of the last poll (carried from the slow loop)
            return self.published
        self.source = raws
        counters, moved = self.counters, False
        for key, raw in raws.items():
            counter = counters.get(key)
            if counter is None:
                counters[key], moved = ResetSafeCounter(raw), True
            elif raw != counter.last_raw:
                counters[key], moved = counter.advance(raw), True
        if moved:
            self.published = {key: counter.total for key, counter in counters.items()}
        return self.published


@dataclass(slots=True)
class _GpuHistory:
    """What the sampler remembers about one GPU between polls (and across NVML sessions)."""

    throttle: ThrottleWindow
    energy: ResetSafeCounter | None = None
    violations: _Totals[str] = field(default_factory=_Totals)
    ecc: _Totals[tuple[str, str]] = field(default_factory=_Totals)
    pcie: _Totals[str] = field(default_factory=_Totals)
    reason_seconds: Mapping[str, float] = field(default_factory=dict)  # replaced, never changed in place
    processes: tuple[GpuProcess, ...] = ()
    xid_counts: Counter[int] = field(default_factory=Counter)
    recent_xids: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=_RECENT_XIDS))
    xids_published: tuple[Mapping[int, int], tuple[tuple[float, int], ...]] | None = None  # until the next Xid
    verdicts: VerdictCache = field(default_factory=VerdictCache)

    def xids(self) -> tuple[Mapping[int, int], tuple[tuple[float, int], ...]]:
        """Xid counts and recent Xids as published: one copy per new Xid, not one per poll."""
        if self.xids_published is None:
            self.xids_published = (dict(self.xid_counts), tuple(self.recent_xids))
        return self.xids_published


def _history_key(identity: GpuIdentity) -> str:
    # By UUID, so a GPU keeps its counters even if a driver reload numbers the GPUs differently.
    return identity.uuid or f"#{identity.index}"


def _pcie_counts(reading: GpuReading) -> dict[str, float]:
    counts: dict[str, float] = {}
    if reading.pcie_replay_errors is not None:
        counts["replay_errors"] = reading.pcie_replay_errors
    if reading.pcie_transmit_bytes is not None:
        counts["transmit_bytes"] = reading.pcie_transmit_bytes
    if reading.pcie_receive_bytes is not None:
        counts["receive_bytes"] = reading.pcie_receive_bytes
    return counts


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
        monotonic: Callable[[], float] = time.monotonic,
        tokens: TokenTracker | None = None,
    ) -> None:
        self._reader_factory = reader_factory
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self.process_interval_s = process_interval_s
        self.health = health or HealthThresholds()
        self._event_thread = event_thread
        self.tokens = tokens
        self._reader: NvmlReader | None = None
        self._events: XidWatcher | None = None
        self._nvml_error: str | None = "not polled yet"
        self._open_backoff = Backoff()
        self._errors_before: Counter[tuple[int, str]] = Counter()  # of readers closed since start
        self._history: dict[str, _GpuHistory] = {}
        self._next_processes_at = float("-inf")
        self._polls = 0
        self._stalls = StallWatch(monotonic, clock.time)
        self._stop = threading.Event()
        self._wake = threading.Event()  # cuts the wait between polls short: stop, or a new interval
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self.latest = Snapshot(timestamp=clock.time(), nvml_up=False, nvml_error=self._nvml_error)
        self.ready = threading.Event()  # set after the first poll, whatever its outcome
        self.on_poll: Callable[[Snapshot], None] | None = None  # after each poll, e.g. pre-render /metrics

    @property
    def poll_interval_s(self) -> float:
        return self._poll_interval_s

    @poll_interval_s.setter
    def poll_interval_s(self, seconds: float) -> None:
        """A new interval (SIGHUP) applies to the wait already under way, not only the next one."""
        self._poll_interval_s = seconds
        self._wake.set()

    @property
    def stuck_after_s(self) -> float:
        """Wall time after which a GPU read counts as hung: one poll interval, within 0.25-5 s."""
        return min(max(self._clock.to_wall(self._poll_interval_s), _STUCK_MIN_S), _STUCK_MAX_S)

    # -- one poll ---------------------------------------------------------------------------------

    def poll_once(self) -> Snapshot:
        """Poll every GPU once, publish and return the snapshot.

        Raises :class:`PollSuperseded` when the stall watcher left this poll behind in a hung read.
        """
        generation = self._stalls.generation
        started = self._clock.time()
        wall_started = time.perf_counter()
        reader = self._ensure_reader(started)
        gpus: tuple[GpuStatus, ...] = ()
        if reader is not None:
            try:
                gpus = self._poll_gpus(reader, started, generation)
            except NvmlSessionLost as exc:
                self._drop_reader(reader, exc)
                reader = None
        self._polls += 1
        now = self._clock.time()
        errors = reader.error_counts() if reader else {}
        if self._errors_before:  # only after a driver reload
            errors = dict(self._errors_before + Counter(errors))
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
            nvml_errors_total=errors,
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
        if not self._open_backoff.due(now):
            return None
        reader = self._reader_factory()
        try:
            reader.open()
        except NvmlUnavailable as exc:
            self._nvml_error = str(exc)
            self._open_backoff = self._open_backoff.failed(now)
            log.error("%s; retrying in %.0f s", exc, self._open_backoff.next_at - now)
            return None
        self._reader, self._nvml_error, self._open_backoff = reader, None, Backoff()
        self._events = reader.open_events()
        if self._events is not None and self._event_thread:
            self._events.start()
        return reader

    def _drop_reader(self, reader: NvmlReader, exc: NvmlSessionLost) -> None:
        """NVML went away under us: close this session and open a new one from the next poll on."""
        log.error("NVML stopped answering (%s): the driver was unloaded or reloaded; opening NVML again", exc)
        self._errors_before += Counter(reader.error_counts())
        self._close_reader()
        self._nvml_error = f"NVML session lost ({exc}); opening it again"
        self._open_backoff = Backoff()

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        events, self._events = self._events, None
        if events is not None:
            events.close()
        if reader is not None:
            reader.close()

    def _history_of(self, identity: GpuIdentity) -> _GpuHistory:
        key = _history_key(identity)
        history = self._history.get(key)
        if history is None:
            window = ThrottleWindow(
                length_seconds=self.health.window_seconds, max_gap_seconds=max(5.0, 3 * self._poll_interval_s)
            )
            history = self._history[key] = _GpuHistory(throttle=window)
        return history

    def _take_events(self, reader: NvmlReader) -> None:
        if self._events is None:
            return
        if not self._event_thread:
            self._events.pump(0)
        for event in self._events.drain():
            if event.gpu_index < reader.gpu_count:
                history = self._history_of(reader.identity(event.gpu_index))
                history.xid_counts[event.xid] += 1
                history.recent_xids.append((event.timestamp, event.xid))
                history.xids_published = None

    def _poll_gpus(self, reader: NvmlReader, started: float, generation: int) -> tuple[GpuStatus, ...]:
        self._take_events(reader)
        refresh_processes = started >= self._next_processes_at
        if refresh_processes:
            self._next_processes_at = started + self.process_interval_s
        statuses = []
        for index in range(reader.gpu_count):
            stuck_since = self._stalls.stuck_since(index)
            if stuck_since is not None:
                statuses.append(self._stale(reader.identity(index), stuck_since))
                continue
            outcome = self._read(reader, index, refresh_processes, generation)
            statuses.append(self._status(reader.identity(index), outcome, refresh_processes))
        return tuple(statuses)

    def _read(
        self, reader: NvmlReader, index: int, slow: bool, generation: int
    ) -> tuple[GpuReading, tuple[GpuProcess, ...] | None] | GpuLost | PollFailed:
        """Every NVML call for one GPU in one poll, watched for stalls (see the module doc)."""
        self._stalls.begin(generation, index)
        try:
            reading = reader.read(index, slow=slow)
            outcome: tuple[GpuReading, tuple[GpuProcess, ...] | None] | GpuLost | PollFailed = (
                reading,
                reader.processes(index) if slow else None,
            )
        except (GpuLost, PollFailed) as exc:
            outcome = exc
        finally:
            self._end_read(generation, index)
        return outcome

    def _end_read(self, generation: int, index: int) -> None:
        try:
            self._stalls.end(generation, index)
        except PollSuperseded as exc:
            log.warning("%s; polling it again", exc)
            raise

    def check_stalled(self) -> bool:
        """Leave behind a read that has run past :attr:`stuck_after_s`; True when it did.

        The stall watcher calls this a few times per threshold; after True it starts a new loop
        thread. The GPU read is marked stuck until the call returns.
        """
        stuck = self._stalls.leave_behind(self.stuck_after_s)
        if stuck is None:
            return False
        log.error(
            "GPU %d: an NVML call has not returned for %.1f s; showing its last values as stale "
            "and polling the other GPUs without it until the call returns",
            stuck.index,
            stuck.for_s,
        )
        return True

    def _stale(self, identity: GpuIdentity, since: float) -> GpuStatus:
        """A GPU whose read hangs: the last poll's values, marked stale (or down if it had none)."""
        xid_errors, recent_xids = self._history_of(identity).xids()
        now = self._clock.time()
        error = f"NVML call not returning for {now - since:.0f} s"
        verdict = self._down_verdict(identity, error, now - since, recent_xids, now)
        gpus = self.latest.gpus
        previous = gpus[identity.index] if identity.index < len(gpus) else None
        if previous is None or previous.reading is None or previous.identity.uuid != identity.uuid:
            return GpuStatus(
                identity, up=False, error=error, xid_errors=xid_errors, recent_xids=recent_xids, verdict=verdict
            )
        return replace(
            previous,
            up=False,
            error=error,
            stale_since=since,
            xid_errors=xid_errors,
            recent_xids=recent_xids,
            verdict=verdict,
        )

    def _down_verdict(
        self,
        identity: GpuIdentity,
        error: str,
        stale_seconds: float | None,
        recent_xids: tuple[tuple[float, int], ...],
        now: float,
    ) -> Verdict:
        facts = GpuFacts(
            index=identity.index,
            up=False,
            error=error,
            stale_seconds=stale_seconds,
            recent_xids=recent_xids,
            now=now,
        )
        return gpu_verdict(facts, self.health)

    def _status(
        self,
        identity: GpuIdentity,
        outcome: tuple[GpuReading, tuple[GpuProcess, ...] | None] | GpuLost | PollFailed,
        refresh_processes: bool,
    ) -> GpuStatus:
        history = self._history_of(identity)
        xid_errors, recent_xids = history.xids()
        if isinstance(outcome, Exception):
            if isinstance(outcome, PollFailed):
                log.warning("GPU %d: poll failed: %s", identity.index, outcome)
            error = str(outcome)
            verdict = self._down_verdict(identity, error, None, recent_xids, self._clock.time())
            return GpuStatus(
                identity, up=False, error=error, xid_errors=xid_errors, recent_xids=recent_xids, verdict=verdict
            )
        reading, processes = outcome
        sample = _throttle_sample(reading, identity.max_clocks_hertz.get("sm"))
        window = history.throttle
        span = window.add(sample)
        reasons = sample.reasons
        if reasons:
            if "other" in reasons:
                reasons = reasons - {"other"}
            history.reason_seconds = accumulate_reason_seconds(history.reason_seconds, reasons, span)
        if reading.energy_joules is not None:
            energy = history.energy
            if energy is None:
                energy = history.energy = ResetSafeCounter(reading.energy_joules)
            else:
                energy = history.energy = energy.advance(reading.energy_joules)
        else:
            energy = history.energy
        ecc = reading.ecc_errors
        if processes is not None:
            history.processes = processes
        throttle = window.summary()
        facts = GpuFacts(
            index=identity.index,
            up=True,
            temperature_celsius=reading.temperature_celsius,
            margin_celsius=reading.temperature_margin_celsius,
            thresholds_celsius=identity.temperature_thresholds_celsius,
            throttle=throttle,
            uncorrected_volatile_ecc=ecc.get(("uncorrected", "volatile")),
            row_remap_pending=reading.row_remap_pending,
            row_remap_failure=reading.row_remap_failure,
            retired_pages_pending=reading.retired_pages_pending,
            recent_xids=recent_xids,
            now=self._clock.time(),
        )
        return GpuStatus(
            identity=identity,
            up=True,
            reading=reading,
            energy_joules_total=None if energy is None else energy.total,
            energy_resets=0 if energy is None else energy.resets,
            violation_seconds_total=history.violations.advance(reading.violation_seconds),
            ecc_errors_total=history.ecc.advance(ecc),
            pcie_counters_total=history.pcie.advance(_pcie_counts(reading)),
            processes=history.processes,
            throttle=throttle,
            throttle_class=window.last_class,
            clocks_event_seconds=history.reason_seconds,
            xid_errors=xid_errors,
            recent_xids=recent_xids,
            verdict=history.verdicts.judge(facts, self.health),
        )

    # -- the loop ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Poll in a background thread until :meth:`stop`, with a watcher for hung GPU reads."""
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
                self.poll_once()
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
        while not self._stop.wait(self.stuck_after_s / 4):
            if self.check_stalled():
                self._start_loop()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop polling. A read hung in a driver call is left behind (its thread is a daemon), and
        NVML is then not shut down under it."""
        self._stop.set()
        self._wake.set()
        for thread in (self._thread, self._watcher):
            if thread is not None:
                thread.join(timeout_s)
        if (self._thread is None or not self._thread.is_alive()) and not self._stalls.any_stuck:
            self._close_reader()
