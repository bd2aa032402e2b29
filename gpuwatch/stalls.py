"""Which GPU read has hung, and which poll thread may still publish.

The sampler reads every GPU from one loop thread. When a read hangs in a driver call, the stall
watcher (:meth:`StallWatch.leave_behind`) marks that GPU stuck and moves the generation on, and
the sampler starts a fresh loop thread, which skips the stuck GPU. The thread left behind learns
it when its call returns (:meth:`StallWatch.end` raises :class:`PollSuperseded`): it frees the
GPU and ends, publishing nothing. One lock orders the two sides, so a read either finishes for
its own generation or is left behind, never both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from gpuwatch.records import record


class PollSuperseded(Exception):
    """This poll was left behind in a hung GPU read; another thread polls in its place."""


@record
class _Read:
    generation: int  # of the loop thread making it
    index: int
    started: float  # monotonic
    started_at: float  # daemon time


@dataclass(frozen=True, slots=True)
class Stuck:
    """A read left behind."""

    index: int
    since: float  # daemon time it began
    for_s: float  # how long it had run, in wall seconds


class StallWatch:
    """The read in progress, the GPUs whose reads were left behind, and the current generation."""

    def __init__(self, monotonic: Callable[[], float], now: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._now = now
        self._lock = threading.Lock()
        self._reading: _Read | None = None
        self._stuck: dict[int, float] = {}  # GPU index -> daemon time its hung read began
        self.generation = 0  # of the loop thread allowed to publish

    def stuck_since(self, index: int) -> float | None:
        """When the hung read of this GPU began, or None when it is not stuck."""
        return self._stuck.get(index)

    @property
    def any_stuck(self) -> bool:
        return bool(self._stuck)

    def begin(self, generation: int, index: int) -> None:
        with self._lock:
            self._reading = _Read(generation, index, self._monotonic(), self._now())

    def end(self, generation: int, index: int) -> float | None:
        """A read returned. Raises :class:`PollSuperseded` if it had been left behind (the GPU is
        freed then; the exception says how long it hung)."""
        with self._lock:
            if generation == self.generation:
                self._reading = None
                return None
            since = self._stuck.pop(index, None)
        took = "" if since is None else f" after {self._now() - since:.1f} s"
        raise PollSuperseded(f"GPU {index}: the hung NVML call returned{took}")

    def leave_behind(self, stuck_after_s: float) -> Stuck | None:
        """If the read in progress has run ``stuck_after_s`` or longer: mark its GPU stuck, move
        the generation on (the caller starts a new loop thread) and say which it was."""
        with self._lock:
            read = self._reading
            if read is None or read.generation != self.generation:
                return None
            ran_s = self._monotonic() - read.started
            if ran_s < stuck_after_s:
                return None
            self._stuck[read.index] = read.started_at
            self.generation += 1
            self._reading = None
        return Stuck(read.index, read.started_at, ran_s)
