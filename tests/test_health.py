"""Health verdict rules, table-driven."""

from __future__ import annotations

import pytest

from gpuwatch.analysis.health import GpuFacts, HealthThresholds, Verdict, gpu_verdict, host_verdict, worst
from gpuwatch.analysis.throttle import CLASSES, ThrottleSummary

A6000 = {"shutdown": 98.0, "slowdown": 95.0, "max_operating": 93.0, "target": 84.0}
LIMITS = HealthThresholds()


def throttle(**ratios: float) -> ThrottleSummary:
    full = dict.fromkeys(CLASSES, 0.0)
    full.update(ratios)
    full.setdefault("none", 0.0)
    dominant = max(full, key=full.__getitem__)
    return ThrottleSummary(60.0, full, dominant, 0.1)


def facts(**kw) -> GpuFacts:
    base = dict(index=2, up=True, temperature_celsius=70.0, thresholds_celsius=A6000, throttle=throttle(power_cap=1.0))
    base.update(kw)
    return GpuFacts(**base)


@pytest.mark.parametrize(
    ("kw", "state", "check", "reason_part"),
    [
        ({}, "ok", "power_cap", "power-capped 100% of the last 60 s, normal under load"),
        ({"temperature_celsius": 92.0}, "ok", "temperature", None),
        ({"temperature_celsius": 93.0}, "warning", "temperature", "93 °C ≥ 93 °C max operating"),
        ({"temperature_celsius": 95.0}, "critical", "temperature", "95 °C ≥ 95 °C slowdown"),
        ({"thresholds_celsius": {}, "margin_celsius": 10.0}, "ok", "temperature", None),
        ({"thresholds_celsius": {}, "margin_celsius": 0.0}, "warning", "temperature", "0 °C margin"),
        ({"thresholds_celsius": {}, "margin_celsius": -2.0}, "critical", "temperature", "past the slowdown"),
        ({"thresholds_celsius": {}, "temperature_celsius": None}, "unknown", "temperature", "not reported"),
        (
            {"throttle": throttle(power_cap=0.62, thermal=0.38)},
            "warning",
            "thermal",
            "thermal slowdown 38% of the last 60 s",
        ),
        ({"throttle": throttle(thermal=0.5, power_cap=0.5)}, "critical", "thermal", "thermal slowdown 50%"),
        ({"throttle": throttle(power_brake=0.05, power_cap=0.95)}, "warning", "power_brake", "HW power brake 5%"),
        ({"throttle": throttle(power_brake=1.0)}, "critical", "power_brake", "HW power brake 100%"),
        ({"throttle": throttle(hw_slowdown=0.05, none=0.95)}, "warning", "hw_slowdown", "HW slowdown without heat"),
        ({"throttle": throttle(hw_slowdown=0.2, none=0.8)}, "critical", "hw_slowdown", "HW slowdown"),
        ({"throttle": throttle(unknown=0.6, none=0.4)}, "warning", "clocks", "with no reason"),
        ({"throttle": throttle(unknown=0.2, none=0.8)}, "ok", "clocks", None),
        ({"throttle": throttle(idle=1.0)}, "ok", "thermal", None),
        ({"uncorrected_volatile_ecc": 0}, "ok", "ecc", None),
        ({"uncorrected_volatile_ecc": 2}, "critical", "ecc", "2 uncorrectable ECC"),
        ({"row_remap_pending": True, "row_remap_failure": False}, "warning", "row_remap", "reset required"),
        ({"row_remap_pending": True, "row_remap_failure": True}, "critical", "row_remap", "no spare rows"),
        ({"retired_pages_pending": True}, "warning", "retired_pages", "reset required"),
        ({"recent_xids": [(100.0, 63)], "now": 200.0}, "warning", "xid", "Xid 63"),
        ({"recent_xids": [(100.0, 48), (150.0, 63)], "now": 200.0}, "critical", "xid", "critical Xid 48"),
        ({"recent_xids": [(100.0, 48)], "now": 100.0 + 3601}, "ok", "xid", None),  # aged out
        ({"recent_xids": [(100.0, 13)], "now": 200.0}, "ok", "xid", None),  # application Xid
        ({"up": False, "error": "GpuIsLost (code 15)"}, "critical", "up", "GPU 2: not answering (GpuIsLost"),
    ],
)
def test_rules(kw, state, check, reason_part):
    verdict = gpu_verdict(facts(**kw), LIMITS)
    assert verdict.state == state
    assert verdict.checks[check] == state
    if reason_part is not None:
        assert any(reason_part in r for r in verdict.reasons), verdict.reasons
    if state == "ok":
        assert all("power-capped" in r for r in verdict.reasons)


def test_checks_that_do_not_apply_are_left_out():
    verdict = gpu_verdict(facts(), LIMITS)  # no ECC, remap or retired-page facts: a consumer card
    assert "ecc" not in verdict.checks and "row_remap" not in verdict.checks
    assert verdict.state == "ok"


def test_reasons_put_the_worst_first():
    verdict = gpu_verdict(
        facts(temperature_celsius=93.0, uncorrected_volatile_ecc=1, throttle=throttle(thermal=0.1, power_cap=0.9)),
        LIMITS,
    )
    assert verdict.state == "critical"
    assert "uncorrectable" in verdict.reasons[0]


def test_thresholds_are_configurable():
    strict = HealthThresholds(sustained_ratio=0.2, critical_xids=(13,))
    assert gpu_verdict(facts(throttle=throttle(thermal=0.3, power_cap=0.7)), strict).state == "critical"
    assert gpu_verdict(facts(recent_xids=[(0.0, 13)], now=1.0), strict).state == "critical"


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([], "ok"),
        (["ok", "ok"], "ok"),
        (["ok", "unknown"], "unknown"),
        (["unknown", "warning"], "warning"),
        (["warning", "critical", "ok"], "critical"),
    ],
)
def test_worst(states, expected):
    assert worst(states) == expected


def test_host_verdict():
    ok = Verdict("ok", (), {})
    bad = Verdict("warning", ("GPU 2: thermal slowdown 38% of the last 60 s",), {})
    assert host_verdict(True, None, [ok, bad]).state == "warning"
    assert host_verdict(True, None, [ok, bad]).reasons == bad.reasons
    assert host_verdict(True, None, [ok, ok]).reasons == ("2 GPU(s) ok",)
    assert host_verdict(False, "LibraryNotFound", []).state == "unknown"
    assert host_verdict(True, None, []).state == "unknown"


def test_a_hung_gpu_is_a_warning_until_it_has_hung_for_a_whole_window():
    limits = HealthThresholds(window_seconds=60)
    brief = gpu_verdict(GpuFacts(index=2, up=False, stale_seconds=31), limits)
    assert brief.state == "warning" and brief.reasons == (
        "GPU 2: NVML call not returning for 31 s; showing its last values",
    )
    assert gpu_verdict(GpuFacts(index=2, up=False, stale_seconds=60), limits).state == "critical"
    assert gpu_verdict(GpuFacts(index=2, up=False, error="GpuIsLost (code 15)"), limits).state == "critical"


@pytest.mark.parametrize("margin", [0.0, -0.0, -0.4])
def test_a_margin_just_below_zero_reads_0_not_minus_0(margin):
    """A cached verdict for margin 0.0 serves -0.0 too (they compare equal): both must read the same."""
    verdict = gpu_verdict(facts(margin_celsius=margin, thresholds_celsius={}), HealthThresholds())
    assert len(verdict.reasons) == 1 and verdict.reasons[0].startswith("GPU 2: 0 °C margin, "), verdict
