"""Counters that survive the driver's resets."""

from __future__ import annotations

from gpuwatch.records import record


@record
class ResetSafeCounter:
    """A driver counter made monotonic across resets while gpuwatch runs.

    NVML's energy counter counts from driver load; a driver reload (or a GPU reset) starts it
    again from zero. When a reading is lower than the last one, the last value is carried into
    ``offset`` so the exported total keeps rising, as a Prometheus counter should.
    """

    last_raw: float
    offset: float = 0.0
    resets: int = 0  # how many times the driver's counter went back

    @property
    def total(self) -> float:
        return self.last_raw + self.offset

    def advance(self, raw: float) -> ResetSafeCounter:
        """The counter after the driver reported ``raw``."""
        if raw == self.last_raw:
            return self  # most counts (ECC, replays) rarely move: no new object per poll
        if raw < self.last_raw:
            return ResetSafeCounter(last_raw=raw, offset=self.offset + self.last_raw, resets=self.resets + 1)
        return ResetSafeCounter(last_raw=raw, offset=self.offset, resets=self.resets)
