"""When to try again something that failed: NVML's initialisation, a lost GPU."""

from __future__ import annotations

from dataclasses import dataclass, replace

START_S = 1.0
MAX_S = 60.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: after each failure wait twice as long as before, up to ``max_s``."""

    delay_s: float = START_S
    next_at: float = float("-inf")
    max_s: float = MAX_S

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def failed(self, now: float) -> Backoff:
        """After a failure at ``now``: the next try waits ``delay_s``, the one after twice that."""
        return replace(self, next_at=now + self.delay_s, delay_s=min(self.delay_s * 2, self.max_s))
