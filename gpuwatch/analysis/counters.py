"""Counters that survive the driver's resets, and whether a token server's falling counter is a restart."""

from __future__ import annotations

from collections.abc import Mapping

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


RESTART_COOLDOWN_S = 60.0  # an inference server cannot load its model again faster than this
NEAR_ZERO_SHARE = 0.01  # a counter that fell to at most this share of its last value restarted
FALL_PERSISTS_SCRAPES = 3  # scrapes in a row below the last value, not falling among themselves


@record
class Restarts:
    """Whether a server's token counters that went back mean the server restarted.

    Token counters restart at zero with the server's process, and gpuwatch carries the last
    value into its total when they do. A server that lies (or a proxy that alternates between two
    backends) could have every fall counted as a restart, each one adding the last value to the
    total again: a counter alternating between 3,357 and a lower value once gave 10.8 M tokens in
    25 s. So a fall is believed only when the server's start time changed, when the counter fell
    near zero (to at most 1 % of its last value), or when it stays down for three scrapes in a row;
    and at most once a minute. Any other fall is refused: the reading is not taken.
    """

    last_restart_at: float = float("-inf")
    low_scrapes: int = 0  # refused falls in a row
    low_values: tuple[float, ...] = ()  # the latest refused reading, by kind order

    def judge(
        self, now: float, last: Mapping[str, float], current: Mapping[str, float], start_changed: bool
    ) -> tuple[str | None, str | None, Restarts]:
        """For the reading ``current`` after ``last``: (why the server restarted, or None; why the
        reading is refused, or None; the state after)."""
        fell = [kind for kind, value in current.items() if kind in last and value < last[kind]]
        if not fell:
            after = self if not self.low_scrapes else Restarts(last_restart_at=self.last_restart_at)
            return (
                ("its start time changed", None, Restarts(last_restart_at=now))
                if start_changed
                else (None, None, after)
            )
        kind = fell[0]
        went = f"its {kind} counter went back below {last[kind]:.0f}"  # stable while refused: logged once
        held = self._refused(current)
        if now - self.last_restart_at < RESTART_COOLDOWN_S:
            return None, f"{went} within {RESTART_COOLDOWN_S:.0f} s of a restart; reading refused", held
        if start_changed:
            return "its start time changed", None, Restarts(last_restart_at=now)
        if all(current[k] <= last[k] * NEAR_ZERO_SHARE for k in fell):
            return f"{went}, near zero", None, Restarts(last_restart_at=now)
        if held.low_scrapes >= FALL_PERSISTS_SCRAPES:
            return f"{went} and stayed below it for {held.low_scrapes} scrapes", None, Restarts(last_restart_at=now)
        return None, f"{went} but its start time did not change; reading refused", held

    def _refused(self, current: Mapping[str, float]) -> Restarts:
        low = tuple(current.values())
        rising = len(low) == len(self.low_values) and all(v >= w for v, w in zip(low, self.low_values, strict=True))
        count = self.low_scrapes + 1 if rising or not self.low_scrapes else 1
        return Restarts(last_restart_at=self.last_restart_at, low_scrapes=count, low_values=low)
