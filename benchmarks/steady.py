"""Steady-state daemon cost: CPU share of one core and resident memory, polling at 1 Hz."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import fleet
from benchmarks.daemon import Daemon, get

WARM_UP_S = 12.0  # past the first slow loops, so the window holds only steady polling
PROMETHEUS_INTERVAL_S = 15.0


def measure(gpus: int, seconds: float, warm_up_s: float = WARM_UP_S) -> dict[str, Any]:
    """Run ``gpuwatch serve`` for ``seconds`` after a warm-up, scraped every 15 s like Prometheus."""
    with tempfile.TemporaryDirectory() as folder, Daemon(fleet.write_scenario(Path(folder), gpus), "1s") as daemon:
        proc = daemon.process
        time.sleep(warm_up_s)
        cpu_start, wall_start = _cpu_s(proc), time.monotonic()
        next_scrape = wall_start
        while (now := time.monotonic()) < wall_start + seconds:
            if now >= next_scrape:
                get(daemon.port, "/metrics")
                next_scrape += PROMETHEUS_INTERVAL_S
            time.sleep(min(0.5, wall_start + seconds - now))
        cpu_s, wall_s = _cpu_s(proc) - cpu_start, time.monotonic() - wall_start
        rss = proc.memory_info().rss
    return {
        "gpus": gpus,
        "poll_interval": "1s",
        "seconds": wall_s,
        "cpu_core_percent": 100 * cpu_s / wall_s,
        "rss_mib": rss / 2**20,
    }


def _cpu_s(proc: Any) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)
