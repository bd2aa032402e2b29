"""The command line through click's runner: exit codes, stdout and stderr kept apart."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner

from gpuwatch.cli import main
from gpuwatch.nvml import NvmlReader, NvmlUnavailable, use_library


@pytest.fixture(autouse=True)
def _real_library_afterwards():
    yield
    use_library(None)


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _real_nvml_present() -> bool:
    reader = NvmlReader()
    try:
        reader.open()
    except NvmlUnavailable:
        return False
    reader.close()
    return True


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_of_a_simulated_host_prints_the_verdict_then_one_row_per_gpu():
    result = run("status", "--simulate", "inference-host", "--sim-at", "4m")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "OK: 4 GPU(s) ok"
    assert lines[1].startswith("gpuwatch ") and "driver 550.127.05" in lines[1]
    assert lines[2].split()[:3] == ["GPU", "NAME", "VERDICT"]
    rows = lines[3:7]
    assert all("NVIDIA RTX A6000" in row for row in rows)
    assert "power_cap" in rows[0] and "/93°C" in rows[0] and "/300 W" in rows[0]
    assert "normal under load" in rows[0]
    assert "idle" in rows[3]
    # Then the token sources: the simulated vLLM server, its GPUs found, a full 60 s window replayed.
    assert lines[7] == ""
    assert lines[8].split() == ["SOURCE", "GPUS", "UP", "TOKENS/J", "J/TOKEN", "WINDOW", "NOTE"]
    source = lines[9].split()
    assert source[:4] == ["vllm", "0,1", "(auto)", "yes"] and 1 < float(source[4]) < 5 and source[6:8] == ["60", "s"]
    # Then its energy ledger (no [cost] prices given: no cost).
    assert lines[10] == "" and lines[11].split()[:3] == ["SOURCE", "ENERGY", "IDLE"]
    assert lines[12].split()[0] == "vllm" and lines[12].split()[-2:] == ["n/a", "n/a"]
    assert len(lines) == 13
    assert "\033[" not in result.stdout  # no colour when stdout is not a terminal


def test_status_json_has_the_documented_fields():
    result = run("status", "--simulate", "inference-host", "--json")
    doc = json.loads(result.stdout)
    assert result.exit_code == {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}[doc["verdict"]]
    assert [g["index"] for g in doc["gpus"]] == [0, 1, 2, 3]
    for gpu in doc["gpus"]:
        for key in (
            "uuid",
            "name",
            "temperature_celsius",
            "power_watts",
            "power_limit_watts",
            "clock_event_reasons",
            "verdict",
            "reasons",
            "throttle_class",
        ):
            assert key in gpu
        assert gpu["power_limit_watts"] == 300.0


@pytest.mark.parametrize(
    ("at", "state", "code", "throttle"),
    [("4m", "ok", 0, "power_cap"), ("5m10s", "warning", 1, "power_cap"), ("6m", "critical", 2, "thermal")],
)
def test_gpu_2_of_the_inference_host_heats_from_ok_to_critical(at, state, code, throttle):
    result = run("status", "--simulate", "inference-host", "--sim-at", at, "--json")
    doc = json.loads(result.stdout)
    assert (doc["gpus"][2]["verdict"], doc["gpus"][2]["throttle_class"], result.exit_code) == (state, throttle, code)
    assert doc["verdict"] == state


def test_nagios_line_has_state_reasons_and_performance_data():
    result = run("status", "--simulate", "inference-host", "--sim-at", "6m", "--nagios")
    assert result.exit_code == 2
    line = result.stdout.strip()
    assert "\n" not in line
    assert line.startswith("GPUWATCH CRITICAL - GPU 2: thermal slowdown")
    perf = line.split(" | ", 1)[1].split()
    assert "'gpu2_power_limit_watts'=300" in perf
    assert any(p.startswith("'gpu0_temperature_celsius'=") and p.endswith(";93;95") for p in perf)


def test_status_with_no_daemon_and_no_driver_exits_unknown():
    if _real_nvml_present():
        pytest.skip("a real NVIDIA driver answers here")
    result = run("status", "--url", f"http://127.0.0.1:{_closed_port()}")
    assert result.exit_code == 3
    assert "LibraryNotFound" in result.stderr and "--simulate" in result.stderr
    assert "no daemon at http://127.0.0.1:" in result.stderr  # --url was given: say why it fell back


def test_serve_refuses_a_bad_config_naming_file_key_and_value(tmp_path):
    bad = tmp_path / "gpuwatch.toml"
    bad.write_text('[web]\nlisten_address = "nowhere"\n')
    result = run("serve", "--config", str(bad))
    assert result.exit_code == 78  # EX_CONFIG
    assert str(bad) in result.stderr and "web.listen_address" in result.stderr and "'nowhere'" in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--simulate", "no-such-scenario"], "no-such-scenario"),
        (["serve", "--poll-interval", "soon"], "duration"),
        (["serve", "--sim-speed", "0"], "greater than zero"),
        (["serve", "--log.level", "loud"], "loud"),
    ],
)
def test_serve_refuses_bad_flags(args, message):
    result = run(*args)
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize("command", ["serve", "status"])
def test_help_documents_every_flag(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    for flag in {
        "serve": [
            "--web.listen-address",
            "--poll-interval",
            "--simulate",
            "--sim-speed",
            "--config",
            "--web.config.file",
            "--web.max-requests",
            "--web.read-timeout",
        ],
        "status": ["--url", "--direct", "--simulate", "--json"],
    }[command]:
        assert flag in result.stdout
