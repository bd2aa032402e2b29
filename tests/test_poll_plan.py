"""The poll plan: what a fast poll asks NVML, what waits for the slow loop; rendering /metrics once per poll."""

from __future__ import annotations

import gzip
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
    "nvmlDeviceGetPerformanceState",
}


@pytest.mark.parametrize(
    ("scenario", "calls_per_gpu"),
    # Seven where the card has a margin to ask (T.Limit: Ada, Hopper, R570+); an A6000 answers none, so
    # after the first NotSupported the margin query is not asked again (its capture: T.Limit N/A).
    [("inference-host", 6), ("consumer-gpu", 7), ("h200-nvlink", 7)],
)
def test_a_fast_poll_makes_seven_calls_per_gpu_at_most_and_none_of_the_slow_ones(sim, scenario, calls_per_gpu):
    run = sim(scenario, process_interval_s=10.0)
    run.at(1)  # opens NVML; the first poll also runs the slow loop
    calls = run.host.library.calls_by_symbol
    before = Counter(calls)
    run.at(2)
    fast = calls - before
    gpus = len(run.host.library.gpus)
    events = fast.pop("nvmlEventSetWait_v2")  # one per poll for the whole host, not per GPU
    assert events == 1
    for gpm_call in ("nvmlGpmSampleGet", "nvmlGpmMetricsGet"):  # Hopper's two more (the GPM test below)
        fast.pop(gpm_call, None)
    assert sum(fast.values()) == calls_per_gpu * gpus, fast
    assert fast["nvmlDeviceGetFieldValues"] == gpus
    assert fast["nvmlDeviceGetClockInfo"] == gpus  # the SM clock; the others wait for the slow loop
    assert not SLOW_ONLY & set(fast)


def test_gpm_adds_one_sample_get_and_one_metrics_get_per_gpu_to_a_fast_poll(sim):
    """Hopper (issue 17): the seven calls, plus GPM's sample get and metrics get; nothing else."""
    run = sim("h200-node", process_interval_s=10.0)
    run.at(1)
    before = Counter(run.host.library.calls_by_symbol)
    run.at(2)
    fast = run.host.library.calls_by_symbol - before
    gpus = len(run.host.library.gpus)
    fast.pop("nvmlEventSetWait_v2")
    assert fast.pop("nvmlGpmSampleGet") == fast.pop("nvmlGpmMetricsGet") == gpus
    assert sum(fast.values()) == 7 * gpus, fast
    assert not SLOW_ONLY & set(fast)


def test_nvlink_is_read_in_one_batch_per_gpu_on_the_slow_loop_only(sim):
    run = sim("h200-nvlink", process_interval_s=10.0)
    run.at(1)
    calls = run.host.library.calls_by_symbol
    before = Counter(calls)
    fast = run.at(2)
    gpus = len(run.host.library.gpus)
    assert (calls - before)["nvmlDeviceGetFieldValues"] == gpus  # the fast batch alone
    before = Counter(calls)
    slow = run.at(12)
    # the fast batch, the slow batch and the NVLink batch (18 links x 8 values)
    assert (calls - before)["nvmlDeviceGetFieldValues"] == 3 * gpus
    assert (
        fast.gpus[0].reading.nvlink_bytes and slow.gpus[0].reading.nvlink_bytes is not fast.gpus[0].reading.nvlink_bytes
    )


def test_slow_values_are_carried_into_fast_polls_and_refreshed_by_the_slow_loop(sim):
    run = sim("inference-host", process_interval_s=10.0)
    run.at(1)
    fast = run.at(2).gpus[0].reading
    assert fast is not None
    assert set(fast.clocks_hertz) == {"graphics", "sm", "memory", "video"}
    assert {"encoder", "decoder"} <= set(fast.utilization_ratio)
    assert fast.fan_speed_ratio is not None and fast.bar1_used_bytes is not None
    assert fast.pcie_link_generation is not None and fast.performance_state is not None
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


def test_scrapes_of_one_poll_share_one_compression():
    registry = CollectorRegistry(auto_describe=False)

    class Big:
        def collect(self):  # type: ignore[no-untyped-def]
            family = GaugeMetricFamily("x", "x", labels=["i"])
            for i in range(200):  # over the size below which bodies go uncompressed
                family.add_metric([str(i)], i)
            yield family

    registry.register(Big())
    snapshots = [Snapshot(timestamp=1.0, nvml_up=True)]
    exposition = CachedExposition(registry, lambda: snapshots[-1])
    plain, content_type, encoding = exposition.render_encoded("", "")
    assert encoding is None and content_type.startswith("text/plain")
    packed, _, encoding = exposition.render_encoded("", "deflate, gzip")
    assert encoding == "gzip" and gzip.decompress(packed) == plain
    assert exposition.render_encoded("", "gzip")[0] is packed  # the same poll: compressed once
    snapshots.append(Snapshot(timestamp=2.0, nvml_up=True))
    assert exposition.render_encoded("", "gzip")[0] is not packed  # a new poll: compressed anew


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
    assert text.generate(fixed) == generate_latest(fixed)  # again, with every label set remembered


def test_the_remembered_label_sets_stay_bounded(monkeypatch):
    monkeypatch.setattr(text, "_LABEL_TEXT", {})
    monkeypatch.setattr(text, "_LABEL_TEXT_MAX", 3)
    registry = CollectorRegistry(auto_describe=False)

    class Many:
        def collect(self):  # type: ignore[no-untyped-def]
            family = GaugeMetricFamily("x", "x", labels=["i", "q"])
            for i in range(10):
                family.add_metric([str(i), 'a "quoted"\\value'], i)
            yield family

    registry.register(Many())
    assert text.generate(registry) == generate_latest(registry)
    assert len(text._LABEL_TEXT) <= 3


def test_the_poll_loop_prerenders_only_while_someone_scrapes():
    renders, registry = _counting_registry()
    now = [0.0]
    snapshots = [Snapshot(timestamp=1.0, nvml_up=True)]
    exposition = CachedExposition(registry, lambda: snapshots[-1], monotonic=lambda: now[0])
    exposition.prerender()
    assert renders["collect"] == 0  # nobody has scraped: nothing rendered
    exposition.render("")
    assert renders["collect"] == 1
    snapshots.append(Snapshot(timestamp=2.0, nvml_up=True))
    now[0] = 1.0
    exposition.prerender()
    assert renders["collect"] == 2
    exposition.render("")
    assert renders["collect"] == 2  # the scrape found the poll already rendered
    now[0] = 60.0
    snapshots.append(Snapshot(timestamp=3.0, nvml_up=True))
    exposition.prerender()
    assert renders["collect"] == 2  # the last scrape is long past


def _polls(exposition, snapshots, now, scrapes_per_poll: list[int]) -> None:  # type: ignore[no-untyped-def]
    for scrapes in scrapes_per_poll:
        snapshots.append(Snapshot(timestamp=snapshots[-1].timestamp + 1, nvml_up=True))
        now[0] += 0.1
        exposition.prerender()
        for _ in range(scrapes):
            exposition.render("")


def test_scraped_more_often_than_polled_every_poll_is_rendered():
    renders, registry = _counting_registry()
    now = [0.0]
    snapshots = [Snapshot(timestamp=1.0, nvml_up=True)]
    exposition = CachedExposition(registry, lambda: snapshots[-1], monotonic=lambda: now[0])
    _polls(exposition, snapshots, now, [2] * 20)  # two scrapes per poll
    before = renders["collect"]
    _polls(exposition, snapshots, now, [0, 0])  # two polls that happen to see no scrape
    assert renders["collect"] == before + 2  # both rendered: the next scrape will not wait for one


def test_scraped_less_often_than_polled_a_poll_without_a_scrape_is_not_rendered():
    renders, registry = _counting_registry()
    now = [0.0]
    snapshots = [Snapshot(timestamp=1.0, nvml_up=True)]
    exposition = CachedExposition(registry, lambda: snapshots[-1], monotonic=lambda: now[0])
    _polls(exposition, snapshots, now, [0, 0, 0, 1] * 5)  # one scrape every fourth poll
    before = renders["collect"]
    _polls(exposition, snapshots, now, [0, 0])
    assert renders["collect"] == before + 1  # the poll after the last scrape, then nothing
