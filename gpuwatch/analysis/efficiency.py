"""Tokens per joule over a sliding window: a token counter against the energy of the GPUs serving it.

Pure functions over two series read on different rhythms: the energy sum of a source's GPUs at each
poll, and the source's token counters at each scrape (stamped at the middle of the request). The
energy at a scrape's instant is interpolated between the polls around it, so both deltas cover the
same interval. Callers start both series afresh after a reset of either counter, which is how a
window containing a reset is dropped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpuwatch.records import Efficiency

DEFAULT_WINDOW_S = 60.0
MIN_WINDOW_S = 10.0
# joules_per_token also has "total": the window's energy over these kinds together (a server's
# prompt and generated tokens), when the source counts both
TOTAL_OF_KINDS = ("generation", "prompt")


@dataclass(frozen=True, slots=True)
class EnergyPoint:
    """The energy counter of a source's GPUs at one poll."""

    timestamp: float
    joules: float  # summed over every GPU of the source


@dataclass(frozen=True, slots=True)
class TokenPoint:
    """A source's token counters at one scrape."""

    timestamp: float
    tokens: Mapping[str, float]  # kind -> counter value


def energy_at(points: Sequence[EnergyPoint], timestamp: float) -> float | None:
    """The energy counter at ``timestamp``, linear between the polls around it; None outside them."""
    if not points or not points[0].timestamp <= timestamp <= points[-1].timestamp:
        return None
    times = [p.timestamp for p in points]
    i = bisect_left(times, timestamp)
    after = points[i]
    if after.timestamp == timestamp or i == 0:
        return after.joules
    before = points[i - 1]
    share = (timestamp - before.timestamp) / (after.timestamp - before.timestamp)
    return before.joules + share * (after.joules - before.joules)


def window_efficiency(
    tokens: Sequence[TokenPoint],
    energy: Sequence[EnergyPoint],
    window_s: float = DEFAULT_WINDOW_S,
    min_window_s: float = MIN_WINDOW_S,
) -> Efficiency | None:
    """Δtokens ÷ Δenergy between the newest scrape the polls cover and the oldest one within
    ``window_s`` of it; None until that span reaches ``min_window_s`` (or the window is filled, see
    below) or when energy did not move.

    Both series are in time order. An idle window gives 0 tokens per joule, not nothing.
    """
    if not energy:
        return None
    first, last = energy[0].timestamp, energy[-1].timestamp
    covered = [p for p in tokens if first <= p.timestamp <= last]
    if not covered:
        return None
    end = covered[-1]
    first_inside = next(i for i, p in enumerate(covered) if p.timestamp >= end.timestamp - window_s)
    start = covered[first_inside]
    span = end.timestamp - start.timestamp
    # Scrapes come at their own moments, so a window as long as the minimum is rarely spanned
    # exactly: one filled as far as the scrapes allow (an older scrape lies outside it) counts
    # when it spans at least half of it, which keeps out a window whose scrapes failed.
    filled = first_inside > 0 and span >= window_s / 2
    if span <= 0 or (span < min_window_s and not filled):
        return None
    joules_end, joules_start = energy_at(energy, end.timestamp), energy_at(energy, start.timestamp)
    assert joules_end is not None and joules_start is not None  # both inside the polls
    joules = joules_end - joules_start
    if joules <= 0:
        return None
    moved = {kind: end.tokens[kind] - start.tokens[kind] for kind in end.tokens if kind in start.tokens}
    if any(delta < 0 for delta in moved.values()):
        return None  # a reset the caller missed; never report a negative rate
    per_token = {kind: joules / delta for kind, delta in moved.items() if delta > 0}
    total = sum(moved[kind] for kind in TOTAL_OF_KINDS if kind in moved)
    if total > 0 and all(kind in moved for kind in TOTAL_OF_KINDS):
        per_token["total"] = joules / total
    return Efficiency(
        window_seconds=span,
        joules=joules,
        tokens=moved,
        tokens_per_joule={kind: delta / joules for kind, delta in moved.items()},
        joules_per_token=per_token,
    )
