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

CLASSES = ("none", "idle", "power_cap", "thermal", "power_brake", "hw_slowdown", "clocks_setting", "unknown")
_PRECEDENCE = ("power_brake", "thermal", "hw_slowdown", "power_cap", "clocks_setting", "idle", "unknown", "none")

LOW_CLOCK_RATIO = 0.9


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class ThrottleSummary:
    """The window at a glance: time fractions per class, the dominant one, and clock loss."""

    window_seconds: float  # time the window actually covers (less than its length after a start)
    ratios: Mapping[str, float]
    dominant: str | None  # None when the window holds no time yet
    clock_loss_ratio: float | None  # mean 1 - SM/max over busy polls; None when never busy


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
    _polls: deque[tuple[float, float, str, ThrottleSample]] = field(default_factory=deque)
    _last_timestamp: float | None = None

    def add(self, sample: ThrottleSample) -> float:
        """Add one poll; returns the span it stands for (0 for the first poll)."""
        if self._last_timestamp is None:
            span = 0.0
        else:
            span = min(max(0.0, sample.timestamp - self._last_timestamp), self.max_gap_seconds)
        self._last_timestamp = sample.timestamp
        self._polls.append((sample.timestamp - span, sample.timestamp, classify(sample, self.low_clock_ratio), sample))
        start = sample.timestamp - self.length_seconds
        while self._polls and self._polls[0][1] <= start:
            self._polls.popleft()
        return span

    def summary(self) -> ThrottleSummary:
        if not self._polls:
            return ThrottleSummary(0.0, {c: 0.0 for c in CLASSES}, None, None)
        end = self._polls[-1][1]
        start = end - self.length_seconds
        time_in = dict.fromkeys(CLASSES, 0.0)
        for begin, finish, cls, _ in self._polls:
            time_in[cls] += finish - max(begin, start)
        covered = sum(time_in.values())
        if covered <= 0:  # a single poll: its class, for no measurable time yet
            only = self._polls[-1][2]
            ratios = {c: float(c == only) for c in CLASSES}
        else:
            ratios = {c: t / covered for c, t in time_in.items()}
        dominant = max(_PRECEDENCE, key=lambda c: (ratios[c], -_PRECEDENCE.index(c)))
        return ThrottleSummary(covered, ratios, dominant, _clock_loss(s for *_, s in self._polls))


def _clock_loss(samples: Iterable[ThrottleSample]) -> float | None:
    """Mean of 1 - SM clock / max over busy polls; idle polls are left out."""
    losses = [1.0 - s.sm_clock_ratio for s in samples if s.busy and s.sm_clock_ratio is not None]
    return sum(losses) / len(losses) if losses else None


def accumulate_reason_seconds(totals: Mapping[str, float], reasons: Iterable[str], span: float) -> dict[str, float]:
    """Add ``span`` seconds to every active reason (the per-reason ``_seconds_total`` counters)."""
    out = dict(totals)
    for reason in reasons:
        out[reason] = out.get(reason, 0.0) + span
    return out
