"""Every built-in device profile against the real ``nvidia-smi -q`` capture of its card.

Each value is read twice: from the capture's text (``gpuwatch.sim.smi``) and from the simulated
driver through pynvml, on a one-GPU host of that profile running the capture's driver. Where they
differ the simulator is wrong (tests/data/captures/README.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pynvml
import pytest
from captures import CAPTURES, answer, field, from_capture, from_simulator

from gpuwatch.nvml import use_library
from gpuwatch.sim import scenario, smi
from gpuwatch.sim.clock import ManualClock
from gpuwatch.sim.library import SimulatedNvmlLibrary
from gpuwatch.sim.profiles import PROFILES

CAPTURE_OF = {
    "rtx-a6000": "rtx-a6000__550.127.05.txt",
    "l40s": "l40s__595.80.txt",
    "a100-sxm4-80gb": "a100-sxm4-80gb__555.42.02.txt",
    "h100": "h100-sxm-80gb-hbm3__590.48.01.txt",
    "h200": "h200__590.48.01.txt",
    "rtx-4090": "rtx-4090__550.127.05.txt",
}


def test_every_profile_has_a_capture():
    assert set(CAPTURE_OF) == set(PROFILES)
    assert all((CAPTURES / name).is_file() for name in CAPTURE_OF.values())


def capture(key: str) -> smi.SmiCapture:
    return smi.parse((CAPTURES / CAPTURE_OF[key]).read_text(encoding="utf-8"))


@contextlib.contextmanager
def simulated(key: str, driver: str) -> Iterator[Any]:
    """pynvml over a one-GPU, idle host of ``key`` with ``driver``; yields the GPU's handle."""
    text = f'driver_version = "{driver}"\n[[gpu]]\nprofile = "{key}"\nload = 0.0\n'
    use_library(SimulatedNvmlLibrary(scenario.parse(text), ManualClock().sim_seconds))
    pynvml.nvmlInit()
    try:
        yield pynvml.nvmlDeviceGetHandleByIndex(0)
    finally:
        pynvml.nvmlShutdown()
        use_library(None)


@pytest.mark.parametrize("key", sorted(CAPTURE_OF))
def test_the_simulated_card_answers_what_its_capture_shows(key):
    taken = capture(key)
    expected = [from_capture(gpu) for gpu in taken.host()]
    with simulated(key, taken.driver_version or "") as h:
        got = from_simulator(h)
    # Every GPU of the capture says the same; the profile must say it too.
    assert got in expected, {k: (got[k], expected[0][k]) for k in got if got[k] != expected[0][k]}


@pytest.mark.parametrize("key", sorted(CAPTURE_OF))
def test_idle_state_is_the_captures(key):
    taken = capture(key)
    idle = [b for g in taken.host() if (b := taken.idle_block(g.bus_id)) is not None]
    if not idle:
        pytest.skip(f"{CAPTURE_OF[key]} never shows the GPU idle")
    with simulated(key, taken.driver_version or "") as h:
        pstate = pynvml.nvmlDeviceGetPerformanceState(h)
        generation = pynvml.nvmlDeviceGetCurrPcieLinkGeneration(h)
        clocks = tuple(
            pynvml.nvmlDeviceGetClockInfo(h, c)
            for c in (pynvml.NVML_CLOCK_GRAPHICS, pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM, pynvml.NVML_CLOCK_VIDEO)
        )
    assert {b.pstate for b in idle} == {pstate}
    assert {b.pcie("generation") for b in idle} == {generation}
    assert clocks in {b.clocks() for b in idle}  # one A100 idled at 930 MHz, the other three at 210


@pytest.mark.parametrize("key", sorted(CAPTURE_OF))
def test_the_tlimit_point_and_the_margin_are_the_captures(key):
    """On T.Limit cards the max-operating point is where the capture's temperature plus its T.Limit
    reading lands; the margin query answers on R570+ only, and only where the card has T.Limit."""
    taken = capture(key)
    profile = PROFILES[key]
    points = {g.temperature("current") + g.temperature("margin") for g in taken.gpus if g.temperature("margin")}
    assert profile.thresholds_tlimit == bool(points)
    if points:
        assert min(abs(profile.thresholds.max_operating - p) for p in points) == 0, points
    with simulated(key, "570.133.07") as h:
        margin = answer(lambda: pynvml.nvmlDeviceGetMarginTemperature(h))
        temperature = pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
    assert (margin is not None) == bool(points)
    if margin is not None:
        assert margin == profile.thresholds.max_operating - temperature
    with simulated(key, "550.127.05") as h, pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetMarginTemperature(h)  # R570


@pytest.mark.parametrize("key", ["h100", "h200", "l40s"])
def test_nvlink_link_count_is_the_captures(key):
    taken = capture(key)
    with simulated(key, taken.driver_version or "") as h:
        links = field(h, pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT)
    assert (links or 0) == taken.nvlink_links.get(0, 0)


@pytest.mark.parametrize("key", ["h100", "h200"])
def test_hbm_runs_cooler_than_the_die_under_load_and_warmer_at_idle(key):
    text = f'driver_version = "590.48.01"\n[[gpu]]\nprofile = "{key}"\nload = 0.0\nload_steps = [[60, 0.95]]\n'
    clock = ManualClock()
    use_library(SimulatedNvmlLibrary(scenario.parse(text), clock.sim_seconds))
    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)

        def temperatures() -> tuple[int, int | None]:
            return pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU), field(h, 82)

        clock.advance(59)
        die, memory = temperatures()
        assert memory is not None and memory > die  # H200 capture idle: 32 vs 28
        assert pynvml.nvmlDeviceGetPerformanceState(h) == 0  # Hopper idles at P0
        clock.advance(600)
        die, memory = temperatures()
        assert memory is not None and memory < die  # H200 capture at 628 W: 41 vs 52
    finally:
        pynvml.nvmlShutdown()
        use_library(None)
