"""MIG (issue 17): instances, their memory, processes and GPM; the parent's refused and missing queries."""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import pytest
from test_exporter import exposition

from gpuwatch import status as status_module
from gpuwatch.nvml.mig import profile_name
from gpuwatch.sim import scenario
from gpuwatch.sim.mig import MIG_PROFILES, SimMig
from gpuwatch.sim.physics import SimGpu


@pytest.mark.parametrize(
    ("driver_name", "gi_slices", "ci_slices", "shown"),
    [
        ("MIG 3g.71gb", 3, 3, "3g.71gb"),
        ("MIG 3g.71gb", 3, 1, "1c.3g.71gb"),  # the h200-mig capture's `nvidia-smi -L`
        ("MIG 3g.71gb", 3, 2, "2c.3g.71gb"),
        ("MIG 1g.18gb", 1, 1, "1g.18gb"),
        ("2g.35gb", 2, 2, "2g.35gb"),
    ],
)
def test_profile_names_as_nvidia_smi_prints_them(driver_name, gi_slices, ci_slices, shown):
    assert profile_name(driver_name, gi_slices, ci_slices) == shown


def _h200_mig(sim, caplog):  # type: ignore[no-untyped-def]
    run = sim("h200-mig")
    run.at(1)
    run.at(2)
    caplog.clear()
    return run, run.through(3, 15)


def test_h200_mig_exports_four_instances_with_profiles_memory_and_sm_active(sim, caplog, promtool):
    caplog.set_level(logging.INFO)
    _, snapshot = _h200_mig(sim, caplog)
    text = exposition(snapshot)
    info = re.findall(
        r'^gpuwatch_mig_info\{ci="0",gi="(\d+)",gpu="0",mig="(\d)",mig_uuid="MIG-[^"]+",profile="([^"]+)"', text, re.M
    )
    assert [(gi, profile) for gi, _, profile in info] == [
        ("2", "3g.71gb"),
        ("3", "2g.35gb"),
        ("9", "1g.18gb"),
        ("10", "1g.18gb"),
    ]
    for family in ("gpuwatch_mig_memory_used_bytes", "gpuwatch_mig_memory_size_bytes", "gpuwatch_mig_sm_active_ratio"):
        assert len(re.findall(rf"^{family}\{{", text, re.M)) == 4, family
    size = dict(re.findall(r'^gpuwatch_mig_memory_size_bytes\{gpu="0",mig="(\d)"[^}]*\} (\S+)$', text, re.M))
    assert float(size["0"]) == 71424 * 2**20 and float(size["2"]) == 16384 * 2**20  # the capture's totals
    active = {
        m: float(v)
        for m, v in re.findall(r'^gpuwatch_mig_sm_active_ratio\{gpu="0",mig="(\d)"[^}]*\} (\S+)$', text, re.M)
    }
    assert active["1"] > active["0"] > active["3"] == 0.0  # compute > decode > empty instance
    # the parent: no utilization and no GPM of its own under MIG, no memory for this unprivileged user
    assert not re.search(r"^gpuwatch_gpu_utilization_ratio\{", text, re.M)
    assert "gpuwatch_gpu_sm_active_ratio" not in text
    assert not re.search(r"^gpuwatch_gpu_memory_used_bytes\{", text, re.M)
    assert re.search(
        r'^gpuwatch_gpu_query_permitted\{gpu="0",query="nvmlDeviceGetMemoryInfo_v2"[^}]*\} 0\.0$', text, re.M
    )
    assert re.search(r'^gpuwatch_gpu_mig_enabled\{gpu="0"[^}]*\} 1\.0$', text, re.M)
    processes = dict(re.findall(r'^gpuwatch_mig_processes\{gpu="0",mig="(\d)"[^}]*\} (\S+)$', text, re.M))
    assert processes == {"0": "1.0", "1": "1.0", "2": "1.0", "3": "0.0"}
    # polls after the first say nothing more: each refusal and absence is logged once, at open
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False)
    assert result.returncode == 0 and not result.stdout and not result.stderr, result.stdout + result.stderr


def test_refused_queries_are_logged_once_as_needing_privileges(sim, caplog):
    caplog.set_level(logging.INFO)
    run = sim("h200-mig")
    run.through(1, 30)
    refused = [r.getMessage() for r in caplog.records if "NoPermission" in r.getMessage()]
    assert any("nvmlDeviceGetMemoryInfo_v2" in m for m in refused)
    assert len(refused) == len(set(refused))


def test_status_shows_sm_active_per_instance(sim, caplog):
    _, snapshot = _h200_mig(sim, caplog)
    doc = status_module.to_document(snapshot)
    assert [m["profile"] for m in doc["gpus"][0]["mig_instances"]] == ["3g.71gb", "2g.35gb", "1g.18gb", "1g.18gb"]
    row = next(line for line in status_module.render_table(doc).splitlines() if line.startswith("0 "))
    assert re.search(r"MIG SM active \d+/\d+/\d+/0 %", row), row


def test_a_privileged_caller_sees_the_parent_memory_and_each_process_in_its_instance(sim, tmp_path):
    text = (scenario.resources.files("gpuwatch.sim") / "scenarios" / "h200-mig.toml").read_text()
    path = tmp_path / "h200-mig-root.toml"
    path.write_text(text.replace("privileged = false", "privileged = true"))
    run = sim(str(path))
    run.at(1)
    snapshot = run.at(12)
    gpu = snapshot.gpus[0]
    assert gpu.reading.memory_used_bytes is not None
    assert sorted(p.name for p in gpu.processes) == ["python3", "text-embeddings", "vllm"]
    assert not any(not ok for ok in gpu.reading.permitted_queries.values())


@pytest.mark.parametrize(
    ("mig", "message"),
    [
        ('[[gpu.mig]]\nprofile = "4g.99gb"\n', "'4g.99gb' is not a MIG profile of h200"),
        ('[[gpu.mig]]\nprofile = "3g.71gb"\n' * 3, "more than the card's 7 slices"),
        ('[[gpu.mig]]\nprofile = "1g.18gb"\nworkload = "gaming"\n', "'gaming' is not a workload"),
    ],
)
def test_bad_mig_tables_name_the_key(mig, message):
    with pytest.raises(scenario.ScenarioError, match=re.escape(message)) as raised:
        scenario.parse(f'[[gpu]]\nprofile = "h200"\n{mig}', source="x.toml")
    assert "gpu[0].mig" in str(raised.value)


def test_mig_on_a_card_without_it_is_refused():
    with pytest.raises(scenario.ScenarioError, match="none: the card has no MIG"):
        scenario.parse('[[gpu]]\nprofile = "rtx-a6000"\n[[gpu.mig]]\nprofile = "1g.18gb"\n', source="x.toml")


def _capture_mig_devices() -> list[dict[str, int]]:
    """The idle section's MIG devices of the h200-mig capture: GI, CI, SMs, memory total (MiB)."""
    text = (Path(__file__).parent / "data" / "captures" / "h200-mig__590.48.01.txt").read_text()
    idle = text.split("=== idle :: query (-q)", 1)[1].split("\n    FB Memory Usage", 1)[0]
    found = []
    for block in idle.split("    MIG Device\n")[1:]:
        numbers = {
            key: int(re.search(rf"{label}\s*: (\d+)", block)[1])  # type: ignore[index]
            for key, label in (
                ("gi", "GPU Instance ID"),
                ("ci", "Compute Instance ID"),
                ("sms", "Multiprocessor count"),
                ("memory_mib", r"Shared FB Memory Usage\s+Total"),
            )
        }
        found.append(numbers)
    return found


def test_the_h200_mig_profiles_match_the_capture():
    devices = _capture_mig_devices()
    assert [d["gi"] for d in devices] == [2, 2, 3, 9, 10]
    table = MIG_PROFILES["h200"]
    by_gi = {2: "3g.71gb", 3: "2g.35gb", 9: "1g.18gb", 10: "1g.18gb"}
    for d in devices:
        slices, memory_mib, sms, gi_ids = table[by_gi[d["gi"]]]
        assert d["memory_mib"] == memory_mib and d["gi"] in gi_ids
        if d["gi"] != 2:  # the 3g instance is split into 1c + 2c compute instances there: 16 SMs per slice
            assert d["sms"] == sms == 16 * slices
    assert sum(d["sms"] for d in devices if d["gi"] == 2) == 48  # 1c + 2c of the 3g: 16 + 32 of its 60
    # the simulated instances take the GI ids the driver gave, in the order it gave them
    gpu = SimGpu(0, scenario.load("h200-mig").gpus[0], seed=1)
    assert [m.gpu_instance_id for m in SimMig([gpu], seed=1).of(gpu)] == [2, 3, 9, 10]


def test_a_mig_mode_flip_opens_the_gpu_anew_on_the_next_slow_read(sim, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path = tmp_path / "flip.toml"
    path.write_text(
        'driver_version = "590.48.01"\ncuda_driver_version = 13010\n'
        '[[gpu]]\nprofile = "h200"\nload = 0.5\n'
        '[[gpu.fault]]\nkind = "mig_enable"\nat_s = 30\n'
        '[[gpu.mig]]\nprofile = "3g.71gb"\nload = 0.9\n'
        '[[gpu.mig]]\nprofile = "1g.18gb"\n'
    )
    run = sim(str(path), process_interval_s=10.0)
    run.at(1)
    before = run.at(5).gpus[0].reading
    assert before.mig_enabled is False and not before.mig_instances
    assert "sm_active" in before.activity_ratio and "gpu" in before.utilization_ratio
    after = run.through(31, 45).gpus[0].reading
    assert after.mig_enabled is True
    assert [m.profile for m in after.mig_instances] == ["3g.71gb", "1g.18gb"]
    assert "sm_active" in after.mig_instances[0].activity_ratio
    assert not after.activity_ratio and "gpu" not in after.utilization_ratio  # the parent's own: gone
    assert any("MIG mode is now enabled" in r.getMessage() for r in caplog.records)


def test_a_gpu_instance_split_into_compute_instances_is_named_as_the_capture_names_it(sim, tmp_path):
    """The h200-mig capture's layout: 3g split into 1c + 2c, then 2g, 1g, 1g (`nvidia-smi -L`)."""
    path = tmp_path / "capture-layout.toml"
    path.write_text(
        'driver_version = "590.48.01"\ncuda_driver_version = 13010\n[[gpu]]\nprofile = "h200"\nload = 0.3\n'
        '[[gpu.mig]]\nprofile = "3g.71gb"\ncompute_instances = [1, 2]\nload = 0.5\n'
        '[[gpu.mig]]\nprofile = "2g.35gb"\n[[gpu.mig]]\nprofile = "1g.18gb"\n[[gpu.mig]]\nprofile = "1g.18gb"\n'
    )
    run = sim(str(path))
    run.at(1)
    instances = run.at(3).gpus[0].reading.mig_instances
    assert [(m.profile, m.gpu_instance_id, m.compute_instance_id) for m in instances] == [
        ("1c.3g.71gb", 2, 0),
        ("2c.3g.71gb", 2, 1),
        ("2g.35gb", 3, 0),
        ("1g.18gb", 9, 0),
        ("1g.18gb", 10, 0),
    ]
    first, second = instances[:2]
    assert first.memory_size_bytes == second.memory_size_bytes == 71424 * 2**20  # shared, as the capture shows
    assert first.memory_used_bytes == second.memory_used_bytes
    assert first.activity_ratio == second.activity_ratio and first.activity_ratio["sm_active"] > 0  # one GI
    assert instances[0].activity_ratio["sm_active"] < 0.5  # counted once per GPU instance, not per CI


def test_compute_instances_must_fit_their_gpu_instance():
    with pytest.raises(scenario.ScenarioError, match=r"gpu\[0\]\.mig\[0\]\.compute_instances"):
        scenario.parse('[[gpu]]\nprofile = "h200"\n[[gpu.mig]]\nprofile = "2g.35gb"\ncompute_instances = [2, 1]\n')


def test_instances_made_or_destroyed_without_a_mode_flip_are_seen_on_the_next_slow_read(sim, caplog):
    """mig-manager and `nvidia-smi mig -dgi` change the instances with MIG left on: the slow loop
    lists them again, frees the samples of the gone ones' GPU instances and asks nothing of them."""
    caplog.set_level(logging.INFO)
    run = sim("h200-mig", process_interval_s=10.0)
    run.at(1)
    assert len(run.at(5).gpus[0].reading.mig_instances) == 4
    library = run.host.library
    gpu = library.gpus[0]
    library.mig.instances[gpu.index] = library.mig.of(gpu)[:2]  # the two 1g.18gb instances destroyed
    after = run.through(6, 25).gpus[0].reading
    assert [m.profile for m in after.mig_instances] == ["3g.71gb", "2g.35gb"]
    assert all("sm_active" in m.activity_ratio for m in after.mig_instances)
    assert any("MIG devices are now 2" in r.getMessage() for r in caplog.records)
    caplog.clear()
    run.through(26, 40)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
