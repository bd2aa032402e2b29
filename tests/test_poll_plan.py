"""The poll plan: what a fast poll asks NVML, what waits for the slow loop; rendering /metrics once per poll."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from gpuwatch.exporter import text
from gpuwatch.exporter.exposition import CachedExposition
from gpuwatch.exporter.registry import build_registry
from gpuwatch.model import Snapshot

SLOW_ONLY = {
    "nvmlDeviceGetFanSpeed",
    "nvmlDeviceGetBAR1MemoryInfo",
    "nvmlDeviceGetEncoderUtilization",
    "nvmlDeviceGetDecoderUtilization",
    "nvmlDeviceGetCurrPcieLinkGeneration",
    "nvmlDeviceGetCurrPcieLinkWidth",
    "nvmlDeviceGetComputeRunningProcesses_v3",
}


def test_a_fast_poll_makes_at_most_ten_calls_per_gpu_and_none_of_the_slow_ones(sim):
    run = sim("inference-host", process_interval_s=10.0)
    run.at(1)  # opens NVML; the first poll also runs the slow loop
    calls = run.host.library.calls_by_symbol
    before = Counter(calls)
    run.at(2)
    fast = calls - before
    gpus = len(run.host.library.gpus)
    assert sum(fast.values()) <= 10 * gpus
    assert fast["nvmlDeviceGetFieldValues"] == gpus
    assert not SLOW_ONLY & set(fast)


def test_slow_values_are_carried_into_fast_polls_and_refreshed_by_the_slow_loop(sim):
    run = sim("inference-host", process_interval_s=10.0)
    run.at(1)
    fast = run.at(2).gpus[0].reading
    assert fast is not None
    assert set(fast.clocks_hertz) == {"graphics", "sm", "memory", "video"}
    assert {"encoder", "decoder"} <= set(fast.utilization_ratio)
    assert fast.fan_speed_ratio is not None and fast.bar1_used_bytes is not None
    assert fast.pcie_link_generation is not None
    before = Counter(run.host.library.calls_by_symbol)
    run.at(12)
    assert (run.host.library.calls_by_symbol - before)["nvmlDeviceGetFanSpeed"] == len(run.host.library.gpus)


def _counting_registry() -> tuple[Counter[str], CollectorRegistry]:
    """A registry whose one collector counts how often a scrape renders it."""
    renders = Counter[str]()

    class Counting:
        def collect(self):  # type: ignore[no-untyped-def]
            renders["collect"] += 1
            yield GaugeMetricFamily("x", "x", value=1)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Counting())
    return renders, registry


def test_scrapes_of_one_poll_share_one_rendering():
    renders, registry = _counting_registry()
    snapshots = [Snapshot(timestamp=1.0, nvml_up=True)]
    exposition = CachedExposition(registry, lambda: snapshots[-1])
    first, _ = exposition.render("")
    assert exposition.render("")[0] == first
    assert renders["collect"] == 1
    snapshots.append(Snapshot(timestamp=2.0, nvml_up=True))
    exposition.render("")
    exposition.render("application/openmetrics-text; version=1.0.0")
    assert renders["collect"] == 3


@pytest.mark.parametrize("scenario", ["inference-host", "consumer-gpu", "mixed-fleet", "xid-79"])
def test_the_fast_text_writer_matches_prometheus_client_byte_for_byte(sim, scenario):
    run = sim(scenario)
    run.at(1)
    snapshot = run.at(60)
    registry = build_registry(lambda: snapshot)
    families = list(registry.collect())  # one collection, so volatile values are the same in both

    class Fixed:
        def collect(self):  # type: ignore[no-untyped-def]
            return iter(families)

    fixed = CollectorRegistry(auto_describe=False)
    fixed.register(Fixed())
    assert text.generate(fixed) == generate_latest(fixed)


def test_the_poll_loop_prerenders_only_while_someone_scrapes():
    renders, registry = _counting_registry()
    now = [0.0]
    snapshots = [Snapshot(timestamp=1.0, nvml_up=True)]
    exposition = CachedExposition(registry, lambda: snapshots[-1], monotonic=lambda: now[0])
    exposition.prerender(snapshots[-1])
    assert renders["collect"] == 0  # nobody has scraped: nothing rendered
    exposition.render("")
    assert renders["collect"] == 1
    snapshots.append(Snapshot(timestamp=2.0, nvml_up=True))
    now[0] = 1.0
    exposition.prerender(snapshots[-1])
    assert renders["collect"] == 2
    exposition.render("")
    assert renders["collect"] == 2  # the scrape found the poll already rendered
    now[0] = 60.0
    snapshots.append(Snapshot(timestamp=3.0, nvml_up=True))
    exposition.prerender(snapshots[-1])
    assert renders["collect"] == 2  # the last scrape is long past
