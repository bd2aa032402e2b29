"""`gpuwatch tune power-limit`: the pure recommendation, the simulated driver's power-limit setter,
sweeps on simulated time (in process, nothing waits on the wall clock), and the command itself
with its acceptance run and a SIGINT halfway (a subprocess on a sped-up simulated host)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pynvml
import pytest

from gpuwatch.analysis.tuning import TunePoint, WorkSample, limits_between, point, recommend, settled
from gpuwatch.nvml import use_library
from gpuwatch.nvml.power_limit import PowerLimitControl, PowerLimitError
from gpuwatch.runtime import RuntimeOptions, assemble
from gpuwatch.sim.clock import ManualClock
from gpuwatch.tuner import TuneError, TunePlan, Tuner, TuneResult
from tests.waiting import wait_until

ACCEPTANCE = ("--simulate", "inference-host", "--sim-speed", "60", "--gpus", "0,1")
SWEEP = ("--from", "200W", "--to", "300W", "--step", "25W", "--dwell", "60s")


@pytest.fixture(autouse=True)
def _real_library_afterwards():
    yield
    use_library(None)


# -- pure ----------------------------------------------------------------------------------------


def test_limits_run_from_low_to_high_and_always_include_the_top():
    assert limits_between(200, 300, 25) == [200, 225, 250, 275, 300]
    assert limits_between(200, 290, 25) == [200, 225, 250, 275, 290]
    assert limits_between(250, 250, 25) == [250]
    with pytest.raises(ValueError, match="above"):
        limits_between(300, 200, 25)


def test_a_point_is_work_over_time_and_over_energy():
    p = point(250, WorkSample(10.0, 1000.0, 5000.0, 10.0), WorkSample(70.0, 61000.0, 35000.0, 70.0))
    assert p == TunePoint(250, 1000.0, 2.0, 500.0)
    # Tokens scraped 0.5 s after each poll, on their own timestamps: the same figures.
    p = point(250, WorkSample(10.0, 1500.0, 5000.0, 10.5), WorkSample(70.0, 61500.0, 35000.0, 70.5))
    assert p == TunePoint(250, 1000.0, 2.0, 500.0)
    with pytest.raises(ValueError):
        point(250, WorkSample(10.0, 0, 0, 10.0), WorkSample(10.0, 0, 0, 10.0))


def test_settled_needs_two_means_within_tolerance():
    assert not settled([500.0])
    assert not settled([560.0, 500.0])
    assert settled([505.0, 500.0])


def test_the_recommendation_is_the_best_per_joule_within_the_throughput_tolerance():
    points = [
        TunePoint(200, 900.0, 2.25, 400.0),  # best per joule, but 90 % of the tokens
        TunePoint(250, 978.0, 1.96, 499.0),
        TunePoint(300, 1000.0, 1.67, 600.0),
    ]
    rec = recommend(points, 0.95)
    assert rec is not None and rec.limit_watts == 250
    assert rec.throughput_ratio == pytest.approx(0.978)
    assert rec.energy_ratio == pytest.approx(499 / 600)
    assert recommend(points, 0.85).limit_watts == 200  # type: ignore[union-attr]
    # Ratios are against the highest limit, even where noise put a lower one ahead on throughput.
    noisy = [TunePoint(250, 1010.0, 2.02, 500.0), TunePoint(300, 1000.0, 1.67, 600.0)]
    rec = recommend(noisy, 0.95)
    assert rec is not None and rec.limit_watts == 250 and rec.throughput_ratio == pytest.approx(1.01)
    assert recommend([], 0.95) is None


# -- the simulated driver's setter ---------------------------------------------------------------


def test_the_simulated_driver_sets_limits_within_its_constraints(nvml):
    nvml("inference-host")
    control = PowerLimitControl()
    try:
        control.set(0, 250)
        assert control.limits(0).current_watts == 250
        assert (control.limits(0).min_watts, control.limits(0).max_watts) == (100, 300)
        with pytest.raises(PowerLimitError, match="Invalid Argument"):
            control.set(0, 301)
        with pytest.raises(PowerLimitError, match="Invalid Argument"):
            control.set(0, 99)
        assert control.limits(0).current_watts == 250
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        assert pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) == 250_000
    finally:
        control.close()


def test_an_unprivileged_caller_gets_no_permission(nvml, tmp_path):
    path = tmp_path / "unprivileged.toml"
    path.write_text('name = "unprivileged"\nprivileged = false\n[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n')
    nvml(str(path))
    control = PowerLimitControl()
    try:
        with pytest.raises(PowerLimitError, match="root or CAP_SYS_ADMIN"):
            control.set(0, 250)
        assert control.limits(0).current_watts == 300
    finally:
        control.close()


# -- sweeps on simulated time, in process ---------------------------------------------------------


def sweep(scenario: str, plan: TunePlan, interrupt_at: str | None = None):  # type: ignore[no-untyped-def]
    """Run a sweep on a hand-stepped clock; ``interrupt_at``: Ctrl-C when a progress line holds it."""
    clock = ManualClock()
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        if interrupt_at is not None and interrupt_at in line:
            raise KeyboardInterrupt

    with assemble(RuntimeOptions(simulate=scenario), clock=clock) as rt:
        rt.start(threads=False)
        control = PowerLimitControl()
        try:
            tuner = Tuner(rt, control, plan, clock.advance, progress)
            result = TuneResult(plan.gpus, plan.source, tuner.original_limits())
            interrupted = False
            try:
                tuner.run(result)
            except KeyboardInterrupt:
                interrupted = True
            assert rt.host.library is not None
            limits = [gpu.power_limit_w for gpu in rt.host.library.gpus]
        finally:
            control.close()
    return result, limits, lines, interrupted


def test_a_sweep_measures_the_vllm_source_and_recommends_below_the_default():
    plan = TunePlan((0, 1), (200.0, 250.0, 300.0), 60.0, 0.95, source="vllm")
    result, limits, lines, _ = sweep("inference-host", plan)
    assert [p.limit_watts for p in result.points] == [200, 250, 300]
    assert result.restored and limits[:2] == [300, 300]
    by_limit = {p.limit_watts: p for p in result.points}
    # Decode is memory-bound at full clocks (gpuwatch.sim.inference): a 17 % cut costs ~nothing.
    assert by_limit[250].tokens_per_second > 0.98 * by_limit[300].tokens_per_second
    assert by_limit[250].tokens_per_joule > 1.1 * by_limit[300].tokens_per_joule
    for p in result.points:
        assert p.power_watts == pytest.approx(2 * p.limit_watts, rel=0.03)  # both GPUs at their cap
    assert result.recommended is not None and result.recommended.limit_watts < 300
    assert any("measuring for 60 s" in line for line in lines)
    assert any("/60 s" in line for line in lines), "no progress during the dwell"


def test_ctrl_c_halfway_restores_every_original_limit():
    plan = TunePlan((0, 1), (200.0, 225.0, 250.0, 275.0, 300.0), 60.0, 0.95, source="vllm")
    result, limits, _, interrupted = sweep("inference-host", plan, interrupt_at="250 W: settled")
    assert interrupted
    assert [p.limit_watts for p in result.points] == [200, 225]
    assert result.restored and limits == [300, 300, 300, 300]


def test_a_missing_source_stops_the_sweep_and_still_restores():
    plan = TunePlan((0, 1), (200.0, 300.0), 30.0, 0.95, source="nope")
    with pytest.raises(TuneError, match="no token source named 'nope'"):
        sweep("inference-host", plan)


def test_it_refuses_limits_outside_a_gpus_range():
    plan = TunePlan((0,), (50.0, 300.0), 30.0, 0.95)
    with pytest.raises(TuneError, match="from 100 to 300 W, not 50 W"):
        sweep("inference-host", plan)


# -- the command ----------------------------------------------------------------------------------


def gpuwatch(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "gpuwatch", "tune", "power-limit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def stderr_lines(proc: subprocess.Popen[str]) -> tuple[list[str], threading.Thread]:
    """The process's stderr lines as they come, read by a thread of their own."""
    seen: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        seen.extend(proc.stderr)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return seen, reader


def test_the_acceptance_run_prints_the_curve_as_json():
    proc = gpuwatch(*ACCEPTANCE, *SWEEP, "--json")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert set(doc) == {"gpus", "source", "original_limits_watts", "restored", "points", "recommended"}
    assert doc["gpus"] == [0, 1] and doc["source"] is None and doc["restored"] is True
    assert doc["original_limits_watts"] == {"0": 300.0, "1": 300.0}
    assert [p["limit_watts"] for p in doc["points"]] == [200, 225, 250, 275, 300]
    for p in doc["points"]:
        assert set(p) == {"limit_watts", "tokens_per_second", "tokens_per_joule", "power_watts"}
    best = max(doc["points"], key=lambda p: p["tokens_per_joule"])
    assert best["limit_watts"] < 300
    assert set(doc["recommended"]) == {"limit_watts", "throughput_ratio", "energy_ratio"}
    assert "no --source: measuring the GPUs' own work" in err
    assert "restored original limits: GPU 0 300 W, GPU 1 300 W" in err


def test_sigint_halfway_restores_300_watts(tmp_path: Path):
    output = tmp_path / "tune.json"
    proc = gpuwatch(*ACCEPTANCE, *SWEEP, "--source", "vllm", "--json", "--output", str(output))
    seen, reader = stderr_lines(proc)
    # Halfway: the third limit has been set and is settling.
    assert wait_until(lambda: any("250 W on GPU 0, 1" in line for line in seen), timeout_s=120), "".join(seen)
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None
    out = proc.stdout.read()  # stderr is the reader thread's
    proc.wait(timeout=60)
    reader.join(timeout=10)
    err = "".join(seen)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert doc["restored"] is True and doc["recommended"] is None
    # Measured before the signal: 200 and 225 W, and 250 W too if the signal landed after its dwell
    # (at 60x its settling and dwell are about 1.5 s of wall time, which a loaded machine may take).
    measured = [p["limit_watts"] for p in doc["points"]]
    assert measured[:2] == [200, 225] and len(measured) < 5, measured
    assert "interrupted" in err and "restored original limits: GPU 0 300 W, GPU 1 300 W" in err
    assert json.loads(output.read_text()) == doc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_restore_too(signum):
    """SIGHUP too: a dropped SSH session sends it, and its default action would skip the restore."""
    proc = gpuwatch(
        *ACCEPTANCE, "--from", "200W", "--to", "300W", "--step", "50W", "--dwell", "60s", "--source", "vllm"
    )
    seen, reader = stderr_lines(proc)
    assert wait_until(lambda: any("200 W: settled" in line for line in seen), timeout_s=120), "".join(seen)
    proc.send_signal(signum)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    assert proc.returncode == 130
    assert "restored original limits: GPU 0 300 W, GPU 1 300 W" in "".join(seen)


def test_it_refuses_to_start_when_the_limits_cannot_be_read(tmp_path: Path):
    path = tmp_path / "no-limits.toml"
    path.write_text(
        'name = "no-limits"\n[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n'
        '[[gpu.fault]]\nkind = "not_supported"\nat_s = 0\n'
    )
    proc = gpuwatch("--simulate", str(path), "--sim-speed", "60", "--gpus", "0", "--dwell", "10s")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "cannot read its power limit" in err and "not starting" in err
    assert out == ""


class _InterruptedOnce:
    """A power-limit control whose next ``set`` is cut short by Ctrl-C."""

    def __init__(self) -> None:
        self.limits: dict[int, float] = {}
        self.interrupt = True

    def set(self, index: int, watts: float) -> None:
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        self.limits[index] = watts


def test_a_second_ctrl_c_during_the_restore_does_not_cut_it_short():
    control = _InterruptedOnce()
    plan = TunePlan((0, 1), (200.0,), 60.0, 0.95)
    tuner = Tuner(None, control, plan, lambda s: None, lambda line: None)  # type: ignore[arg-type]
    tuner._changed = {0, 1}
    result = TuneResult((0, 1), None, {0: 300.0, 1: 280.0})
    with pytest.raises(KeyboardInterrupt):
        tuner._restore(result)
    assert control.limits == {0: 300.0, 1: 280.0} and result.restored


class _SignalledDuringSet:
    """A control that receives a real signal while it sets a limit, on each GPU."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.limits: dict[int, float] = {}

    def set(self, index: int, watts: float) -> None:
        os.kill(os.getpid(), self.signum)  # its handler runs at once, on this (the main) thread
        self.limits[index] = watts


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_during_the_restore_wait_until_every_gpu_is_back(signum):
    """Each GPU's set is hit by a stopping signal, three GPUs in a row: all are restored, then the
    interruption goes on (before, an interruption outside the retried call skipped the rest)."""
    control = _SignalledDuringSet(signum)
    plan = TunePlan((0, 1, 2), (200.0,), 60.0, 0.95)
    tuner = Tuner(None, control, plan, lambda s: None, lambda line: None)  # type: ignore[arg-type]
    tuner._changed = {0, 1, 2}
    result = TuneResult((0, 1, 2), None, {0: 300.0, 1: 280.0, 2: 250.0})
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    previous_hup = signal.signal(signal.SIGHUP, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with pytest.raises(KeyboardInterrupt):
            tuner._restore(result)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGHUP, previous_hup)
    assert control.limits == {0: 300.0, 1: 280.0, 2: 250.0} and result.restored
