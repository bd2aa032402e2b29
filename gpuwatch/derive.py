"""One GPU, one poll: what the reader got (or why it got nothing) and the GPU's history -> its status.

No NVML, no threads, no clock: the sampler passes the time in, and tests drive :func:`derive` from
a table. The history is the GPU's own state between polls (throttle window, reset-safe counters,
Xids, the last status read); :func:`derive` advances it in place rather than copying it, because it
is built for one GPU on every poll and only that GPU's poll touches it. Histories are kept per UUID
by the caller, so a GPU keeps its counters across driver reloads that renumber GPUs.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from gpuwatch.analysis import thermal
from gpuwatch.analysis.counters import ResetSafeCounter
from gpuwatch.analysis.health import GpuFacts, HealthThresholds, VerdictCache, gpu_verdict
from gpuwatch.analysis.throttle import ThrottleSample, ThrottleWindow, accumulate_reason_seconds
from gpuwatch.analysis.xid_catalogue import recommended_action
from gpuwatch.model import GpuIdentity, GpuProcess, GpuReading, GpuStatus

RECENT_XIDS = 32
BUSY_UTILIZATION = 0.05  # a GPU this busy or more counts as under load for the throttle classes

K = TypeVar("K")


# -- what a poll of one GPU came to ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Read:
    """The GPU answered: its reading, and its processes when this was a slow poll (else None)."""

    reading: GpuReading
    processes: tuple[GpuProcess, ...] | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The GPU did not answer this poll: lost, or NVML said Unknown."""

    error: str


@dataclass(frozen=True, slots=True)
class Hung:
    """A read of this GPU began at ``since`` (daemon time) and has not returned."""

    since: float


Outcome = Read | Failed | Hung


# -- what is remembered between polls ------------------------------------------------------------


@dataclass(slots=True)
class Totals(Generic[K]):
    """Reset-safe counters of one kind, and the totals last published.

    The published mapping is shared by every status until a counter moves, and then replaced,
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
class GpuHistory:
    """What is remembered about one GPU between polls (and across NVML sessions)."""

    throttle: ThrottleWindow
    energy: ResetSafeCounter | None = None
    violations: Totals[str] = field(default_factory=Totals)
    ecc: Totals[tuple[str, str]] = field(default_factory=Totals)
    pcie: Totals[str] = field(default_factory=Totals)
    reason_seconds: Mapping[str, float] = field(default_factory=dict)  # replaced, never changed in place
    processes: tuple[GpuProcess, ...] = ()
    xid_counts: Counter[int] = field(default_factory=Counter)
    recent_xids: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=RECENT_XIDS))
    xids_published: tuple[Mapping[int, int], tuple[tuple[float, int], ...]] | None = None  # until the next Xid
    last_read: GpuStatus | None = None  # the last status with a reading: what a hung GPU shows
    verdicts: VerdictCache = field(default_factory=VerdictCache)
    nvlink_bytes: Totals[tuple[int, str]] = field(default_factory=Totals)
    nvlink_errors: Totals[tuple[int, str]] = field(default_factory=Totals)
    xid_actions: Mapping[int, str] = field(default_factory=dict)  # replaced with xids_published

    @classmethod
    def start(cls, health: HealthThresholds, poll_interval_s: float) -> GpuHistory:
        """A GPU seen for the first time; a gap of three polls (at least 5 s) breaks its throttle window."""
        window = ThrottleWindow(length_seconds=health.window_seconds, max_gap_seconds=max(5.0, 3 * poll_interval_s))
        return cls(throttle=window)

    def record_xid(self, timestamp: float, xid: int) -> None:
        self.xid_counts[xid] += 1
        self.recent_xids.append((timestamp, xid))
        self.xids_published = None

    def xids(self) -> tuple[Mapping[int, int], tuple[tuple[float, int], ...]]:
        """Xid counts and recent Xids as published: one copy per new Xid, not one per poll."""
        if self.xids_published is None:
            self.xids_published = (dict(self.xid_counts), tuple(self.recent_xids))
            self.xid_actions = {xid: recommended_action(xid) for xid in self.xid_counts}
        return self.xids_published


def history_key(identity: GpuIdentity) -> str:
    """By UUID, so a GPU keeps its history even if a driver reload numbers the GPUs differently."""
    return identity.uuid or f"#{identity.index}"


# -- the step -------------------------------------------------------------------------------------


def derive(
    history: GpuHistory, identity: GpuIdentity, outcome: Outcome, now: float, health: HealthThresholds
) -> GpuStatus:
    """This poll's status of one GPU; advances ``history`` (see the module doc)."""
    if isinstance(outcome, Read):
        return _answered(history, identity, outcome, now, health)
    xid_errors, recent_xids = history.xids()
    if isinstance(outcome, Failed):
        error, stale_seconds = outcome.error, None
        history.last_read = None  # a hang after this shows no values older than the failure
    else:
        error, stale_seconds = f"NVML call not returning for {now - outcome.since:.0f} s", now - outcome.since
    facts = GpuFacts(
        index=identity.index, up=False, error=error, stale_seconds=stale_seconds, recent_xids=recent_xids, now=now
    )
    verdict = gpu_verdict(facts, health)
    previous = history.last_read
    if isinstance(outcome, Hung) and previous is not None:  # histories are per UUID: it is this GPU's
        # The last values stay, marked stale: a hung read says nothing new about the GPU.
        return replace(
            previous,
            up=False,
            error=error,
            stale_since=outcome.since,
            xid_errors=xid_errors,
            recent_xids=recent_xids,
            verdict=verdict,
            xid_actions=history.xid_actions,
        )
    return GpuStatus(
        identity,
        up=False,
        error=error,
        xid_errors=xid_errors,
        recent_xids=recent_xids,
        verdict=verdict,
        xid_actions=history.xid_actions,
    )


def _answered(
    history: GpuHistory, identity: GpuIdentity, read: Read, now: float, health: HealthThresholds
) -> GpuStatus:
    reading = read.reading
    sample = throttle_sample(reading, identity.max_clocks_hertz.get("sm"))
    window = history.throttle
    span = window.add(sample)
    reasons = sample.reasons
    if reasons:
        if "other" in reasons:
            reasons = reasons - {"other"}
        history.reason_seconds = accumulate_reason_seconds(history.reason_seconds, reasons, span)
    energy = history.energy
    if reading.energy_joules is not None:
        energy = history.energy = (
            ResetSafeCounter(reading.energy_joules) if energy is None else energy.advance(reading.energy_joules)
        )
    if read.processes is not None:
        history.processes = read.processes
    xid_errors, recent_xids = history.xids()
    throttle = window.summary()
    ecc = reading.ecc_errors
    temperature, margin = reading.temperature_celsius, reading.temperature_margin_celsius
    absolute, tlimit = identity.temperature_thresholds_celsius, identity.temperature_tlimit_celsius
    facts = GpuFacts(
        index=identity.index,
        up=True,
        temperature_celsius=reading.temperature_celsius,
        margin_celsius=reading.temperature_margin_celsius,  # the driver's own: the verdict reads thresholds itself
        thresholds_celsius=identity.temperature_thresholds_celsius,
        throttle=throttle,
        uncorrected_volatile_ecc=ecc.get(("uncorrected", "volatile")),
        row_remap_pending=reading.row_remap_pending,
        row_remap_failure=reading.row_remap_failure,
        retired_pages_pending=reading.retired_pages_pending,
        recent_xids=recent_xids,
        now=now,
        recovery_action=reading.recovery_action,
    )
    status = GpuStatus(
        identity=identity,
        up=True,
        reading=reading,
        temperature_margin_celsius=thermal.margin_celsius(temperature, margin, absolute),
        temperature_thresholds_celsius=thermal.thresholds_celsius(temperature, margin, absolute, tlimit),
        temperature_reference=thermal.reference(absolute, tlimit, margin),
        energy_joules_total=None if energy is None else energy.total,
        energy_resets=0 if energy is None else energy.resets,
        violation_seconds_total=history.violations.advance(reading.violation_seconds),
        ecc_errors_total=history.ecc.advance(ecc),
        pcie_counters_total=history.pcie.advance(pcie_counts(reading)),
        processes=history.processes,
        throttle=throttle,
        clocks_event_seconds=history.reason_seconds,
        xid_errors=xid_errors,
        recent_xids=recent_xids,
        verdict=history.verdicts.judge(facts, health),
        nvlink_bytes_total=history.nvlink_bytes.advance(reading.nvlink_bytes),
        nvlink_errors_total=history.nvlink_errors.advance(reading.nvlink_errors),
        xid_actions=history.xid_actions,
    )
    history.last_read = status
    return status


def throttle_sample(reading: GpuReading, max_sm_hertz: float | None) -> ThrottleSample:
    """One poll's clocks for the throttle window: busy by GPM's SM active where the GPU has GPM (the
    busiest MIG instance under MIG), else by utilization, or (without either) not idle."""
    reasons = reading.clock_event_reasons or frozenset()
    utilization = reading.utilization_ratio.get("gpu")
    busy = utilization >= BUSY_UTILIZATION if utilization is not None else "idle" not in reasons
    if (active := sm_active(reading)) is not None:
        busy = active >= BUSY_UTILIZATION
    sm = reading.clocks_hertz.get("sm")
    return ThrottleSample(
        timestamp=reading.timestamp,
        reasons=reasons,
        busy=busy,
        sm_clock_ratio=sm / max_sm_hertz if sm is not None and max_sm_hertz else None,
    )


def sm_active(reading: GpuReading) -> float | None:
    """GPM's SM active of the GPU, or under MIG of its busiest instance; None without GPM."""
    active = reading.activity_ratio.get("sm_active")
    if active is not None:
        return active
    instances = [a for m in reading.mig_instances if (a := m.activity_ratio.get("sm_active")) is not None]
    return max(instances) if instances else None


def pcie_counts(reading: GpuReading) -> dict[str, float]:
    counts: dict[str, float] = {}
    if reading.pcie_replay_errors is not None:
        counts["replay_errors"] = reading.pcie_replay_errors
    if reading.pcie_transmit_bytes is not None:
        counts["transmit_bytes"] = reading.pcie_transmit_bytes
    if reading.pcie_receive_bytes is not None:
        counts["receive_bytes"] = reading.pcie_receive_bytes
    return counts
