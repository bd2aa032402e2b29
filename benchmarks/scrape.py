"""``/metrics`` latency (p50, p99) against a running daemon, with one or many concurrent scrapers."""

from __future__ import annotations

import random
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import fleet
from benchmarks.daemon import Daemon, get

SCRAPE_INTERVAL_S = 1.0
_GPU_SERIES = re.compile(rb'^gpuwatch_gpu_\w+\{gpu="0",', re.M)


def scrape_for(port: int, seconds: float, scrapers: int) -> list[float]:
    """Scrape from ``scrapers`` threads for ``seconds``; every latency in seconds.

    One scraper scrapes back to back. Many scrapers model that many Prometheus servers, each
    scraping once per ``SCRAPE_INTERVAL_S`` at its own fixed offset (Prometheus spreads targets
    over the interval by a hash; here the offsets are random with a fixed seed).
    """
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + seconds
    offsets = random.Random(8).sample(range(1000), scrapers)

    def scraper(offset_s: float) -> None:
        mine = []
        next_at = start + offset_s
        while next_at < stop_at:
            time.sleep(max(0.0, next_at - time.monotonic()))
            started = time.perf_counter()
            status, _ = get(port, "/metrics")
            mine.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"/metrics answered {status}")
            next_at = next_at + SCRAPE_INTERVAL_S if scrapers > 1 else time.monotonic()
        with lock:
            latencies.extend(mine)

    paced = scrapers > 1
    threads = [
        threading.Thread(target=scraper, args=(offsets[i] / 1000 * SCRAPE_INTERVAL_S if paced else 0.0,))
        for i in range(scrapers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def summary(latencies: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "scrapes": len(ordered),
        "p50_ms": statistics.median(ordered) * 1e3,
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


def latency_matrix(
    gpu_counts: list[int], poll_intervals: list[str], scraper_counts: list[int], seconds: float
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for gpus in gpu_counts:
            scenario = fleet.write_scenario(Path(folder), gpus)
            for interval in poll_intervals:
                with Daemon(scenario, interval) as daemon:
                    time.sleep(1.0)  # a few polls, and the first slow loop, before measuring
                    _, body = get(daemon.port, "/metrics")
                    for scrapers in scraper_counts:
                        row = {"gpus": gpus, "poll_interval": interval, "scrapers": scrapers}
                        row |= summary(scrape_for(daemon.port, seconds, scrapers))
                        row |= {"bytes": len(body), "series_per_gpu": len(_GPU_SERIES.findall(body))}
                        rows.append(row)
    return rows


def during_hang(gpus: int, seconds: float) -> dict[str, Any]:
    """Latency while every NVML call for GPU 0 blocks 5 s, from 2 s after start for ``seconds``."""
    hang_at_s = 2.0
    with tempfile.TemporaryDirectory() as folder:
        scenario = fleet.write_scenario(Path(folder), gpus, hang_gpu=0, hang_at_s=hang_at_s, hang_for_s=seconds + 3)
        with Daemon(scenario, "1s") as daemon:
            time.sleep(max(0.0, daemon.started_at + hang_at_s + 1.0 - time.monotonic()))
            first = _last_poll(daemon.port)
            row = {"gpus": gpus, "poll_interval": "1s", "scrapers": 1, "hang_s": 5}
            row |= summary(scrape_for(daemon.port, seconds, 1))
            row["last_poll_advanced_s"] = _last_poll(daemon.port) - first
    return row


def _last_poll(port: int) -> float:
    _, body = get(port, "/metrics")
    match = re.search(rb"^gpuwatch_last_poll_timestamp_seconds (\S+)$", body, re.M)
    return float(match.group(1)) if match else float("nan")
