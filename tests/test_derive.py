"""The derive step from tables: a GPU's history and one poll's outcome -> its status. No NVML, no threads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from gpuwatch.analysis.health import HealthThresholds
from gpuwatch.derive import Failed, GpuHistory, Hung, Outcome, Read, derive
from gpuwatch.model import GpuIdentity, GpuProcess, GpuReading, GpuStatus

HEALTH = HealthThresholds()
A6000 = GpuIdentity(
    index=0,
    uuid="GPU-a",
    name="NVIDIA RTX A6000",
    pci_bus_id="00000000:01:00.0",
    temperature_thresholds_celsius={"max_operating": 93.0, "slowdown": 95.0, "shutdown": 98.0},
    max_clocks_hertz={"sm": 2100e6},
)
L40S = GpuIdentity(index=1, uuid="GPU-b", name="NVIDIA L40S", pci_bus_id="00000000:02:00.0")  # margin only
VLLM = GpuProcess(pid=4242, name="vllm", user="svc", used_memory_bytes=40 * 2**30)


def reading(t: float, **values: Any) -> GpuReading:
    base: dict[str, Any] = {
        "timestamp": t,
        "temperature_celsius": 70.0,
        "clocks_hertz": {"sm": 2100e6},
        "utilization_ratio": {"gpu": 1.0},
        "clock_event_reasons": frozenset(),
    }
    return GpuReading(**(base | values))


@dataclass
class Row:
    """Outcomes at t = 1, 2, ... for one GPU, and what the last status must show."""

    name: str
    outcomes: list[Outcome]
    expect: dict[str, Any]
    identity: GpuIdentity = A6000
    xids: list[tuple[float, int]] = field(default_factory=list)  # recorded before the last outcome


def run(row: Row) -> GpuStatus:
    history = GpuHistory.start(HEALTH, poll_interval_s=1.0)
    status = None
    for t, outcome in enumerate(row.outcomes, start=1):
        if t == len(row.outcomes):
            for at, xid in row.xids:
                history.record_xid(at, xid)
        status = derive(history, row.identity, outcome, float(t), HEALTH)
    assert status is not None
    return status


ROWS = [
    Row(
        "energy is reset-safe across a driver reload",
        [
            Read(reading(1, energy_joules=1000.0)),
            Read(reading(2, energy_joules=1300.0)),
            Read(reading(3, energy_joules=50.0)),
        ],
        {"energy_joules_total": 1350.0, "energy_resets": 1, "up": True},
    ),
    Row(
        "violation and ECC counters carry across a reset",
        [
            Read(reading(1, violation_seconds={"power": 5.0}, ecc_errors={("corrected", "volatile"): 3})),
            Read(reading(2, violation_seconds={"power": 1.0}, ecc_errors={("corrected", "volatile"): 1})),
        ],
        {"violation_seconds_total": {"power": 6.0}, "ecc_errors_total": {("corrected", "volatile"): 4.0}},
    ),
    Row(
        "margin falls back to max_operating minus temperature",
        [Read(reading(1, temperature_celsius=80.0))],
        {"temperature_margin_celsius": 13.0},
    ),
    Row(
        "the driver's own margin wins where it answers",
        [Read(reading(1, temperature_celsius=80.0, temperature_margin_celsius=9.0))],
        {"temperature_margin_celsius": 9.0},
    ),
    Row(
        "a card with a temperature and no limit has no temperature check, and is not unknown",
        [Read(reading(1))],
        {"temperature_margin_celsius": None, "verdict.state": "ok", "temperature_reference": "none"},
        identity=L40S,
    ),
    Row(
        "processes from a slow read stay through fast ones",
        [Read(reading(1), processes=(VLLM,)), Read(reading(2)), Read(reading(3))],
        {"processes": (VLLM,)},
    ),
    Row(
        "a lost GPU is down and critical",
        [Read(reading(1)), Failed("GpuIsLost (code 15)")],
        {"up": False, "reading": None, "error": "GpuIsLost (code 15)", "verdict.state": "critical"},
    ),
    Row(
        "a hung GPU keeps its last values, marked stale",
        [Read(reading(1, power_watts=299.0)), Read(reading(2, power_watts=300.0)), Hung(since=2.5)],
        {"up": False, "reading.power_watts": 300.0, "stale_since": 2.5, "error": "NVML call not returning for 0 s"},
    ),
    Row(
        "a GPU hung after a failed poll shows nothing older than the failure",
        [Read(reading(1, power_watts=300.0)), Failed("Unknown (code 999)"), Hung(since=2.5)],
        {"up": False, "reading": None, "stale_since": None},
    ),
    Row(
        "a GPU hung before it ever answered has nothing to show",
        [Hung(since=0.5)],
        {"up": False, "reading": None, "stale_since": None},
    ),
    Row(
        "a critical Xid makes the verdict critical and is counted",
        [Read(reading(1)), Read(reading(2))],
        {"xid_errors": {79: 1}, "verdict.checks.xid": "critical", "verdict.state": "critical"},
        xids=[(1.5, 79)],
    ),
    Row(
        "sitting at the power cap under load is ok",
        [Read(reading(t, clock_event_reasons=frozenset({"sw_power_cap"}))) for t in range(1, 11)],
        {"throttle.dominant": "power_cap", "verdict.state": "ok", "clocks_event_seconds": {"sw_power_cap": 9.0}},
    ),
    Row(
        "an HW power brake through the window is critical",
        [
            Read(reading(t, clock_event_reasons=frozenset({"hw_power_brake"}), clocks_hertz={"sm": 600e6}))
            for t in range(1, 11)
        ],
        {"throttle.dominant": "power_brake", "verdict.state": "critical"},
    ),
]


def _get(status: Any, path: str) -> Any:
    value = status
    for part in path.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_derive(row: Row) -> None:
    status = run(row)
    if row.expect.get("temperature_reference") == "none":
        assert "temperature" not in status.verdict.checks
    for path, expected in row.expect.items():
        value = _get(status, path)
        if isinstance(expected, dict):
            value = dict(value)
        assert value == expected, (path, value)


def test_a_hung_gpus_history_is_not_advanced() -> None:
    history = GpuHistory.start(HEALTH, poll_interval_s=1.0)
    derive(history, A6000, Read(reading(1, energy_joules=10.0)), 1.0, HEALTH)
    before = (history.energy, history.last_read)
    derive(history, A6000, Hung(since=1.5), 2.0, HEALTH)
    assert (history.energy, history.last_read) == before
