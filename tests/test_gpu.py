"""On a real NVIDIA driver only (`pytest -m gpu`): every core family, with physical values.

Skipped, not failed, where NVML does not load, so CI without a GPU stays green.
"""

from __future__ import annotations

import time

import pytest
from prometheus_client import generate_latest
from real_driver import real_reader

from gpuwatch.exporter.registry import build_registry
from gpuwatch.runtime import RuntimeOptions, assemble

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def snapshots():
    probe = real_reader()
    probe.close()
    with assemble(RuntimeOptions()) as rt:
        rt.start(threads=False)
        first = rt.step()
        time.sleep(1.5)  # two polls a moment apart, so the energy counter moves
        second = rt.step()
    return first, second


def test_every_gpu_answers_with_physical_values(snapshots):
    first, second = snapshots
    assert second.nvml_up and second.gpus
    for before, gpu in zip(first.gpus, second.gpus, strict=True):
        assert gpu.up, gpu.error
        r, g = gpu.reading, gpu.identity
        assert g.uuid.startswith(("GPU-", "MIG-")) and g.name
        assert 0 < r.power_watts < 2000
        assert 0 < r.power_limit_watts < 2000 and r.power_watts <= 1.2 * r.power_limit_watts
        assert 0 < r.temperature_celsius < 110
        assert 0 <= r.utilization_ratio["gpu"] <= 1
        assert 0 < r.memory_used_bytes <= g.memory_size_bytes
        assert 0 < r.clocks_hertz["memory"] <= g.max_clocks_hertz["memory"] * 1.01
        assert r.clock_event_reasons is not None
        assert gpu.energy_joules_total >= before.energy_joules_total


def test_exposition_has_the_core_families(snapshots, promtool):
    import subprocess

    _, second = snapshots
    text = generate_latest(build_registry(lambda: second, include_process=False))
    for family in (
        b"gpuwatch_gpu_info",
        b"gpuwatch_gpu_power_watts",
        b"gpuwatch_gpu_power_limit_watts",
        b"gpuwatch_gpu_energy_joules_total",
        b"gpuwatch_gpu_temperature_celsius",
        b"gpuwatch_gpu_clock_hertz",
        b"gpuwatch_gpu_memory_used_bytes",
        b"gpuwatch_gpu_clocks_event_active",
    ):
        assert family in text, family
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert check.returncode == 0 and not check.stdout and not check.stderr
