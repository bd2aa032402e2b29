"""Which GPU read has hung, and which poll thread may still publish.

The sampler reads every GPU from one loop thread. When a read hangs in a driver call, the stall
watcher (:meth:`StallWatch.leave_behind`) marks that GPU stuck and moves the generation on, and
the sampler starts a fresh loop thread, which skips the stuck GPU. The thread left behind learns
it when its call returns (:meth:`StallWatch.end` raises :class:`PollSuperseded`): it frees the
GPU and ends, publishing nothing. One lock orders the two sides, so a read either finishes for
its own generation or is left behind, never both.

A read that is slow only because this process was not given the CPU must not count as hung: on a
CPU-bound inference host a false "hung GPU" is a false page. Wall time alone cannot tell the two
apart, so a read is judged on two clocks that starvation stops as well:

* The watcher's heartbeat (:meth:`StallWatch.heartbeat`, every :data:`HEARTBEAT_S`). A beat on
  time proves the process was being scheduled; a beat later than :data:`LATE_BEAT_S` proves it
  was not, and the time before it is not held against the read (a CPU quota spent, a starved,
  stopped or low-priority process, a paused VM).
* The reading thread's own CPU time. A thread blocked in a driver call uses none; a thread that
  is merely starved gets some in nearly every beat once the process runs, and finishes its read
  with a few milliseconds of it. A beat in which the reading thread used less than
  :data:`PROGRESS_SHARE` of the beat counts as blocked.

A read is left behind once it has been blocked for ``stuck_after_s`` of heartbeat time, or has
burnt ``stuck_after_s`` of CPU in one read (a call spinning in the driver). Both imply at least
that much wall time. On a host so starved that beats are seldom on time a real hang is found
late; no poll finishes meanwhile either, and ``/status`` says its data is stale.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

HEARTBEAT_S = 0.1  # how often the watcher beats (and looks for a hung read)
LATE_BEAT_S = 2 * HEARTBEAT_S  # a beat later than this counts for nothing: the process was starved
PROGRESS_SHARE = 0.01  # a reading thread with less CPU than this share of a beat is blocked


class PollSuperseded(Exception):
    """This poll was left behind in a hung GPU read; another thread polls in its place."""


def thread_cpu_seconds(thread_id: int) -> float | None:
    """CPU time of a live thread of this process (``threading.get_ident()``), or None where the
    platform has no per-thread CPU clock (then only the heartbeat judges a read)."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread_id))
    except (AttributeError, OSError):
        return None


@dataclass(slots=True)
class _Read:
    """The read in progress; changed only under the watch's lock."""

    generation: int  # of the loop thread making it
    index: int
    thread_id: int
    started: float  # monotonic
    started_at: float  # daemon time
    last_beat: float  # monotonic, of the last heartbeat that saw it (or its start)
    cpu_seen: float | None  # the reading thread's CPU time at that beat
    blocked_s: float = 0.0  # heartbeat time in which the reading thread used (nearly) no CPU
    cpu_used_s: float = 0.0  # CPU the reading thread used since the read began


@dataclass(frozen=True, slots=True)
class Stuck:
    """A read left behind."""

    index: int
    since: float  # daemon time it began
    for_s: float  # how long it had run, in wall seconds
    blocked_s: float  # of which the process was scheduled and the read made no progress


class StallWatch:
    """The read in progress, the GPUs whose reads were left behind, and the current generation."""

    def __init__(
        self,
        monotonic: Callable[[], float],
        now: Callable[[], float],
        cpu_seconds: Callable[[int], float | None] = thread_cpu_seconds,
    ) -> None:
        self._monotonic = monotonic
        self._now = now
        self._cpu_seconds = cpu_seconds
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
        """A read starts, on the calling thread."""
        thread_id = threading.get_ident()
        started = self._monotonic()
        with self._lock:
            cpu = self._cpu_seconds(thread_id)
            self._reading = _Read(generation, index, thread_id, started, self._now(), started, cpu)

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

    def heartbeat(self) -> None:
        """The watcher was scheduled: credit the time since the last beat to the read in progress,
        as blocked time unless its thread used CPU meanwhile."""
        now = self._monotonic()
        with self._lock:
            read = self._reading
            if read is None:
                return
            # Under the lock the reading thread has not passed end(), so it is alive: its CPU
            # clock is safe to read.
            cpu = self._cpu_seconds(read.thread_id)
            since_s = max(now - read.last_beat, 0.0)
            credit = since_s if since_s <= LATE_BEAT_S else 0.0
            used = 0.0 if cpu is None or read.cpu_seen is None else max(cpu - read.cpu_seen, 0.0)
            read.last_beat, read.cpu_seen = now, cpu
            read.cpu_used_s += used
            if used < PROGRESS_SHARE * credit:
                read.blocked_s += credit

    def leave_behind(self, stuck_after_s: float) -> Stuck | None:
        """If the read in progress has been blocked (or spinning) for ``stuck_after_s``: mark its
        GPU stuck, move the generation on (the caller starts a new loop thread) and say which."""
        with self._lock:
            read = self._reading
            if read is None or read.generation != self.generation:
                return None
            # (a microsecond's leeway: ten beats of 0.1 s add up to 0.9999999999999999 s)
            if max(read.blocked_s, read.cpu_used_s) < stuck_after_s - 1e-6:
                return None
            self._stuck[read.index] = read.started_at
            self.generation += 1
            self._reading = None
        return Stuck(read.index, read.started_at, self._monotonic() - read.started, read.blocked_s)
