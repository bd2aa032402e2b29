"""NVML calls per GPU per fast poll and per slow poll, by C entry point (the simulator counts them)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from benchmarks import fleet
from gpuwatch.nvml import NvmlReader, use_library
from gpuwatch.sampler import Sampler

GPUS = 8
PROCESS_INTERVAL_S = 10.0


def measure() -> dict[str, Any]:
    """Count the calls of one fast poll and of one poll that also runs the slow loop."""
    library, clock = fleet.install(GPUS)
    sampler = Sampler(lambda: NvmlReader(clock.time), clock, 1.0, PROCESS_INTERVAL_S)
    try:
        sampler.poll_once()  # opens NVML and runs the slow loop once
        clock.advance(1.0)
        fast = _count(library.calls_by_symbol, sampler.poll_once)
        clock.advance(PROCESS_INTERVAL_S)
        slow = _count(library.calls_by_symbol, sampler.poll_once)
    finally:
        sampler.stop()
        use_library(None)
    return {
        "gpus": GPUS,
        "fast": _per_gpu(fast),
        "slow": _per_gpu(slow),
        "fast_total": sum(fast.values()) / GPUS,
        "slow_total": sum(slow.values()) / GPUS,
    }


def _count(counts: Counter[str], poll: Any) -> Counter[str]:
    before = Counter(counts)
    poll()
    return counts - before


def _per_gpu(counts: Counter[str]) -> dict[str, float]:
    return {name: n / GPUS for name, n in sorted(counts.items())}
