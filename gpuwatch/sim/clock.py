"""Simulated time: a scenario clock that can run faster than the wall clock."""

from __future__ import annotations

import time
from collections.abc import Callable


class SimClock:
    """Simulated time that starts now (at ``start_s``) and runs ``speed`` times faster than the wall clock.

    ``sim_seconds`` drives the simulated driver; ``time`` is the daemon's wall-clock-shaped view of
    the same instant (epoch seconds); ``to_wall`` converts a span of simulated time into the wall
    time it takes, so a 1 s poll interval at speed 60 is a 1/60 s sleep.
    """

    def __init__(
        self,
        speed: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        epoch: float | None = None,
        start_s: float = 0.0,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"simulation speed must be positive, got {speed}")
        self.speed = speed
        self._monotonic = monotonic
        self._start = monotonic()
        self._start_s = start_s
        self._epoch = time.time() if epoch is None else epoch

    def sim_seconds(self) -> float:
        return self._start_s + (self._monotonic() - self._start) * self.speed

    def time(self) -> float:
        return self._epoch + self.sim_seconds()

    def to_wall(self, seconds: float) -> float:
        return seconds / self.speed


class ManualClock:
    """A clock that moves only when told to: tests step it, nothing sleeps."""

    def __init__(self, epoch: float = 1_700_000_000.0) -> None:
        self._epoch = epoch
        self._now = 0.0

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def sim_seconds(self) -> float:
        return self._now

    def time(self) -> float:
        return self._epoch + self._now

    def to_wall(self, seconds: float) -> float:
        return 0.0
