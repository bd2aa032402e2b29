"""`gpuwatch sim-run`: gpustat and nvitop, unmodified, over the simulated driver, run as the real
command; what they show is what gpuwatch reads at the same simulated instant."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpuwatch import simrun

pytestmark = pytest.mark.slow  # each run starts an interpreter that imports gpustat or nvitop

GPUWATCH = str(Path(sys.executable).parent / "gpuwatch")
PROBE = str(Path(__file__).parent / "simrun_probe.py")
AT_S = 150  # GPUs loaded, power-capped, one heating: readings differ from GPU to GPU
MIB = 2**20
# What a real driver never makes these tools print.
_TROUBLE = re.compile(r"Traceback|NVMLError|NVML_ERROR|FunctionNotFound|Function Not Found|Error|ERROR")


def sim_run(scenario: str, *program: str) -> str:
    """Run ``gpuwatch sim-run`` with simulated time held at AT_S; its stdout, after checking that it
    exited 0 and printed nothing a real driver would not cause."""
    done = subprocess.run(
        [GPUWATCH, "sim-run", scenario, "--sim-at", f"{AT_S}s", "--sim-speed", "0", "--", *program],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not _TROUBLE.search(done.stdout + done.stderr), done.stdout + done.stderr
    return done.stdout


def readings(sim, scenario):  # type: ignore[no-untyped-def]
    """What gpuwatch reads (and exports) at AT_S, one GpuReading per GPU."""
    snapshot = sim(scenario).at(AT_S)
    return [status.reading for status in snapshot.gpus]


@pytest.mark.parametrize("scenario", ["inference-host", "mixed-fleet"])
def test_gpustat_shows_what_gpuwatch_reads(sim, scenario):
    shown = json.loads(sim_run(scenario, "gpustat", "--json"))["gpus"]
    expected = readings(sim, scenario)
    assert len(shown) == len(expected)
    for gpu, r in zip(shown, expected, strict=True):
        assert gpu["temperature.gpu"] == r.temperature_celsius
        assert abs(gpu["power.draw"] - r.power_watts) <= 1  # gpustat truncates milliwatts to watts
        assert gpu["enforced.power.limit"] == r.power_limit_watts
        assert gpu["memory.used"] == r.memory_used_bytes // MIB
        assert gpu["utilization.gpu"] == round(r.utilization_ratio["gpu"] * 100)
        busy = r.utilization_ratio["gpu"] > 0
        assert bool(gpu["processes"]) == busy  # a busy GPU lists its process, an idle one none
        for process in gpu["processes"]:
            assert process["command"] in ("vllm", "python3") and process["username"]


@pytest.mark.parametrize("scenario", ["inference-host", "mixed-fleet"])
def test_nvitop_once_shows_what_gpuwatch_reads(sim, scenario):
    from nvitop.api.utils import bytes2human

    out = sim_run(scenario, "nvitop", "--once")
    # Each GPU's second row: fan, temperature, P-state, power usage / cap, memory used / total, util.
    rows = re.findall(r"│\s*(?:\d+%|N/A)\s+(\d+)C\s+P(\d+)\s+(\d+)W / (\d+)W\s+│\s+(\S+) / \S+\s+│\s+(\d+)%", out)
    expected = readings(sim, scenario)
    assert len(rows) == len(expected), out
    for (temperature, pstate, power, cap, memory, util), r in zip(rows, expected, strict=True):
        assert int(temperature) == r.temperature_celsius
        assert int(pstate) == r.performance_state
        assert abs(int(power) - r.power_watts) <= 1
        assert int(cap) == r.power_limit_watts
        assert memory == bytes2human(r.memory_used_bytes)
        assert int(util) == round(r.utilization_ratio["gpu"] * 100)


@pytest.mark.parametrize("scenario", ["inference-host", "mixed-fleet"])
def test_clocks_through_nvitops_api_are_gpuwatchs(sim, scenario):
    shown = json.loads(sim_run(scenario, PROBE))
    for gpu, r in zip(shown, readings(sim, scenario), strict=True):
        assert gpu["temperature"] == r.temperature_celsius
        assert abs(gpu["power_mw"] / 1000 - r.power_watts) < 0.001
        assert gpu["memory_used"] == r.memory_used_bytes
        assert {k: v * 1e6 for k, v in gpu["clocks_mhz"].items()} == dict(r.clocks_hertz)
        assert gpu["performance_state"] == f"P{r.performance_state}"


def test_a_module_runs_with_its_arguments_and_its_exit_status_is_sim_runs():
    done = subprocess.run(
        [GPUWATCH, "sim-run", "healthy", "--", "-m", "nvitop", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "nvitop" in done.stdout.lower()
    done = subprocess.run(
        [GPUWATCH, "sim-run", "healthy", "--", "-m", "json.tool", "/nonexistent.json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0


@pytest.mark.parametrize(
    ("program", "code", "says"),
    [
        (["no-such-program-anywhere"], simrun.EXIT_NOT_FOUND, "not found"),
        (["/bin/sh"], simrun.EXIT_NOT_RUNNABLE, "not a Python program"),
    ],
)
def test_what_cannot_run_in_process_is_refused_with_the_shells_codes(program, code, says):
    done = subprocess.run([GPUWATCH, "sim-run", "healthy", "--", *program], capture_output=True, text=True, timeout=60)
    assert done.returncode == code and says in done.stderr


def test_an_unknown_scenario_is_a_usage_error():
    done = subprocess.run([GPUWATCH, "sim-run", "no-such-scenario", "--", "gpustat"], capture_output=True, text=True)
    assert done.returncode == 2 and "no-such-scenario" in done.stderr
