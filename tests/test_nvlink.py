"""NVLink per link, the driver's recovery action and kernel-log Xids, end to end over the simulator
(issue 17 items 3 and 5): scenarios h200-nvlink (healthy TP-4) and nvlink-faults."""

from __future__ import annotations

import subprocess
from pathlib import Path

from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import gpuwatch.sim
from gpuwatch.cli import main
from gpuwatch.derive import GpuHistory, Read, derive
from gpuwatch.exporter.registry import build_registry
from gpuwatch.host import simulated_host
from gpuwatch.model import GpuIdentity, GpuReading, Snapshot
from gpuwatch.nvml import use_library
from gpuwatch.sampler import Sampler
from gpuwatch.sim.clock import ManualClock
from gpuwatch.status import render_table, to_document
from gpuwatch.xidlog import XidLog

SCENARIOS = Path(gpuwatch.sim.__file__).parent / "scenarios"

NVLINK_FAMILIES = ("gpuwatch_gpu_nvlink_up", "gpuwatch_gpu_nvlink_bytes", "gpuwatch_gpu_nvlink_errors")


def exposition(snapshot: Snapshot) -> str:
    return generate_latest(build_registry(lambda: snapshot, include_process=False)).decode()


def samples(text: str, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of ``family`` (without the uuid label), by its labels."""
    out = {}
    for metric in text_string_to_metric_families(text):
        if metric.name != family:
            continue
        for s in metric.samples:
            if s.name.endswith("_created"):
                continue
            out[tuple(sorted((k, v) for k, v in s.labels.items() if k != "uuid"))] = s.value
    return out


def test_an_h200_board_under_tp4_shows_traffic_on_every_link_and_no_errors(sim, promtool):
    run = sim("h200-nvlink", process_interval_s=10.0)
    run.at(1)
    first = exposition(run.at(2))
    later = exposition(run.at(12))  # a slow read later: the NVLink counters are read on the slow loop
    up = samples(later, "gpuwatch_gpu_nvlink_up")
    assert len(up) == 4 * 18 and set(up.values()) == {1.0}  # 18 links per H200 (nvidia-smi nvlink -s)
    before, after = samples(first, "gpuwatch_gpu_nvlink_bytes"), samples(later, "gpuwatch_gpu_nvlink_bytes")
    assert len(after) == 4 * 18 * 2
    assert all(after[key] > before[key] for key in after), "every link of a TP-4 member carries all-reduce traffic"
    errors = samples(later, "gpuwatch_gpu_nvlink_errors")
    assert errors and set(errors.values()) == {0.0}
    assert {dict(k)["type"] for k in errors} == {"crc", "crc_flit", "crc_data", "replay", "recovery"}
    actions = samples(later, "gpuwatch_gpu_recovery_action")
    assert {dict(k)["action"] for k, v in actions.items() if v == 1.0} == {"none"}
    assert len([v for v in actions.values() if v == 1.0]) == 4  # one-hot per GPU
    result = subprocess.run([promtool, "check", "metrics"], input=later.encode(), capture_output=True, check=False)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_traffic_follows_the_tensor_parallel_servers_gpu_lists(tmp_path, sim):
    # The same board with the server on GPUs 0-1 only: GPUs 2-3 idle, no traffic on their links.
    path = tmp_path / "tp2.toml"
    path.write_text((SCENARIOS / "h200-nvlink.toml").read_text().replace("gpus = [0, 1, 2, 3]", "gpus = [0, 1]"))
    run = sim(str(path))
    run.at(1)
    status = run.at(30).gpus
    moved = [sum(s.nvlink_bytes_total.values()) for s in status]
    assert moved[0] > 0 and moved[1] > 0 and moved[2] == 0 and moved[3] == 0


def test_an_a6000_host_has_no_nvlink_family_and_a_550_driver_no_recovery_action(sim):
    run = sim("inference-host")
    run.at(1)
    text = exposition(run.at(12))
    for family in (*NVLINK_FAMILIES, "gpuwatch_gpu_recovery_action", "gpuwatch_xid_log_readable"):
        assert family not in text


def test_nvlink_errors_rise_on_the_faulty_link_only(sim):
    run = sim("nvlink-faults")
    run.at(1)
    quiet = run.at(52).gpus[1].nvlink_errors_total
    assert set(quiet.values()) == {0}
    counts = run.at(82).gpus[1].nvlink_errors_total
    rising = {key: n for key, n in counts.items() if n}
    assert {link for link, _ in rising} == {5}
    assert rising[5, "crc"] == rising[5, "replay"] > 300  # 20 a second for about 20 s, each one replayed
    assert run.at(92).gpus[1].nvlink_errors_total[5, "crc"] > rising[5, "crc"]


def test_the_driver_asks_for_a_reset_after_an_uncorrectable_error_and_the_verdict_says_so(sim):
    run = sim("nvlink-faults")
    run.at(1)
    assert run.at(70).gpus[3].reading.recovery_action == "none"
    gpu = run.at(80).gpus[3]
    assert gpu.reading.recovery_action == "reset"
    assert gpu.verdict.checks["recovery_action"] == "critical"
    assert "GPU 3: driver asks for a reset" in gpu.verdict.reasons
    actions = samples(exposition(run.at(81)), "gpuwatch_gpu_recovery_action")
    assert actions[(("action", "reset"), ("gpu", "3"))] == 1.0
    assert actions[(("action", "none"), ("gpu", "3"))] == 0.0


def test_a_kernel_log_xid_79_is_counted_and_status_names_the_action(tmp_path, sim):
    log = tmp_path / "kmsg.log"
    run = sim("nvlink-faults", xid_log=str(log))
    run.at(1)
    before = run.at(140)
    assert before.xid_log_readable is True
    assert 79 not in before.gpus[2].xid_errors
    after = run.at(155)  # GPU 2 fell off the bus at 150 s: the kernel log has Xid 79, NVML no event
    assert "NVRM: Xid (PCI:0000:5b:00): 79" in log.read_text()
    assert after.gpus[2].xid_errors[79] == 1
    text = exposition(after)
    assert samples(text, "gpuwatch_gpu_xid_errors")[(("gpu", "2"), ("xid", "79"))] == 1.0
    assert samples(text, "gpuwatch_xid_log_readable") == {(): 1.0}
    table = render_table(to_document(after, 0.0, 1.0, 3.0))
    assert "Xid 79" in table and "reboot the node" in table
    # Xid 48 reached gpuwatch twice (an NVML event and a kernel line) and counts once; Xid 154,
    # which NVML reports as its own event type, counts from the kernel log.
    assert after.gpus[3].xid_errors == {48: 1, 154: 1}


def test_kernel_log_lines_from_before_the_start_are_backfilled_once(tmp_path, sim):
    # The simulated host booted 60 s before the scenario (and gpuwatch) started: these are its past.
    log = tmp_path / "kmsg.log"
    log.write_text(
        "[   30.500000] NVRM: Xid (PCI:0000:1b:00): 48, pid=1, name=python3, An uncorrectable double bit error\n"
        "[   30.600000] random kernel noise\n"
        "[   30.700000] NVRM: Xid (PCI:0000:99:00): 13, pid=1, a GPU this host does not have\n"
        "[   30.800000] NVRM: Xid (PCI:0000:1b:00): 4\x00\xff garbled\n"
    )
    run = sim("nvlink-faults", xid_log=str(log))
    for t in (1, 2, 3):
        snapshot = run.at(t)
    assert snapshot.gpus[0].xid_errors == {48: 1}  # backfilled (NVML never saw it), counted once
    assert not any(g.xid_errors for g in snapshot.gpus[1:])


def test_kernel_log_lines_from_before_nvml_listened_count_and_later_ones_only_if_nvml_cannot_deliver(tmp_path, sim):
    log = tmp_path / "kmsg.log"
    run = sim("nvlink-faults", xid_log=str(log))
    line = "[{:12.6f}] NVRM: Xid (PCI:0000:1b:00): {}, pid=7, name=python3, test\n"
    with log.open("a") as f:  # simulated second 2 (boot + 62 s): gpuwatch runs, NVML is not open yet
        f.write(line.format(62.0, 48))
    assert run.at(5).gpus[0].xid_errors == {48: 1}  # NVML's event set, opened at 5 s, never saw it
    with log.open("a") as f:  # after NVML began listening: 48 comes as an event too, 79 never does
        f.write(line.format(66.0, 48) + line.format(66.5, 79))
    assert run.at(8).gpus[0].xid_errors == {48: 1, 79: 1}


def test_an_unreadable_kernel_log_is_said_once_and_exported_as_0(tmp_path, caplog):
    clock = ManualClock()
    host = simulated_host("h200-nvlink", clock=clock)
    # a path that cannot be read (a directory) stands for /dev/kmsg without CAP_SYSLOG
    kernel_log = XidLog(str(tmp_path), clock.time, clock.sim_seconds)
    sampler = Sampler(host.reader_factory, clock, kernel_log=kernel_log)
    try:
        for _ in range(3):
            clock.advance(1.0)
            snapshot = sampler.poll_once()
    finally:
        sampler.stop()
        assert host.library is not None
        host.library.close()
        use_library(None)
    assert snapshot.xid_log_readable is False
    assert samples(exposition(snapshot), "gpuwatch_xid_log_readable") == {(): 0.0}
    assert len([r for r in caplog.records if "kernel log not readable" in r.message]) == 1
    assert all(g.up for g in snapshot.gpus)  # the poll goes on


def test_nvlink_counters_are_reset_safe():
    from gpuwatch.analysis.health import HealthThresholds

    identity = GpuIdentity(index=0, uuid="GPU-x", name="H200", pci_bus_id="00000000:1B:00.0")
    history = GpuHistory.start(HealthThresholds(), 1.0)
    totals = []
    for t, raw in ((1.0, 1000), (2.0, 5000), (3.0, 200), (4.0, 700)):  # a driver reload between 2 and 3
        reading = GpuReading(timestamp=t, nvlink_bytes={(0, "transmit"): raw}, nvlink_errors={(0, "crc"): raw // 100})
        status = derive(history, identity, Read(reading), t, HealthThresholds())
        totals.append((status.nvlink_bytes_total[0, "transmit"], status.nvlink_errors_total[0, "crc"]))
    assert totals == [(1000, 10), (5000, 50), (5200, 52), (5700, 57)]


def test_status_of_a_simulated_host_names_the_action_for_its_kernel_log_xid_79():
    result = CliRunner().invoke(main, ["status", "--simulate", "xid-79", "--sim-at", "60s"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "critical Xid 79 in the last 60 min (reboot the node" in result.output


def test_the_status_document_gives_the_catalogue_action_for_every_xid_seen(sim):
    run = sim("nvlink-faults", xid_log="auto")
    run.at(1)
    doc = to_document(run.at(155), 0.0, 1.0, 3.0)
    actions = {gpu["index"]: gpu["xid_actions"] for gpu in doc["gpus"]}
    assert actions[0] == actions[1] == {}
    assert actions[2] == {"79": "reboot the node; check the GPU's power, cooling and seating if it recurs"}
    assert set(actions[3]) == {"48", "154"} and "reset the GPU" in actions[3]["48"]
