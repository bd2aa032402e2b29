"""Scenario files: every built-in loads, and mistakes name the file and key."""

from __future__ import annotations

import pytest

from gpuwatch.sim import scenario


@pytest.mark.parametrize("name", scenario.builtin_names())
def test_builtin_scenarios_load(name):
    loaded = scenario.load(name)
    assert loaded.gpus and loaded.description


def test_default_is_four_a6000s():
    host = scenario.load(None)
    assert host.name == "inference-host"
    assert [g.profile for g in host.gpus] == ["rtx-a6000"] * 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[gpu]]\nprofile = "rtx-9090"', ["gpu[0].profile", "rtx-9090", "rtx-a6000"]),
        ("[[gpu]]\nload = 1.5", ["gpu[0].load", "1.5", "maximum"]),
        ("[[gpu]]\nlaod = 1", ["gpu[0].laod", "unknown key"]),
        ('[[gpu]]\n[[gpu.fault]]\nkind = "meltdown"', ["gpu[0].fault[0].kind", "meltdown"]),
        ('[[gpu]]\n[[gpu.fault]]\nkind = "xid"', ["gpu[0].fault[0].xid", "needs its code"]),
        ('name = "x"', ["gpu", "at least one"]),
        ("[[gpu]]\npower_limit_w = 500", ["gpu[0].power_limit_w", "500", "maximum"]),
        ('[[fault]]\nkind = "fall_off_bus"\n[[gpu]]', ["fault[0].kind", "fall_off_bus", "driver_reload"]),
        ('[[gpu]]\n[[gpu.fault]]\nkind = "unknown_error"\nratio = 2', ["gpu[0].fault[0].ratio", "maximum"]),
    ],
)
def test_mistakes_name_the_key(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(scenario.ScenarioError) as error:
        scenario.load(str(path))
    assert str(path) in str(error.value)
    for part in expected:
        assert part in str(error.value)


def test_unknown_name_lists_the_builtins():
    with pytest.raises(scenario.ScenarioError, match="inference-host"):
        scenario.load("no-such-scenario")


@pytest.mark.parametrize("name", scenario.builtin_names())
def test_a_busy_gpu_always_has_its_process_and_its_memory(name):
    """As on a real host: work on a GPU is some process's, holding memory there (issue 14)."""
    loaded = scenario.load(name)
    served = {i for server in loaded.servers for i in server.gpus}
    for index, gpu in enumerate(loaded.gpus):
        if max(level for _, level in gpu.load_steps) > 0.02:
            # under MIG the work and its processes are the instances'
            processes = [*gpu.processes, *(p for instance in gpu.mig for p in instance.processes)]
            held = sum(p.used_memory_bytes for p in processes)
            assert index in served or held > 0, f"{name}: GPU {index} is busy with no process"
            assert held < gpu.card.memory_total_mib * 2**20
