"""/metrics as a whole: a golden file per scenario, promtool, and collector failure isolation."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from gpuwatch.exporter.registry import COLLECTORS, build_registry
from gpuwatch.model import Snapshot

GOLDEN = Path(__file__).parent / "golden"

# Values that differ between machines or runs, not between versions of gpuwatch.
_VOLATILE = [
    (re.compile(r'python_version="[^"]*"'), 'python_version="X"'),
    (re.compile(r"^(gpuwatch_scrape_collector_duration_seconds\{[^}]*\}) .*$", re.M), r"\1 0.0"),
    (re.compile(r"^(gpuwatch_poll_duration_seconds) .*$", re.M), r"\1 0.0"),
    (re.compile(r"^(gpuwatch_source_scrape_duration_seconds\{[^}]*\}) .*$", re.M), r"\1 0.0"),
    # The simulator's workload processes are live ones started for the run: their pids differ
    # every run and their user is whoever runs the tests; their names are the scenario's.
    (re.compile(r'pid="\d+",process="([^"]*)",user="[^"]*"'), r'pid="PID",process="\1",user="USER"'),
]


def exposition(snapshot: Snapshot) -> str:
    text = generate_latest(build_registry(lambda: snapshot, include_process=False)).decode()
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return text


# ecc-uncorrectable carries the Xid counter from an NVML event; xid-79's Xid 79 comes from the simulated
# host's kernel log (NVML delivers no event for it, as on a real driver), read as the daemon does by
# default (--xid-log auto). nvlink-faults carries NVLink errors, a recovery action and Xid 154.
@pytest.mark.parametrize(
    ("scenario", "at_s"),
    [
        ("inference-host", 600),
        ("consumer-gpu", 120),
        ("xid-79", 60),
        ("ecc-uncorrectable", 60),
        ("h200-node", 60),  # GPM (issue 17)
        ("h200-mig", 60),  # MIG (issue 17)
        ("nvlink-faults", 120),  # NVLink, recovery action, kernel-log Xids (issue 17)
    ],
)
def test_metrics_match_the_golden_file(sim, update_golden, scenario, at_s):
    run = sim(scenario, xid_log="auto")
    run.at(1)  # the daemon opens NVML at start, before any fault
    run.through(at_s - 15, at_s - 1)  # long enough for a tokens-per-joule window
    text = exposition(run.at(at_s))
    golden = GOLDEN / f"{scenario}-{at_s}s.prom"
    if update_golden:
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden.name}; run pytest --update-golden and review the diff"
    assert text == golden.read_text(), "exposition changed; if intended, run pytest --update-golden and review"


@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.prom")), ids=lambda p: p.name)
def test_golden_files_pass_promtool(promtool, golden):
    result = subprocess.run([promtool, "check", "metrics"], input=golden.read_bytes(), capture_output=True, check=False)
    assert result.returncode == 0 and not result.stdout and not result.stderr, result.stdout + result.stderr


def test_consumer_gpu_exports_ecc_off_and_row_remapping_as_its_capture_shows(sim):
    run = sim("consumer-gpu")
    text = exposition(run.at(60))
    assert re.search(r"^gpuwatch_gpu_ecc_enabled\{[^}]*\} 0\.0$", text, re.M)  # Disabled, not unsupported
    assert "gpuwatch_gpu_ecc_errors" not in text  # no counts with ECC off
    assert "gpuwatch_gpu_remapped_rows" in text and "gpuwatch_gpu_row_remap_pending" in text
    # Ada at R570: T.Limit offsets (-7/-2/0) and the margin query; absolute thresholds derived from
    # them (T.Limit point 84 °C, as the capture's 28 °C + 56 °C), and the acoustic target as answered
    thresholds = dict(
        re.findall(r'^gpuwatch_gpu_temperature_threshold_celsius\{gpu="0",threshold="(\w+)"[^}]*\} (\S+)$', text, re.M)
    )
    point = float(re.search(r'^gpuwatch_gpu_temperature_celsius\{gpu="0",sensor="gpu"[^}]*\} (\S+)$', text, re.M)[1])
    point += float(re.search(r'^gpuwatch_gpu_temperature_margin_celsius\{gpu="0"[^}]*\} (\S+)$', text, re.M)[1])
    assert {name: float(v) for name, v in thresholds.items()} == {
        "shutdown": point + 7,
        "slowdown": point + 2,
        "max_operating": point,
        "target": 84.0,
    }
    tlimit = re.findall(r'^gpuwatch_gpu_temperature_threshold_tlimit_celsius\{gpu="0",threshold="(\w+)"', text, re.M)
    assert set(tlimit) == {"shutdown", "slowdown", "max_operating"}  # no memory sensor on GDDR6X


def test_a_failing_collector_fails_alone(sim):
    run = sim("inference-host")
    snapshot = run.at(60)

    def broken(_: Snapshot):
        raise RuntimeError("bug")

    collectors = {**COLLECTORS, "thermal": broken}
    text = generate_latest(build_registry(lambda: snapshot, include_process=False, collectors=collectors)).decode()
    assert 'gpuwatch_scrape_collector_success{collector="thermal"} 0.0' in text
    assert 'gpuwatch_scrape_collector_success{collector="power"} 1.0' in text
    assert "gpuwatch_gpu_power_watts" in text and "gpuwatch_gpu_temperature_celsius" not in text


def test_before_the_first_poll_only_self_metrics_are_served():
    text = exposition(Snapshot(timestamp=0.0, nvml_up=False, nvml_error="not polled yet"))
    assert "gpuwatch_nvml_up 0.0" in text
    assert "gpuwatch_gpu_" not in text
    assert "gpuwatch_last_poll_timestamp_seconds" not in text


def test_a_family_refuses_a_second_label_set():
    from gpuwatch.exporter.families import Families
    from gpuwatch.model import GpuIdentity

    f = Families()
    gpu = GpuIdentity(index=0, uuid="GPU-a", name="x", pci_bus_id="0")
    f.gpu_gauge("gpuwatch_gpu_x", "doc", gpu, 1.0, sensor="gpu")
    f.gpu_gauge("gpuwatch_gpu_x", "doc", gpu, 2.0, sensor="memory")  # same names, other values: fine
    with pytest.raises(ValueError, match="differ"):
        f.gpu_gauge("gpuwatch_gpu_x", "doc", gpu, 3.0, clock="sm")
    with pytest.raises(ValueError, match="differ"):
        f.gauge("gpuwatch_gpu_x", "doc", 4.0)


def test_a_label_value_that_is_not_utf8_fails_its_collector_not_the_scrape(sim, caplog):
    """Sources escape such text (gpuwatch.labels.utf8_text); one that slipped through costs its own
    collector, in every exposition format, logged as an error once, and is reported in ``failed``."""
    import logging
    from dataclasses import replace

    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

    from gpuwatch.exporter import text
    from gpuwatch.exporter.registry import SnapshotCollector, registry_for

    snapshot = sim("inference-host").at(60)
    gpu = next(g for g in snapshot.gpus if g.processes)
    bad_proc = replace(gpu.processes[0], name="ev\udcff\udcfeil")  # os.fsdecode(b"ev\xff\xfeil")
    bad_gpu = replace(gpu, processes=(bad_proc, *gpu.processes[1:]))
    bad = replace(snapshot, gpus=tuple(bad_gpu if g is gpu else g for g in snapshot.gpus))
    latest = [bad]
    collector = SnapshotCollector(lambda: latest[0], COLLECTORS)
    registry = registry_for(collector, include_process=False)
    with caplog.at_level(logging.DEBUG, logger="gpuwatch.exporter.registry"):
        for render in (text.generate, generate_latest, openmetrics):
            body = render(registry).decode("utf-8")
            assert 'gpuwatch_scrape_collector_success{collector="processes"} 0.0' in body
            assert "gpuwatch_gpu_power_watts" in body and "gpuwatch_gpu_process_memory_used_bytes" not in body
        assert collector.failed == ("processes",)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "processes" in errors[0].getMessage()
        assert r"ev\xff\xfeil" in errors[0].exc_text  # the value, escaped, in the error
        latest[0] = snapshot
        assert "gpuwatch_gpu_process_memory_used_bytes" in text.generate(registry).decode()
        assert collector.failed == () and "collector processes renders again" in caplog.text
