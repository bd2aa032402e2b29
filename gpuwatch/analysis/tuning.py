"""Pure decisions of the power-limit tuner: the limits to try, a point of the curve from two
samples, when power has settled, and which limit to recommend.

The recommendation is the limit with the most work per joule among those whose throughput stays
within ``min_throughput`` of the best throughput measured. Its ratios compare it with the highest
limit swept (what the GPUs run at without a cut): ``throughput_ratio`` is its tokens per second over
that point's, and ``energy_ratio`` its power over that point's, the energy it uses in the same time
("250 W: 97.8 % of the tokens for 84 % of the energy").

Work and energy are sampled at their own instants (a token count when the server was scraped, the
energy counter when the GPUs were polled), so throughput comes from work over the work's own
timestamps and tokens per joule is throughput over power: a scrape that lags its poll shifts
neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

STEADY_TOLERANCE = 0.02  # two successive power means within 2 % of each other: settled


@dataclass(frozen=True, slots=True)
class WorkSample:
    """Cumulative energy (J, summed over the GPUs) at ``time_s`` and cumulative work (tokens, or busy
    SM cycles) at ``work_time_s`` (the scrape's time; the poll's when the GPUs measure the work)."""

    time_s: float
    work: float
    joules: float
    work_time_s: float


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
    seconds, joules = end.time_s - start.time_s, end.joules - start.joules
    work_seconds = end.work_time_s - start.work_time_s
    if seconds <= 0 or joules <= 0 or work_seconds <= 0:
        raise ValueError(f"{limit_watts:g} W: no time or no energy passed over the dwell")
    throughput, power = (end.work - start.work) / work_seconds, joules / seconds
    return TunePoint(limit_watts, throughput, throughput / power, power)


def settled(power_means_watts: Sequence[float], tolerance: float = STEADY_TOLERANCE) -> bool:
    """Whether the last two means of power (over equal spans) agree within ``tolerance``."""
    if len(power_means_watts) < 2:
        return False
    previous, last = power_means_watts[-2], power_means_watts[-1]
    return abs(last - previous) <= tolerance * max(abs(previous), 1e-9)


def recommend(points: Sequence[TunePoint], min_throughput: float) -> Recommendation | None:
    """The best tokens per joule among points within ``min_throughput`` (0..1) of the best throughput,
    compared with the point at the highest limit."""
    if not points:
        return None
    best = max(points, key=lambda p: p.tokens_per_second)
    top = max(points, key=lambda p: p.limit_watts)
    if best.tokens_per_second <= 0 or top.tokens_per_second <= 0 or top.power_watts <= 0:
        return None
    floor = min_throughput * best.tokens_per_second
    eligible = [p for p in points if p.tokens_per_second >= floor]
    choice = max(eligible, key=lambda p: (p.tokens_per_joule, -p.limit_watts))
    return Recommendation(
        limit_watts=choice.limit_watts,
        throughput_ratio=choice.tokens_per_second / top.tokens_per_second,
        energy_ratio=choice.power_watts / top.power_watts,
    )
