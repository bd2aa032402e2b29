"""`gpuwatch tune power-limit`: sweep GPUs' power limits, measure work per joule at each, restore.

For each limit it enforces the limit on every GPU named, waits for power to settle, then measures
over the dwell: tokens per second from the token source (or, without one, the GPUs' own work
measure: busy SM cycles, utilization x SM clock, summed over the GPUs) and tokens per joule from
the energy counters (``gpuwatch_gpu_energy_joules_total``, reset-safe). Whatever happens (the
sweep's end, Ctrl-C, SIGTERM, an error) every GPU gets its original limit back; a restore that
fails is reported loudly and makes the run fail.

It runs on the runtime's assembly (:mod:`gpuwatch.runtime`), polled from this thread, so on a
simulated host (``--simulate``) it runs on simulated time and its tests do not depend on the speed
of the machine.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpuwatch.analysis.tuning import (
    Recommendation,
    TunePoint,
    WorkSample,
    point,
    recommend,
    settled,
)
from gpuwatch.model import GpuStatus, Snapshot
from gpuwatch.nvml.power_limit import PowerLimitControl, PowerLimitError
from gpuwatch.runtime import Runtime

SETTLE_SPAN_S = 10.0  # power is averaged over spans this long to see whether it has settled
SETTLE_MAX_S = 120.0  # a limit's dwell starts after this long even if power still drifts
PROGRESS_EVERY_S = 15.0


class TuneError(Exception):
    """The sweep cannot start or go on; the message says why."""


@dataclass(frozen=True, slots=True)
class TunePlan:
    """What to sweep, on which GPUs, measured how."""

    gpus: tuple[int, ...]
    limits_watts: tuple[float, ...]
    dwell_s: float
    min_throughput: float  # 0..1 of the best throughput
    source: str | None = None  # a token source's name; None: the GPUs' own work measure
    poll_interval_s: float = 1.0


@dataclass
class TuneResult:
    """The sweep's outcome, as the JSON document describes it."""

    gpus: tuple[int, ...]
    source: str | None
    original_limits_watts: dict[int, float]
    restored: bool = False
    points: list[TunePoint] = field(default_factory=list)
    recommended: Recommendation | None = None
    restore_errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """``{"gpus", "source", "original_limits_watts", "restored", "points", "recommended"}``."""
        rec = self.recommended
        return {
            "gpus": list(self.gpus),
            "source": self.source,
            "original_limits_watts": {str(i): w for i, w in self.original_limits_watts.items()},
            "restored": self.restored,
            "points": [
                {
                    "limit_watts": p.limit_watts,
                    "tokens_per_second": p.tokens_per_second,
                    "tokens_per_joule": p.tokens_per_joule,
                    "power_watts": p.power_watts,
                }
                for p in self.points
            ],
            "recommended": None
            if rec is None
            else {
                "limit_watts": rec.limit_watts,
                "throughput_ratio": rec.throughput_ratio,
                "energy_ratio": rec.energy_ratio,
            },
        }


class Tuner:
    """One sweep over a started runtime (``threads=False``: this thread polls it)."""

    def __init__(
        self,
        runtime: Runtime,
        control: PowerLimitControl,
        plan: TunePlan,
        wait: Callable[[float], None],
        progress: Callable[[str], None],
    ) -> None:
        self._rt, self._control, self._plan = runtime, control, plan
        self._wait, self._progress = wait, progress
        self._busy_cycles = 0.0  # the GPUs' own work measure, integrated poll by poll
        self._changed: set[int] = set()  # GPUs whose limit this sweep has set (or may have set)
        self._last_poll_s: float | None = None

    def original_limits(self) -> dict[int, float]:
        """Every GPU's limit in force now; refuses (TuneError) when one cannot be read or a limit
        of the plan is outside a GPU's range."""
        originals = {}
        for index in self._plan.gpus:
            try:
                limits = self._control.limits(index)
            except PowerLimitError as exc:
                raise TuneError(f"{exc}; not starting, since its limit could not be restored") from exc
            for watts in self._plan.limits_watts:
                if not limits.min_watts <= watts <= limits.max_watts:
                    raise TuneError(
                        f"GPU {index} accepts power limits from {limits.min_watts:g} to {limits.max_watts:g} W,"
                        f" not {watts:g} W"
                    )
            originals[index] = limits.current_watts
        return originals

    def run(self, result: TuneResult) -> TuneResult:
        """Sweep (filling ``result`` as it goes, so an interruption keeps what was measured), then
        restore the original limits whatever happened (on the GPUs whose limit it set)."""
        try:
            self._poll()
            for watts in self._plan.limits_watts:
                result.points.append(self._measure(watts))
            result.recommended = recommend(result.points, self._plan.min_throughput)
        finally:
            self._restore(result)
        return result

    def _restore(self, result: TuneResult) -> None:
        """Every changed GPU back to its original limit. Ctrl-C, SIGTERM, SIGHUP or SIGQUIT during
        the restore do not cut it short: on the main thread they are only noted while it runs (and
        elsewhere each GPU is tried twice); the restore finishes, then the interruption goes on."""
        with _signals_held() as held:
            self._restore_each(result)
        if held:
            raise KeyboardInterrupt

    def _restore_each(self, result: TuneResult) -> None:
        interrupted = False
        for index, watts in result.original_limits_watts.items():
            if index not in self._changed:
                continue
            for _ in range(2):
                try:
                    self._control.set(index, watts)
                    break
                except PowerLimitError as exc:
                    result.restore_errors.append(str(exc))
                    break
                except KeyboardInterrupt:
                    interrupted = True  # try this GPU once more, then the rest
            else:
                result.restore_errors.append(f"GPU {index}: restoring {watts:g} W was interrupted twice")
        result.restored = not result.restore_errors
        if interrupted:
            raise KeyboardInterrupt

    def _measure(self, watts: float) -> TunePoint:
        gpus = ", ".join(map(str, self._plan.gpus))
        for index in self._plan.gpus:
            self._changed.add(index)
            try:
                self._control.set(index, watts)
            except PowerLimitError as exc:
                raise TuneError(str(exc)) from exc
        self._progress(f"{watts:g} W on GPU {gpus}: waiting for power to settle")
        means: list[float] = []
        waited = 0.0
        while not settled(means) and waited < SETTLE_MAX_S:
            start = self._sample(self._poll())
            self._run_for(SETTLE_SPAN_S)
            end = self._sample(self._poll())
            means.append((end.joules - start.joules) / max(end.time_s - start.time_s, 1e-9))
            waited += end.time_s - start.time_s
        start = self._sample(self._poll())
        self._progress(
            f"{watts:g} W: settled at {means[-1]:.0f} W after {waited:.0f} s; measuring for {self._plan.dwell_s:g} s"
        )
        elapsed, reported = 0.0, 0.0
        snapshot = self._poll()
        while elapsed < self._plan.dwell_s:
            self._wait(self._plan.poll_interval_s)
            snapshot = self._poll()
            elapsed = self._sample(snapshot).time_s - start.time_s
            if elapsed - reported >= PROGRESS_EVERY_S and elapsed < self._plan.dwell_s:
                reported = elapsed
                so_far = point(watts, start, self._sample(snapshot))
                self._progress(
                    f"{watts:g} W: {elapsed:.0f}/{self._plan.dwell_s:g} s, {so_far.tokens_per_second:.4g}/s,"
                    f" {so_far.tokens_per_joule:.4g}/J, {so_far.power_watts:.0f} W"
                )
        measured = point(watts, start, self._sample(snapshot))
        self._progress(
            f"{watts:g} W: {measured.tokens_per_second:.4g}/s, {measured.tokens_per_joule:.4g}/J,"
            f" {measured.power_watts:.0f} W"
        )
        return measured

    def _run_for(self, seconds: float) -> None:
        waited = 0.0
        while waited < seconds:
            self._wait(self._plan.poll_interval_s)
            self._poll()
            waited += self._plan.poll_interval_s

    def _poll(self) -> Snapshot:
        """One poll and one scrape of the token sources; integrates the GPUs' busy SM cycles."""
        snapshot = self._rt.step()
        self._rt.scrape_tokens()
        now = self._time(snapshot)
        if self._last_poll_s is not None:
            span = now - self._last_poll_s
            for status in self._selected(snapshot):
                if status.reading is not None:
                    busy = status.reading.utilization_ratio.get("gpu", 0.0)
                    self._busy_cycles += busy * status.reading.clocks_hertz.get("sm", 0.0) * span
        self._last_poll_s = now
        return snapshot

    def _selected(self, snapshot: Snapshot) -> list[GpuStatus]:
        return [g for g in snapshot.gpus if g.identity.index in self._plan.gpus]

    def _time(self, snapshot: Snapshot) -> float:
        stamps = [g.reading.timestamp for g in self._selected(snapshot) if g.reading is not None]
        if not stamps:
            raise TuneError("the GPUs gave no reading")
        return max(stamps)

    def _sample(self, snapshot: Snapshot) -> WorkSample:
        joules = 0.0
        for status in self._selected(snapshot):
            if status.energy_joules_total is None:
                raise TuneError(f"GPU {status.identity.index} reports no energy counter; cannot measure per joule")
            joules += status.energy_joules_total
        now = self._time(snapshot)
        if self._plan.source is None:
            return WorkSample(now, self._busy_cycles / 1e9, joules, now)  # gigacycles: readable figures
        work, scraped_at = self._tokens(snapshot)
        return WorkSample(now, work, joules, scraped_at)

    def _tokens(self, snapshot: Snapshot) -> tuple[float, float]:
        """The source's generated tokens and when they were scraped (the scrape's midpoint, as the
        token tracker pairs them with energy)."""
        for source in snapshot.sources:
            if source.name == self._plan.source:
                if not source.up or source.last_scrape_timestamp is None:
                    raise TuneError(f"token source {source.name!r} is down: {source.error}")
                midpoint = source.last_scrape_timestamp - (source.scrape_duration_seconds or 0.0) / 2
                return source.tokens_total.get("generation", 0.0), midpoint
        names = ", ".join(s.name for s in snapshot.sources) or "none"
        raise TuneError(f"no token source named {self._plan.source!r} (sources: {names})")


def render(result: TuneResult, unit: str) -> list[str]:
    """The curve and the recommendation as lines of text."""
    lines = [f"{'limit':>7}  {unit + '/s':>14}  {unit + '/J':>10}  {'power':>7}"]
    for p in result.points:
        lines.append(
            f"{p.limit_watts:>5g} W  {p.tokens_per_second:>14.1f}  {p.tokens_per_joule:>10.4f}  {p.power_watts:>5.0f} W"
        )
    rec = result.recommended
    if rec is not None:
        lines.append(
            f"recommended: {rec.limit_watts:g} W: {100 * rec.throughput_ratio:.1f} % of the {unit}"
            f" for {100 * rec.energy_ratio:.0f} % of the energy"
        )
    return lines


def pick_source(names: Sequence[str], wanted: str | None) -> str | None:
    """The source to measure: ``wanted`` if given (it must exist), else None (the GPUs' own measure)."""
    if wanted is not None and wanted not in names:
        raise TuneError(f"no token source named {wanted!r} (sources: {', '.join(names) or 'none'})")
    return wanted


_HELD_SIGNALS = tuple(
    s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None), getattr(signal, "SIGQUIT", None)) if s
)


@contextlib.contextmanager
def _signals_held() -> Any:
    """While the block runs, the stopping signals only append to the list yielded (main thread
    only, where Python runs signal handlers; elsewhere nothing changes)."""
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in _HELD_SIGNALS}
    try:
        yield held
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
