"""Pure decisions of the power-limit tuner: the limits to try, a point of the curve from two
samples, when power has settled, and which limit to recommend.

The recommendation is the limit with the most work per joule among those whose throughput stays
within ``min_throughput`` of the best throughput measured. Its ratios compare it with that
best-throughput point: ``throughput_ratio`` is tokens per second over the best's, and
``energy_ratio`` is its power over the best's, the energy it uses in the same time ("250 W: 97.8 %
of the tokens for 84 % of the energy").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

STEADY_TOLERANCE = 0.02  # two successive power means within 2 % of each other: settled


@dataclass(frozen=True, slots=True)
class WorkSample:
    """Cumulative work (tokens, or busy SM cycles) and energy (J, summed over the GPUs) at a time (s)."""

    time_s: float
    work: float
    joules: float


@dataclass(frozen=True, slots=True)
class TunePoint:
    """One power limit's measurement over its dwell."""

    limit_watts: float
    tokens_per_second: float
    tokens_per_joule: float
    power_watts: float  # mean power of all the GPUs together over the dwell


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The limit to set, and how it compares with the best-throughput point."""

    limit_watts: float
    throughput_ratio: float
    energy_ratio: float


def limits_between(low_watts: float, high_watts: float, step_watts: float) -> list[float]:
    """``low``, ``low + step``, … up to ``high`` inclusive (``high`` is always tried)."""
    if step_watts <= 0:
        raise ValueError(f"step must be greater than zero, got {step_watts:g} W")
    if low_watts > high_watts:
        raise ValueError(f"--from {low_watts:g} W is above --to {high_watts:g} W")
    count = math.floor((high_watts - low_watts) / step_watts + 1e-9)
    limits = [low_watts + i * step_watts for i in range(count + 1)]
    if not math.isclose(limits[-1], high_watts):
        limits.append(high_watts)
    return limits


def point(limit_watts: float, start: WorkSample, end: WorkSample) -> TunePoint:
    """The curve's point for ``limit_watts`` from samples at the start and the end of its dwell."""
    seconds, joules, work = end.time_s - start.time_s, end.joules - start.joules, end.work - start.work
    if seconds <= 0 or joules <= 0:
        raise ValueError(f"{limit_watts:g} W: no time or no energy passed over the dwell")
    return TunePoint(limit_watts, work / seconds, work / joules, joules / seconds)


def settled(power_means_watts: Sequence[float], tolerance: float = STEADY_TOLERANCE) -> bool:
    """Whether the last two means of power (over equal spans) agree within ``tolerance``."""
    if len(power_means_watts) < 2:
        return False
    previous, last = power_means_watts[-2], power_means_watts[-1]
    return abs(last - previous) <= tolerance * max(abs(previous), 1e-9)


def recommend(points: Sequence[TunePoint], min_throughput: float) -> Recommendation | None:
    """The best tokens per joule among points within ``min_throughput`` (0..1) of the best throughput."""
    if not points:
        return None
    best = max(points, key=lambda p: p.tokens_per_second)
    if best.tokens_per_second <= 0 or best.power_watts <= 0:
        return None
    floor = min_throughput * best.tokens_per_second
    eligible = [p for p in points if p.tokens_per_second >= floor]
    choice = max(eligible, key=lambda p: (p.tokens_per_joule, -p.limit_watts))
    return Recommendation(
        limit_watts=choice.limit_watts,
        throughput_ratio=choice.tokens_per_second / best.tokens_per_second,
        energy_ratio=choice.power_watts / best.power_watts,
    )
