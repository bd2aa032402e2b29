"""GPM busyness (issue 17): the window rules, the reader over the simulated H200s, the exposition."""

from __future__ import annotations

import re
import subprocess
from collections import Counter

import pynvml
import pytest
from test_exporter import exposition

from gpuwatch import status as status_module
from gpuwatch.derive import throttle_sample
from gpuwatch.model import GpuReading, MigReading
from gpuwatch.nvml import gpm, use_library
from gpuwatch.nvml.reader import NvmlReader
from gpuwatch.sim import scenario
from gpuwatch.sim.clock import ManualClock
from gpuwatch.sim.library import SimulatedNvmlLibrary

FAMILIES = (
    "gpuwatch_gpu_sm_active_ratio",
    "gpuwatch_gpu_sm_occupancy_ratio",
    "gpuwatch_gpu_tensor_active_ratio",
    "gpuwatch_gpu_dram_active_ratio",
)


@pytest.mark.parametrize(
    ("baseline_s", "now_s", "previous_window_s", "action"),
    [
        (None, 10.0, None, "seed"),  # no baseline yet
        (10.0, 11.0, None, "measure"),  # the first window: nothing to compare its length with
        (10.0, 10.05, 1.0, "skip"),  # under 100 ms
        (10.0, 10.099, None, "skip"),
        (10.0, 10.125, None, "measure"),
        (10.0, 14.0, 1.0, "measure"),  # four windows: still measured
        (10.0, 14.5, 1.0, "seed"),  # a gap of more than four windows: reseed
        (10.0, 9.0, 1.0, "seed"),  # the clock went back
        (10.0, 10.35, 0.05, "measure"),  # a short previous window counts as 100 ms
        (10.0, 10.45, 0.05, "seed"),
    ],
)
def test_window_action(baseline_s, now_s, previous_window_s, action):
    assert gpm.window_action(baseline_s, now_s, previous_window_s) == action


def test_the_binding_has_the_gpm_calls_and_metric_ids_used():
    assert gpm.AVAILABLE
    # metric ids as nvml.h numbers them (the simulator speaks these numbers, never pynvml's)
    assert [getattr(pynvml, c) for _, c in gpm.RATIO_METRICS] == [2, 3, 5, 10, 13, 12, 11]
    assert [getattr(pynvml, c) for _, c in gpm.RATE_METRICS] == [20, 21, 61, 60]
    fields = [name for name, *_ in pynvml.c_nvmlGpmMetricsGet_t._fields_]
    assert fields == ["version", "numMetrics", "sample1", "sample2", "metrics"]


@pytest.fixture
def reader_over():
    made: list[tuple[NvmlReader, SimulatedNvmlLibrary]] = []

    def make(name: str) -> tuple[NvmlReader, ManualClock, SimulatedNvmlLibrary]:
        clock = ManualClock()
        library = SimulatedNvmlLibrary(scenario.load(name), clock.sim_seconds)
        use_library(library)
        reader = NvmlReader(clock.time)
        reader.open()
        made.append((reader, library))
        return reader, clock, library

    yield make
    for reader, library in made:
        reader.close()
        library.close()
    use_library(None)


def _read_all(reader: NvmlReader, clock: ManualClock, at_s: float):  # type: ignore[no-untyped-def]
    clock.advance(at_s - clock.sim_seconds())
    return [reader.read(i, slow=False) for i in range(reader.gpu_count)]


def test_decode_gpus_are_busy_but_not_really_busy_and_idle_ones_show_zeros(reader_over):
    reader, clock, _ = reader_over("h200-node")
    first = _read_all(reader, clock, 1)
    assert all(not r.activity_ratio for r in first)  # the first sample only seeds
    readings = _read_all(reader, clock, 3)
    for r in readings[:4]:  # TP-4 decode: utilization near 100 %, SM active far below, DRAM high
        a = r.activity_ratio
        assert r.utilization_ratio["gpu"] > 0.85
        assert a["sm_active"] < r.utilization_ratio["gpu"] - 0.3
        assert a["dram_active"] > a["tensor_active"]
    for r in readings[4:6]:  # prefill-heavy: compute-bound
        assert r.activity_ratio["tensor_active"] > r.activity_ratio["dram_active"]
    for r in readings[6:]:
        assert set(r.activity_ratio.values()) == {0.0}
        assert r.interconnect_bytes_per_second["nvlink", "transmit"] == 0.0
    assert readings[0].interconnect_bytes_per_second["nvlink", "transmit"] > 1e9  # TP all-reduces


def test_sm_active_follows_utilization_down(tmp_path, reader_over):
    path = tmp_path / "waiting.toml"
    path.write_text(
        'driver_version = "590.48.01"\ncuda_driver_version = 13010\n'
        '[[gpu]]\nprofile = "h200"\nload = 0.95\nworkload = "decode"\nload_steps = [[30, 0.3]]\n'
    )
    reader, clock, _ = reader_over(str(path))
    _read_all(reader, clock, 1)
    before = _read_all(reader, clock, 20)[0].activity_ratio["sm_active"]
    _read_all(reader, clock, 40)
    after = _read_all(reader, clock, 42)[0].activity_ratio["sm_active"]
    assert after < before * 0.5


def test_one_sample_get_and_one_metrics_get_per_gpu_and_poll_on_two_buffers_freed_at_close(reader_over):
    reader, clock, library = reader_over("h200-node")
    _read_all(reader, clock, 1)
    calls = library.calls_by_symbol
    before = Counter(calls)
    for t in range(2, 12):
        _read_all(reader, clock, t)
    made = calls - before
    assert made["nvmlGpmSampleGet"] == made["nvmlGpmMetricsGet"] == 10 * 8
    assert calls["nvmlGpmSampleAlloc"] == 2 * 8  # two per GPU, reused every poll
    assert len(library.gpm.samples) == 16
    reader.close()
    assert calls["nvmlGpmSampleFree"] == 16 and not library.gpm.samples


def test_polls_under_100_ms_apart_take_no_sample_and_keep_the_metrics(reader_over):
    reader, clock, library = reader_over("h200-node")
    _read_all(reader, clock, 1)
    shown = _read_all(reader, clock, 2)[0].activity_ratio
    before = library.calls_by_symbol["nvmlGpmSampleGet"]
    again = _read_all(reader, clock, 2.05)[0].activity_ratio
    assert library.calls_by_symbol["nvmlGpmSampleGet"] == before
    assert again == shown


def test_a_gap_of_many_intervals_reseeds_instead_of_averaging_over_it(reader_over):
    reader, clock, _ = reader_over("h200-node")
    for t in (1, 2, 3):
        _read_all(reader, clock, t)
    assert not _read_all(reader, clock, 30)[0].activity_ratio  # reseeded after 27 s of a 1 s rhythm
    assert _read_all(reader, clock, 31)[0].activity_ratio


def test_a_driver_before_gpm_degrades_cleanly(reader_over, tmp_path):
    path = tmp_path / "old.toml"
    path.write_text(
        'driver_version = "515.105.01"\ncuda_driver_version = 11070\n[[gpu]]\nprofile = "h100"\nload = 0.9\n'
    )
    reader, clock, _ = reader_over(str(path))
    _read_all(reader, clock, 1)
    r = _read_all(reader, clock, 2)[0]
    assert not r.activity_ratio and not r.interconnect_bytes_per_second
    assert not reader.error_counts()


def test_h200_node_exports_gpm_on_eight_gpus_and_passes_promtool(sim, promtool):
    run = sim("h200-node")
    run.at(1)
    text = exposition(run.at(5))
    for family in FAMILIES:
        assert len(re.findall(rf"^{family}\{{", text, re.M)) == 8, family
    sm = {g: float(v) for g, v in re.findall(r'^gpuwatch_gpu_sm_active_ratio\{gpu="(\d)"[^}]*\} (\S+)$', text, re.M)}
    util = dict(re.findall(r'^gpuwatch_gpu_utilization_ratio\{engine="gpu",gpu="(\d)"[^}]*\} (\S+)$', text, re.M))
    for gpu in "0123":
        assert sm[gpu] < float(util[gpu])
    assert "HELP gpuwatch_gpu_sm_active_ratio" in text and "absent on GPUs without GPM" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False)
    assert result.returncode == 0 and not result.stdout and not result.stderr, result.stdout + result.stderr


def test_cards_without_gpm_or_mig_show_none_of_their_families(sim):
    run = sim("inference-host")
    run.at(1)
    text = exposition(run.at(5))
    for family in (*FAMILIES, "gpuwatch_gpu_fp32_active_ratio", "gpuwatch_gpu_nvlink_bytes_per_second"):
        assert family not in text
    assert "gpuwatch_mig_" not in text and "gpuwatch_gpu_mig_enabled" not in text  # A6000: no MIG mode at all


def test_status_shows_sm_active_beside_utilization(sim):
    run = sim("h200-node")
    run.at(1)
    doc = status_module.to_document(run.at(3))
    table = status_module.render_table(doc)
    row = next(line for line in table.splitlines() if line.startswith("0 "))
    assert re.search(r"util \d+ %, SM active 3\d %", row), row
    idle = next(line for line in table.splitlines() if line.startswith("6 "))
    assert "util 0 %, SM active 0 %" in idle


def test_status_without_gpm_shows_utilization_alone(sim):
    run = sim("inference-host")
    run.at(1)
    table = status_module.render_table(status_module.to_document(run.at(3)))
    row = next(line for line in table.splitlines() if line.startswith("0 "))
    assert re.search(r"util \d+ %", row) and "SM active" not in row


@pytest.mark.parametrize(
    ("utilization", "activity", "mig", "busy"),
    [
        (0.9, {}, (), True),  # no GPM: utilization decides, as before
        (0.01, {}, (), False),
        (1.0, {"sm_active": 0.38}, (), True),  # decode: busy by both
        (1.0, {"sm_active": 0.01}, (), False),  # a kernel "runs" all the time on almost no SMs
        (None, {}, ({"sm_active": 0.0}, {"sm_active": 0.6}), True),  # MIG: the busiest instance
        (None, {}, ({"sm_active": 0.0},), False),
    ],
)
def test_throttle_busy_is_sm_active_where_known(utilization, activity, mig, busy):
    instances = tuple(
        MigReading(index=i, uuid="MIG-x", profile="1g.18gb", gpu_instance_id=i, compute_instance_id=0, activity_ratio=a)
        for i, a in enumerate(mig)
    )
    reading = GpuReading(
        timestamp=1.0,
        utilization_ratio={} if utilization is None else {"gpu": utilization},
        clock_event_reasons=frozenset(),
        activity_ratio=activity,
        mig_instances=instances,
    )
    assert throttle_sample(reading, 2e9).busy is busy
