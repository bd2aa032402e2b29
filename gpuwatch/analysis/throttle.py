"""Why a GPU's clocks are held down: each poll classified, and a sliding window over the polls.

Classes, in precedence order (when several reasons are active in one poll, the first that applies
names the poll; the order runs from "something is wrong with the facility" to "nothing is"):

1. ``power_brake``: ``hw_power_brake`` — an external power-brake signal (PSU, chassis).
2. ``thermal``: ``sw_thermal`` or ``hw_thermal`` — the GPU is at its thermal limits.
3. ``hw_slowdown``: ``hw_slowdown`` with neither of the above — HW slowdown nothing explains.
4. ``power_cap``: ``sw_power_cap`` — the SW power-cap algorithm; normal under LLM load.
5. ``clocks_setting``: ``applications_clocks``, ``display_clocks`` or ``sync_boost`` — a setting.
6. ``idle``: the ``idle`` reason, or a GPU with no work.
7. ``unknown``: busy, SM clock below ``low_clock_ratio`` of its max, and no reason at all.
8. ``none``: full clocks.

Thermal ranks above HW slowdown because HW thermal slowdown sets both bits; power brake ranks
above thermal because a brake is a facility fault whatever the temperature.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gpuwatch.labels import THROTTLE_CLASSES
from gpuwatch.records import ThrottleSummary, record

CLASSES = THROTTLE_CLASSES
_PRECEDENCE = ("power_brake", "thermal", "hw_slowdown", "power_cap", "clocks_setting", "idle", "unknown", "none")

LOW_CLOCK_RATIO = 0.9
# The ratios of a window spent all in one class, shared by every summary of such a window (read only).
_ALL_IN = {cls: {c: float(c == cls) for c in CLASSES} for cls in CLASSES}


@record
class ThrottleSample:
    """One poll's view of a GPU's clocks."""

    timestamp: float
    reasons: frozenset[str]
    busy: bool
    sm_clock_ratio: float | None  # SM clock / max SM clock; None when either is not reported


def classify(sample: ThrottleSample, low_clock_ratio: float = LOW_CLOCK_RATIO) -> str:
    """The class of one poll, by the precedence in the module docstring."""
    r = sample.reasons
    if "hw_power_brake" in r:
        return "power_brake"
    if "sw_thermal" in r or "hw_thermal" in r:
        return "thermal"
    if "hw_slowdown" in r:
        return "hw_slowdown"
    if "sw_power_cap" in r:
        return "power_cap"
    if r & {"applications_clocks", "display_clocks", "sync_boost"}:
        return "clocks_setting"
    if "idle" in r or not sample.busy:
        return "idle"
    if sample.sm_clock_ratio is not None and sample.sm_clock_ratio < low_clock_ratio:
        return "unknown"
    return "none"


@dataclass(slots=True)
class ThrottleWindow:
    """A sliding window of classified polls, time-weighted.

    Each poll stands for the time since the poll before it (at most ``max_gap_seconds``, so a
    stalled loop does not paint an hour with one sample). The window keeps the polls whose span
    ends within the last ``length_seconds``; a span that straddles the start is clipped.
    """

    length_seconds: float = 60.0
    max_gap_seconds: float = 5.0
    low_clock_ratio: float = LOW_CLOCK_RATIO
    _polls: deque[tuple[float, float, str, float | None]] = field(default_factory=deque)  # begin, end, class, loss
    _last_timestamp: float | None = None
    # Running totals over the polls held, so a summary costs the same however long the window is.
    _time_in: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0.0))
    _loss_sum: float = 0.0
    _loss_count: int = 0
    _class_polls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))  # polls held, by class

    def add(self, sample: ThrottleSample) -> float:
        """Add one poll; returns the span it stands for (0 for the first poll)."""
        if self._last_timestamp is None:
            span = 0.0
        else:
            span = min(max(0.0, sample.timestamp - self._last_timestamp), self.max_gap_seconds)
        self._last_timestamp = sample.timestamp
        cls = classify(sample, self.low_clock_ratio)
        loss = 1.0 - sample.sm_clock_ratio if sample.busy and sample.sm_clock_ratio is not None else None
        self._polls.append((sample.timestamp - span, sample.timestamp, cls, loss))
        self._count(span, cls, loss, +1)
        start = sample.timestamp - self.length_seconds
        while self._polls and self._polls[0][1] <= start:
            begin, end, old_cls, old_loss = self._polls.popleft()
            self._count(end - begin, old_cls, old_loss, -1)
        return span

    def _count(self, span: float, cls: str, loss: float | None, sign: int) -> None:
        self._time_in[cls] += sign * span
        self._class_polls[cls] += sign
        if loss is not None:
            self._loss_sum += sign * loss
            self._loss_count += sign

    def summary(self) -> ThrottleSummary:
        if not self._polls:
            return ThrottleSummary(0.0, dict.fromkeys(CLASSES, 0.0), None, None)
        start = self._polls[-1][1] - self.length_seconds
        only = self._polls[0][2]
        if self._class_polls[only] == len(self._polls):  # one class throughout (steady load): no sums
            begin = self._polls[0][0]
            covered = self._time_in[only] - (start - begin if begin < start else 0.0)
            covered = covered if covered > 1e-9 else 0.0  # dust, as below
            clock_loss = self._loss_sum / self._loss_count if self._loss_count else None
            return ThrottleSummary(covered, _ALL_IN[only], only, clock_loss)
        time_in = dict(self._time_in)
        begin, _, first_cls, _ = self._polls[0]
        if begin < start:  # only the oldest poll can straddle the start: clip it
            time_in[first_cls] -= start - begin
        # Adding and taking away floats leaves dust where a class has left the window.
        covered = 0.0
        for c, t in time_in.items():
            if t > 1e-9:
                covered += t
            else:
                time_in[c] = 0.0
        if covered <= 0:  # a single poll: its class, for no measurable time yet
            only = self._polls[-1][2]
            ratios = {c: float(c == only) for c in CLASSES}
        else:
            ratios = {c: t / covered for c, t in time_in.items()}
        dominant = _PRECEDENCE[0]
        for c in _PRECEDENCE:  # the largest share; on a tie, the class first in precedence
            if ratios[c] > ratios[dominant]:
                dominant = c
        clock_loss = self._loss_sum / self._loss_count if self._loss_count else None
        return ThrottleSummary(covered, ratios, dominant, clock_loss)


def accumulate_reason_seconds(totals: Mapping[str, float], reasons: Iterable[str], span: float) -> dict[str, float]:
    """Add ``span`` seconds to every active reason (the per-reason ``_seconds_total`` counters)."""
    out = dict(totals)
    for reason in reasons:
        out[reason] = out.get(reason, 0.0) + span
    return out
