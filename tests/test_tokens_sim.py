"""Tokens per joule end to end over the simulator: a simulated vLLM server scraped over HTTP,
its GPUs found through psutil, its energy read through pynvml, compared with the simulator's truth."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from gpuwatch.exporter.registry import build_registry


def truth_between(history: dict[float, tuple[float, float]], start: float, end: float) -> float:
    """The simulator's own generated tokens per joule between two simulated instants."""
    (tokens0, joules0), (tokens1, joules1) = history[start], history[end]
    return (tokens1 - tokens0) / (joules1 - joules0)


def test_steady_state_tokens_per_joule_matches_the_simulators_truth(sim):
    run = sim("inference-host")
    server = run.host.library.servers[0]
    history = {}
    for t in range(1, 181):
        snapshot = run.at(t)
        history[run.clock.time()] = (server.true_tokens["generation"], server.true_energy_joules())
    source = snapshot.sources[0]
    assert source.up and source.gpus == (0, 1) and source.gpus_from == "auto" and source.preset == "vllm"
    efficiency = source.efficiency
    assert efficiency is not None and efficiency.window_seconds == pytest.approx(60)
    end = run.clock.time() - 1  # the newest scrape this poll could pair with energy
    truth = truth_between(history, end - 60, end)
    measured = efficiency.tokens_per_joule["generation"]
    assert measured == pytest.approx(truth, rel=0.02)
    # DESIGN §6 / research §4.3: batched 8B serving on A6000-class GPUs gives about 1 to 5 tok/J.
    assert 1.0 < measured < 5.0


SERVER_FAULTS = """
name = "token-faults"
seed = 3
[[server]]
name = "vllm"
gpus = [0, 1]
[[server.fault]]
kind = "restart"
at_s = 60
duration_s = 3
[[server.fault]]
kind = "down"
at_s = 100
duration_s = 5
[[server.fault]]
kind = "slow"
at_s = 120
duration_s = 3
delay_s = 5
[[server.fault]]
kind = "garbage"
at_s = 140
duration_s = 3
[[server.fault]]
kind = "huge"
at_s = 160
duration_s = 2
size_mib = 100
[[gpu]]
profile = "rtx-a6000"
load = 0.9
[[gpu.fault]]
kind = "energy_reset"
at_s = 200
[[gpu]]
profile = "rtx-a6000"
load = 0.9
"""

# simulated second -> what the source's status must say then
EXPECTED_ERRORS = {
    62: "Remote end closed connection without response",
    102: "Remote end closed connection without response",
    121: "no complete response within 1.5 s",
    141: "not a Prometheus text exposition",
    161: "over the 16777216-byte limit",
}


def test_server_faults_and_a_driver_reload_never_give_a_bad_figure(tmp_path: Path, caplog, sim):
    scenario = tmp_path / "token-faults.toml"
    scenario.write_text(SERVER_FAULTS)
    # The timeout is short enough to keep the slow fault's scrapes brief and long enough that a whole
    # 16 MiB answer (the huge fault) or an ordinary one arrives on a loaded 2-core machine.
    run = sim(str(scenario), sim_source_timeout_s=1.5)
    statuses, totals, energy, expositions = {}, [], [], {}
    with caplog.at_level(logging.INFO, logger="gpuwatch"):
        for t in range(1, 241):
            snapshot = run.at(t)
            source = snapshot.sources[0]
            statuses[t] = source
            expositions[t] = generate_latest(build_registry(lambda s=snapshot: s, include_process=False)).decode()
            totals.append(source.tokens_total.get("generation", 0.0))
            energy.append(snapshot.gpus[0].energy_joules_total)
            for value in (source.efficiency.tokens_per_joule if source.efficiency else {}).values():
                assert math.isfinite(value) and value >= 0, (t, value)
    for t, error in EXPECTED_ERRORS.items():
        # The status of a poll reflects the scrape after the poll before it.
        assert not statuses[t + 1].up and error in (statuses[t + 1].error or ""), (t, statuses[t + 1])
        assert statuses[t + 1].efficiency is None
        assert 'gpuwatch_source_up{source="vllm"} 0.0' in expositions[t + 1]
        assert "gpuwatch_tokens_per_joule" not in expositions[t + 1]
    assert totals == sorted(totals), "gpuwatch_tokens_total went back"
    assert energy == sorted(energy), "gpuwatch_gpu_energy_joules_total went back"
    assert "the server restarted" in caplog.text
    assert "energy counter went back" in caplog.text
    # Each outage is logged when it starts, not at every scrape.
    assert caplog.text.count("Remote end closed connection without response") == 2
    # Between faults, and at the end, the figure is back.
    for t in (95, 115, 135, 155, 195, 240):
        assert statuses[t].up and statuses[t].efficiency is not None, (t, statuses[t])
    # After the restart the window had to fill again before a figure came back.
    assert all(statuses[t].efficiency is None for t in range(64, 66))
