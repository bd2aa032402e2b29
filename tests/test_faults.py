"""The fault matrix at the poll loop: each fault over the simulated driver, stepped on a manual clock.

The same faults through the real process are in test_faults_e2e.py.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from counters import counter_samples, decreases
from waiting import wait_until

from gpuwatch.exporter import text
from gpuwatch.exporter.registry import build_registry
from gpuwatch.logsetup import RateLimit
from gpuwatch.model import Snapshot
from gpuwatch.nvml import NvmlReader, use_library
from gpuwatch.sampler import Sampler
from gpuwatch.sim import scenario
from gpuwatch.sim.clock import ManualClock, SimClock
from gpuwatch.sim.library import SimulatedNvmlLibrary
from gpuwatch.stalls import HEARTBEAT_S, PollSuperseded

_LOADED_GPU = '[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n'


class Gate:
    """Stands in for time.sleep in the simulated library: a hung call waits here until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()

    def __call__(self, seconds: float) -> None:
        self.entered.set()
        assert self._open.wait(30), "the test never let the hung call return"

    def open(self) -> None:
        self._open.set()


@dataclass
class Run:
    clock: ManualClock
    sampler: Sampler
    library: SimulatedNvmlLibrary
    now: list[float]  # the sampler's monotonic clock, moved by hand

    def at(self, seconds: float) -> Snapshot:
        self.clock.advance(seconds - self.clock.sim_seconds())
        return self.sampler.poll_once()


@pytest.fixture
def run() -> Iterator[type[Run]]:
    runs: list[Run] = []

    def make(text: str, sleep: Gate | None = None) -> Run:
        clock = ManualClock()
        library = SimulatedNvmlLibrary(scenario.parse(text), clock.sim_seconds, sleep=sleep or time.sleep)
        use_library(library)
        now = [0.0]
        sampler = Sampler(lambda: NvmlReader(clock.time), clock, monotonic=lambda: now[0])
        runs.append(Run(clock, sampler, library, now))
        return runs[-1]

    yield make  # type: ignore[misc]
    for r in runs:
        r.sampler.stop()
    use_library(None)


def exposition(snapshot: Snapshot) -> str:
    return text.generate(build_registry(lambda: snapshot, include_process=False)).decode()


def assert_counters_never_decrease(snapshots: list[Snapshot]) -> None:
    before = counter_samples(exposition(snapshots[0]))
    for snapshot in snapshots[1:]:
        after = counter_samples(exposition(snapshot))
        assert decreases(before, after) == [], snapshot.timestamp
        before |= after  # a series that vanished for a while must come back no lower


# -- 1. a GPU falls off the bus, and comes back after a reset -------------------------------------


def test_a_lost_gpu_is_critical_the_others_update_every_poll_and_it_is_picked_up_after_a_reset(run):
    r = run(
        _LOADED_GPU * 2
        + '[[gpu.fault]]\nkind = "fall_off_bus"\nat_s = 40\n[[gpu.fault]]\nkind = "gpu_reset"\nat_s = 100\n'
    )
    snapshots = [r.at(t) for t in range(1, 131)]
    epoch = r.clock.time() - r.clock.sim_seconds()
    lost = [s for s in snapshots if not s.gpus[1].up]
    # down from the fault at 40 s until the first probe after the reset at 100 s (probes at 41, 43, 47, 55, 71, 103)
    assert [s.timestamp - epoch for s in lost] == list(range(40, 103))
    for s in lost:
        assert s.gpus[1].verdict.state == "critical" and "GpuIsLost" in s.gpus[1].verdict.reasons[0]
        assert s.gpus[1].reading is None
    for previous, s in itertools.pairwise(snapshots):
        assert s.gpus[0].up and s.gpus[0].reading.timestamp == s.timestamp  # read by every poll
        assert s.gpus[0].energy_joules_total > previous.gpus[0].energy_joules_total
    back = snapshots[-1].gpus[1]
    assert back.up and back.identity.uuid == snapshots[0].gpus[1].identity.uuid
    # its first poll back, between slow reads, already has what the slow loop reads
    first_back = snapshots[102].gpus[1].reading
    assert first_back.performance_state is not None and "memory" in first_back.clocks_hertz
    # NVML delivered no Xid 79 event (a real driver never does), so nothing keeps it critical once back.
    assert back.verdict.checks["up"] == "ok" and back.verdict.checks["xid"] == "ok"
    assert back.reading.power_watts > 0
    # the counter restarted at the reset; the exported total carried on
    assert back.reading.energy_joules < snapshots[38].gpus[1].reading.energy_joules
    assert back.energy_joules_total > snapshots[38].gpus[1].energy_joules_total
    # probed on a backoff (1, 2, 4, 8, 16, 32 s after the loss): a handful of calls, not one per poll
    assert r.library.calls_by_symbol["nvmlDeviceGetHandleByUUID"] <= 7
    assert_counters_never_decrease(snapshots)


# -- 2. an NVML call hangs on one GPU -------------------------------------------------------------


def test_a_hung_gpu_is_left_behind_marked_stale_while_the_others_are_polled(run):
    gate = Gate()
    r = run(
        _LOADED_GPU + '[[gpu.fault]]\nkind = "hang"\nat_s = 10\nduration_s = 1\nhang_s = 30\n' + _LOADED_GPU,
        sleep=gate,
    )
    before = r.at(5)
    r.clock.advance(5.5)
    left_behind: list[BaseException] = []

    def poll() -> None:
        try:
            r.sampler.poll_once()
        except BaseException as exc:
            left_behind.append(exc)

    hung = threading.Thread(target=poll)
    hung.start()
    assert gate.entered.wait(10)  # GPU 0's first call hangs
    loop = r.sampler.loop
    assert not loop.check_stalled()  # a first beat, at once, sees the CPU the read used before it blocked
    beats = round(loop.stuck_after_s / HEARTBEAT_S)  # the watcher's beats while the call is blocked
    for _ in range(beats - 1):
        r.now[0] += HEARTBEAT_S
        assert not loop.check_stalled()  # not for long enough yet
    r.now[0] += HEARTBEAT_S
    assert loop.check_stalled()

    during = [r.at(t) for t in (11.5, 12.5, 13.5)]
    for s in during:
        stale, fine = s.gpus
        assert not stale.up and stale.stale_since == before.timestamp + 5.5
        assert stale.reading == before.gpus[0].reading  # the last values, kept
        assert stale.energy_joules_total == before.gpus[0].energy_joules_total
        assert stale.verdict.state == "warning" and "NVML call not returning" in stale.verdict.reasons[0]
        assert fine.up and fine.reading.timestamp == s.timestamp  # polled every time
    assert 'gpuwatch_gpu_stale{gpu="0"' in exposition(during[-1])
    assert during[-1].verdict.state == "warning"

    gate.open()
    hung.join(10)
    assert [type(e) for e in left_behind] == [PollSuperseded]  # it published nothing
    after = r.at(14.5)
    assert after.gpus[0].up and after.gpus[0].stale_since is None
    assert after.gpus[0].reading.timestamp == after.timestamp
    assert_counters_never_decrease([before, *during, after])


# -- 3. no NVML library, no driver, at start ------------------------------------------------------


def test_without_library_or_driver_the_host_is_unknown_and_nvml_is_retried_with_backoff(run):
    r = run(
        '[[fault]]\nkind = "library_missing"\nduration_s = 20\n'
        '[[fault]]\nkind = "driver_missing"\nat_s = 20\nduration_s = 20\n' + _LOADED_GPU
    )
    attempts = []
    snapshots = []
    for t in range(0, 70):
        before = r.library.calls_by_symbol["nvmlInitWithFlags"]
        snapshots.append(r.at(t))
        if r.library.calls_by_symbol["nvmlInitWithFlags"] > before:
            attempts.append(t)
    assert attempts == [0, 1, 3, 7, 15, 31, 63]  # 1 s doubling; the driver is there from 40 s
    missing, unloaded, up = snapshots[10], snapshots[35], snapshots[-1]
    for s in (missing, unloaded):
        assert not s.nvml_up and s.gpus == () and s.verdict.state == "unknown"
        assert "gpuwatch_nvml_up 0.0" in exposition(s) and "gpuwatch_polls_total" in exposition(s)
    assert "LibraryNotFound" in missing.nvml_error and "install the NVIDIA driver" in missing.nvml_error
    assert "DriverNotLoaded" in unloaded.nvml_error and "modprobe nvidia" in unloaded.nvml_error
    assert up.nvml_up and up.gpus[0].up and up.verdict.state == "ok"
    assert [s.polls_total for s in snapshots] == list(range(1, 71))  # the loop never stopped


# -- 4. a driver reload ---------------------------------------------------------------------------


def test_after_a_driver_reload_nvml_is_opened_again_and_every_counter_carries_on(run, caplog):
    r = run(
        '[[fault]]\nkind = "driver_reload"\nat_s = 30\nduration_s = 10\n'
        + _LOADED_GPU
        + '[[gpu.fault]]\nkind = "ecc_corrected"\nat_s = 10\ncount = 3\n'
        + _LOADED_GPU
        + '[[gpu.fault]]\nkind = "unknown_error"\nat_s = 5\nduration_s = 10\nratio = 0.5\n'
    )
    with caplog.at_level(logging.WARNING):
        snapshots = [r.at(t) for t in range(1, 80)]
    before, after = snapshots[28], snapshots[-1]  # 29 s, 79 s
    down = [s for s in snapshots if not s.nvml_up]
    assert down and all(s.verdict.state == "unknown" for s in down)
    assert "session lost" in down[0].nvml_error and "DriverNotLoaded" in down[-1].nvml_error
    assert "NVML stopped answering" in caplog.text
    assert after.nvml_up and [g.identity.uuid for g in after.gpus] == [g.identity.uuid for g in before.gpus]
    assert all(g.up for g in after.gpus)
    gpu0_before, gpu0_after = before.gpus[0], after.gpus[0]
    assert gpu0_after.reading.energy_joules < gpu0_before.reading.energy_joules  # the driver's count restarted
    assert gpu0_after.energy_joules_total > gpu0_before.energy_joules_total  # ours did not
    assert gpu0_before.reading.ecc_errors[("corrected", "volatile")] == 3
    assert gpu0_after.reading.ecc_errors[("corrected", "volatile")] == 0
    assert gpu0_after.ecc_errors_total[("corrected", "volatile")] == 3
    assert sum(after.nvml_errors_total.values()) >= sum(before.nvml_errors_total.values()) > 0
    assert_counters_never_decrease(snapshots)


# -- 5. Unknown and NotSupported storms -----------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_error_storms_are_counted_logged_at_a_bounded_rate_and_skip_no_poll_of_the_healthy_gpus(run):
    r = run(
        _LOADED_GPU
        + '[[gpu.fault]]\nkind = "unknown_error"\nat_s = 10\nduration_s = 300\nratio = 0.05\n'
        + '[[gpu.fault]]\nkind = "not_supported"\nat_s = 10\nduration_s = 300\nratio = 0.2\n'
        + _LOADED_GPU
    )
    handler = _Records()
    handler.addFilter(RateLimit(clock=r.clock.sim_seconds))  # the daemon's filter, on simulated time
    logger = logging.getLogger("gpuwatch")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        snapshots = [r.at(1)]
        at_start = len(handler.records)  # what NVML does not support here, logged once at start
        snapshots += [r.at(t) for t in range(2, 361)]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    storm = snapshots[10:310]
    assert 0.1 < sum(not s.gpus[0].up for s in storm) / len(storm) < 0.6  # some polls of GPU 0 failed
    for s in snapshots:
        assert s.gpus[1].up and s.gpus[1].reading.timestamp == s.timestamp  # GPU 1: every poll
    errors = [sum(s.nvml_errors_total.values()) for s in snapshots]
    assert errors == sorted(errors) and errors[-1] > 100  # the error counter moved
    assert 'gpuwatch_nvml_errors_total{gpu="0",query="' in exposition(snapshots[-1])
    # Two kinds of message (a failed poll, a failed query), each at most 5 a minute.
    assert {rec.msg for rec in handler.records} >= {"GPU %d: poll failed: %s", "GPU %d: %s failed: %s"}
    assert len(handler.records) <= 2 * 5 * 7
    assert any("suppressed" in rec.getMessage() for rec in handler.records)
    assert not [rec.getMessage() for rec in handler.records[at_start:] if "not asking again" in rec.getMessage()]
    recovered = snapshots[-1].gpus[0]
    assert recovered.up and None not in (recovered.reading.temperature_celsius, recovered.reading.power_watts)


def test_the_running_loop_polls_on_without_a_hung_gpu_and_takes_it_back_when_the_call_returns():
    gate = Gate()
    clock = SimClock(speed=1.0)
    text = _LOADED_GPU + '[[gpu.fault]]\nkind = "hang"\nat_s = 0.5\nduration_s = 0.25\nhang_s = 30\n' + _LOADED_GPU
    use_library(SimulatedNvmlLibrary(scenario.parse(text), clock.sim_seconds, sleep=gate))
    sampler = Sampler(lambda: NvmlReader(clock.time), clock, poll_interval_s=0.05)
    sampler.start()
    try:
        assert gate.entered.wait(5)
        # left behind after 2 s with the process running (the least, at a 50 ms poll interval)
        assert wait_until(lambda: sampler.latest.gpus[0].stale_since is not None, timeout_s=15)
        polls = sampler.latest.polls_total
        assert wait_until(lambda: sampler.latest.polls_total >= polls + 5)  # the loop goes on
        assert sampler.latest.gpus[1].up
        threads = threading.active_count()
        gate.open()
        assert wait_until(lambda: sampler.latest.gpus[0].up)
        assert wait_until(lambda: threading.active_count() == threads - 1)  # the thread left behind ended
    finally:
        sampler.stop()
        use_library(None)
