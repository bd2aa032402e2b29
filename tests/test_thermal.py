"""Thermal truth: every way real cards report their limits, from the captures in tests/data/captures/."""

from __future__ import annotations

import pytest

from gpuwatch.analysis import thermal
from gpuwatch.analysis.health import HealthThresholds
from gpuwatch.derive import GpuHistory, Read, derive
from gpuwatch.model import GpuIdentity, GpuReading

# (card and driver as captured, absolute thresholds, T.Limit offsets, temperature, the driver's margin
#  or None where its driver lacks the query), then what gpuwatch must make of it.
CASES = [
    pytest.param(
        {"shutdown": 98.0, "slowdown": 95.0, "max_operating": 93.0, "target": 84.0},
        {},
        28.0,
        None,
        ("absolute", 65.0, {"shutdown": 98.0, "slowdown": 95.0, "max_operating": 93.0, "target": 84.0}),
        id="RTX A6000 at 550: absolute only",
    ),
    pytest.param(
        {"shutdown": 92.0, "slowdown": 89.0, "max_operating": 85.0, "memory_max": 95.0},
        {},
        25.0,
        None,
        ("absolute", 60.0, {"shutdown": 92.0, "slowdown": 89.0, "max_operating": 85.0, "memory_max": 95.0}),
        id="A100-SXM4-80GB at 555: absolute only",
    ),
    pytest.param(
        {},
        {"shutdown": -8.0, "slowdown": -2.0, "memory_max": 0.0, "max_operating": 0.0},
        28.0,
        59.0,
        ("tlimit", 59.0, {"shutdown": 95.0, "slowdown": 89.0, "max_operating": 87.0}),
        id="H200 at 590: T.Limit only",
    ),
    pytest.param(
        {},
        {"shutdown": -8.0, "slowdown": -2.0, "memory_max": 0.0, "max_operating": 0.0},
        41.0,
        46.0,
        ("tlimit", 46.0, {"shutdown": 95.0, "slowdown": 89.0, "max_operating": 87.0}),
        id="H100 SXM at 590: T.Limit only",
    ),
    pytest.param(
        {},
        {"shutdown": -5.0, "slowdown": -2.0, "max_operating": 0.0},
        64.0,
        24.0,
        ("tlimit", 24.0, {"shutdown": 93.0, "slowdown": 90.0, "max_operating": 88.0}),
        id="L40S at 595: T.Limit only",
    ),
    pytest.param(
        {"shutdown": 92.0, "slowdown": 89.0, "max_operating": 87.0},
        {"shutdown": -5.0, "slowdown": -2.0, "max_operating": 0.0},
        50.0,
        37.0,
        ("absolute", 37.0, {"shutdown": 92.0, "slowdown": 89.0, "max_operating": 87.0}),
        id="both (an H800 at 525 answers both)",
    ),
    pytest.param(
        {"target": 84.0},
        {"shutdown": -7.0, "slowdown": -2.0, "max_operating": 0.0},
        28.0,
        None,
        ("none", None, {"target": 84.0}),
        id="RTX 4090 at 550: T.Limit offsets, no margin query before R570",
    ),
    pytest.param({}, {}, 40.0, None, ("none", None, {}), id="neither"),
]


@pytest.mark.parametrize(("absolute", "tlimit", "temperature", "margin", "expected"), CASES)
def test_every_way_a_card_reports_its_limits(absolute, tlimit, temperature, margin, expected):
    reference, margin_out, thresholds = expected
    assert thermal.reference(absolute, tlimit, margin) == reference
    assert thermal.margin_celsius(temperature, margin, absolute) == margin_out
    assert dict(thermal.thresholds_celsius(temperature, margin, absolute, tlimit)) == thresholds


@pytest.mark.parametrize(("absolute", "tlimit", "temperature", "margin", "expected"), CASES)
def test_a_gpu_is_never_unknown_while_a_thermal_reference_answers(absolute, tlimit, temperature, margin, expected):
    identity = GpuIdentity(
        index=0,
        uuid="GPU-a",
        name="x",
        pci_bus_id="0",
        temperature_thresholds_celsius=absolute,
        temperature_tlimit_celsius=tlimit,
    )
    reading = GpuReading(timestamp=1.0, temperature_celsius=temperature, temperature_margin_celsius=margin)
    status = derive(GpuHistory.start(HealthThresholds(), 1.0), identity, Read(reading), 1.0, HealthThresholds())
    assert status.verdict.state != "unknown"
    reference = expected[0]
    assert status.temperature_reference == reference
    assert ("temperature" in status.verdict.checks) == (reference != "none")


@pytest.mark.parametrize(
    ("temperature", "margin", "state"),
    [(80.0, 7.0, "ok"), (87.0, 0.0, "warning"), (89.0, -2.0, "critical")],
)
def test_a_tlimit_card_is_judged_by_its_margin(temperature, margin, state):
    identity = GpuIdentity(
        index=0,
        uuid="GPU-h",
        name="NVIDIA H200",
        pci_bus_id="0",
        temperature_tlimit_celsius={"shutdown": -8.0, "slowdown": -2.0, "max_operating": 0.0},
    )
    reading = GpuReading(timestamp=1.0, temperature_celsius=temperature, temperature_margin_celsius=margin)
    status = derive(GpuHistory.start(HealthThresholds(), 1.0), identity, Read(reading), 1.0, HealthThresholds())
    assert status.verdict.checks["temperature"] == state
    assert status.temperature_thresholds_celsius["slowdown"] == 89.0
