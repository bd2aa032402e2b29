"""The live page's memory: the last 15 minutes of every GPU, in a fixed-size ring fed by snapshots.

:class:`History` subscribes to the sampler's snapshots (data flows one way: it never reads NVML) and
keeps, per GPU, a few numbers per poll in ``array`` columns of fixed length: 4-byte floats for the
values, a 2-byte mask for the active clock-event reasons, a byte for the verdict. Its size is fixed
when a GPU is first seen (``benchmarks/page_memory.py`` measures it at 8 and 64 GPUs); polls faster
than ``window_s / MAX_POINTS`` are thinned to one point per that step, so the window is always whole.
"""

from __future__ import annotations

import functools
import math
import threading
from array import array
from collections.abc import Iterator
from typing import Any

from gpuwatch.labels import CLOCK_EVENT_REASONS, HEALTH_STATES
from gpuwatch.model import GpuStatus, Snapshot

WINDOW_S = 15 * 60.0
MAX_POINTS = 1800  # per GPU: 15 minutes at a poll every 0.5 s; faster polls are thinned
# Per-GPU float series, in the order of the columns; each name is the /status key it mirrors.
SERIES = (
    "temperature_celsius",
    "temperature_margin_celsius",
    "power_watts",
    "power_limit_watts",
    "sm_clock_hertz",
    "memory_used_bytes",
)
REASONS = (*CLOCK_EVENT_REASONS, "other")
_REASON_BIT = {name: 1 << n for n, name in enumerate(REASONS)}
_NO_VERDICT = -1
_VERDICT_CODE = {state: code for code, state in enumerate(HEALTH_STATES)}


def capacity_for(poll_interval_s: float, window_s: float = WINDOW_S) -> int:
    """Points a GPU's ring holds: the window at this poll interval, at most :data:`MAX_POINTS`."""
    return max(2, min(MAX_POINTS, math.ceil(window_s / poll_interval_s) + 1))


class _GpuRing:
    """One GPU's columns; the ring's positions are the History's."""

    __slots__ = ("reasons", "series", "verdict")

    def __init__(self, capacity: int) -> None:
        self.series = [array("f", [math.nan]) * capacity for _ in SERIES]
        self.reasons = array("H", [0]) * capacity
        self.verdict = array("b", [_NO_VERDICT]) * capacity

    def put(self, slot: int, status: GpuStatus | None) -> None:
        if status is None or status.reading is None or (not status.up and status.stale_since is None):
            for column in self.series:
                column[slot] = math.nan
            self.reasons[slot] = 0
            self.verdict[slot] = _NO_VERDICT if status is None else _VERDICT_CODE.get(status.verdict.state, _NO_VERDICT)
            return
        r = status.reading
        values = (
            r.temperature_celsius,
            status.temperature_margin_celsius,
            r.power_watts,
            r.power_limit_watts,
            r.clocks_hertz.get("sm"),
            r.memory_used_bytes,
        )
        for column, value in zip(self.series, values, strict=True):
            column[slot] = math.nan if value is None else float(value)
        mask = 0
        for reason in r.clock_event_reasons or ():
            mask |= _REASON_BIT.get(reason, _REASON_BIT["other"])
        self.reasons[slot] = mask
        self.verdict[slot] = _VERDICT_CODE.get(status.verdict.state, _NO_VERDICT)


class History:
    """The last ``window_s`` of every GPU, bounded: :meth:`on_snapshot` is a sampler subscriber,
    :meth:`since` what the page's JSON endpoint serves. Safe to call from any thread."""

    def __init__(self, poll_interval_s: float, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.capacity = capacity_for(poll_interval_s, window_s)
        self.min_step_s = window_s / MAX_POINTS  # thinner than this, a point is dropped
        self._timestamps = array("d", [math.nan]) * self.capacity
        self._gpus: dict[int, _GpuRing] = {}
        self._next = 0  # the slot the next point goes in
        self._count = 0
        self._last_timestamp = -math.inf
        self._lock = threading.Lock()

    def on_snapshot(self, snapshot: Snapshot) -> None:
        """Take one poll in (or drop it, when it comes sooner than ``min_step_s`` after the last)."""
        if snapshot.timestamp < self._last_timestamp:
            # The wall clock stepped back (NTP, by hand): the points ahead of it would hold the
            # history still for as long, so it starts afresh from this poll.
            with self._lock:
                self._count = 0
                self._last_timestamp = -math.inf
        elif snapshot.timestamp < self._last_timestamp + self.min_step_s:
            return
        with self._lock:
            slot = self._next
            self._timestamps[slot] = snapshot.timestamp
            seen = {status.identity.index: status for status in snapshot.gpus}
            for index in seen.keys() - self._gpus.keys():
                self._gpus[index] = _GpuRing(self.capacity)
            for index, ring in self._gpus.items():
                ring.put(slot, seen.get(index))
            self._next = (slot + 1) % self.capacity
            self._count = min(self._count + 1, self.capacity)
            self._last_timestamp = snapshot.timestamp

    def _slots(self, after: float | None) -> Iterator[int]:
        """Slots oldest first, within the window of the newest point and newer than ``after``."""
        start = (self._next - self._count) % self.capacity
        newest = self._last_timestamp
        for n in range(self._count):
            slot = (start + n) % self.capacity
            timestamp = self._timestamps[slot]
            if timestamp < newest - self.window_s or (after is not None and timestamp <= after):
                continue
            yield slot

    def since(self, after: float | None = None) -> dict[str, Any]:
        """The points newer than ``after`` (all of the window when None) as JSON-ready columns:
        ``null`` where a GPU did not answer or does not report a value; reasons as names."""
        with self._lock:
            slots = list(self._slots(after))
            gpus: dict[str, Any] = {}
            for index, ring in sorted(self._gpus.items()):
                columns: dict[str, Any] = {
                    name: [_number(column[s]) for s in slots] for name, column in zip(SERIES, ring.series, strict=True)
                }
                columns["clock_event_reasons"] = [_names(ring.reasons[s]) for s in slots]
                columns["verdict"] = [None if ring.verdict[s] < 0 else HEALTH_STATES[ring.verdict[s]] for s in slots]
                gpus[str(index)] = columns
            return {
                "window_seconds": self.window_s,
                "capacity": self.capacity,
                "timestamps": [self._timestamps[s] for s in slots],
                "gpus": gpus,
            }


@functools.cache
def _names(mask: int) -> list[str]:
    """The reasons a mask holds (a few masks recur, so each is worked out once); callers must not change it."""
    return [r for r in REASONS if mask & _REASON_BIT[r]]


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value
