"""The poll loop over simulated hosts, stepped on a manual clock."""

from __future__ import annotations

import pytest
from waiting import wait_until

from gpuwatch.analysis.health import GpuFacts, gpu_verdict
from gpuwatch.host import simulated_host
from gpuwatch.nvml import NvmlReader, NvmlUnavailable, use_library
from gpuwatch.sampler import Sampler
from gpuwatch.sim.clock import ManualClock


def test_snapshots_follow_simulated_time(sim):
    run = sim("inference-host")
    early, late = run.at(60), run.at(600)
    assert early.nvml_up and len(early.gpus) == 4
    e0, e1 = early.gpus[0].energy_joules_total, late.gpus[0].energy_joules_total
    assert 540 * 280 < e1 - e0 < 540 * 310
    hot_early, hot_late = early.gpus[2].reading.temperature_celsius, late.gpus[2].reading.temperature_celsius
    assert hot_late > hot_early + 15


def test_a_lost_gpu_is_down_and_the_others_keep_updating(sim):
    run = sim("xid-79")
    before = run.at(30)
    after = run.at(60)
    lost = after.gpus[1]
    assert before.gpus[1].up and not lost.up
    assert "GpuIsLost" in lost.error and lost.identity.uuid == before.gpus[1].identity.uuid
    for i in (0, 2, 3):
        assert after.gpus[i].up
        assert after.gpus[i].energy_joules_total > before.gpus[i].energy_joules_total


def test_energy_total_survives_a_counter_reset(tmp_path, sim):
    scenario = tmp_path / "reset.toml"
    scenario.write_text('[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n[[gpu.fault]]\nkind = "energy_reset"\nat_s = 30\n')
    run = sim(str(scenario))
    totals = [run.at(t).gpus[0].energy_joules_total for t in (10, 20, 29, 31, 40)]
    assert totals == sorted(totals)
    assert run.sampler.latest.gpus[0].reading.energy_joules < totals[0]  # the driver's counter did reset


def test_processes_are_refreshed_on_their_own_interval(sim):
    run = sim("inference-host", poll_interval_s=1.0, process_interval_s=10.0)
    first = run.at(1)
    assert [p.name for p in first.gpus[2].processes] == ["python3"]
    calls = run.host.library.calls
    run.at(2)
    per_poll_without_processes = run.host.library.calls - calls
    calls = run.host.library.calls
    run.at(12)
    assert run.host.library.calls - calls > per_poll_without_processes


class _FailingReader(NvmlReader):
    failures = 0

    def open(self) -> None:
        if _FailingReader.failures < 3:
            _FailingReader.failures += 1
            raise NvmlUnavailable("NVML init failed: DriverNotLoaded (code 9)")


def test_nvml_down_at_start_is_retried_with_backoff():
    clock = ManualClock()
    attempts = []

    def factory() -> NvmlReader:
        attempts.append(clock.sim_seconds())
        return _FailingReader(clock.time)

    sampler = Sampler(factory, clock)
    snapshot = sampler.poll_once()
    assert not snapshot.nvml_up and "DriverNotLoaded" in snapshot.nvml_error
    for _ in range(10):
        clock.advance(1)
        sampler.poll_once()
    assert attempts == [0, 1, 3, 7]  # backoff 1 s, 2 s, 4 s
    assert sampler.latest.nvml_up and sampler.latest.nvml_error is None


def test_xids_are_counted_kept_with_their_time_and_judged(sim):
    run = sim("ecc-uncorrectable")
    run.at(10)
    snapshot = run.at(30)
    gpu = snapshot.gpus[1]
    assert gpu.xid_errors == {48: 1}
    assert [x for _, x in gpu.recent_xids] == [48]
    assert gpu.verdict.state == "critical" and gpu.verdict.checks["xid"] == "critical"
    assert snapshot.verdict.state == "critical"
    assert snapshot.gpus[0].xid_errors == {} and snapshot.gpus[0].verdict.state == "ok"


def test_per_reason_seconds_and_the_window_follow_the_polls(sim):
    run = sim("power-brake")
    for t in range(1, 91):
        snapshot = run.at(t)
    braked = snapshot.gpus[3]
    # polls at 30 s .. 90 s saw the brake; each stands for the second before it
    assert braked.clocks_event_seconds["hw_power_brake"] == 61
    assert braked.throttle.dominant == "power_brake" and braked.throttle.ratios["power_brake"] == 1.0
    assert snapshot.gpus[0].throttle.dominant == "power_cap"
    assert "hw_power_brake" not in snapshot.gpus[0].clocks_event_seconds


def test_a_new_poll_interval_cuts_the_wait_under_way_short():
    host = simulated_host("healthy")
    sampler = Sampler(host.reader_factory, host.clock, poll_interval_s=3600)
    sampler.start()
    try:
        assert sampler.ready.wait(5)
        sampler.configure(poll_interval_s=0.01, process_interval_s=10.0)  # as SIGHUP does, an hour before the next poll
        assert wait_until(lambda: sampler.latest.polls_total >= 3)
    finally:
        sampler.stop()
        use_library(None)


@pytest.mark.parametrize("scenario", ["thermal-throttle", "power-brake", "ecc-uncorrectable", "row-remap-pending"])
def test_a_verdict_kept_from_the_last_poll_is_the_one_judged_anew(sim, scenario):
    """The sampler reuses a GPU's verdict while its inputs stand still; along runs where they
    change (heat, brakes, ECC, remaps), every verdict equals one computed from scratch."""
    run = sim(scenario)
    changes = 0
    previous: dict[int, object] = {}
    for t in range(0, 900, 5):
        snapshot = run.at(t)
        for status in snapshot.gpus:
            reading = status.reading
            assert status.up and reading is not None
            facts = GpuFacts(
                index=status.identity.index,
                up=True,
                temperature_celsius=reading.temperature_celsius,
                margin_celsius=reading.temperature_margin_celsius,
                thresholds_celsius=status.identity.temperature_thresholds_celsius,
                throttle=status.throttle,
                uncorrected_volatile_ecc=reading.ecc_errors.get(("uncorrected", "volatile")),
                row_remap_pending=reading.row_remap_pending,
                row_remap_failure=reading.row_remap_failure,
                retired_pages_pending=reading.retired_pages_pending,
                recent_xids=status.recent_xids,
                now=snapshot.timestamp,
            )
            assert status.verdict == gpu_verdict(facts, run.sampler.health)
            changes += previous.get(status.identity.index, status.verdict) != status.verdict
            previous[status.identity.index] = status.verdict
    assert changes > 0  # the run did move the verdict
