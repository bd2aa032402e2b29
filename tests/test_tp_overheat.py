"""One GPU of a tensor-parallel pair overheats into HW slowdown (scenario ``tp-pair-overheat``):
the pair's token rate follows the roofline, the partner waits at the collective below its cap, and
tokens per joule moves the way the model in gpuwatch.sim.physics predicts."""

from __future__ import annotations

import pytest

from gpuwatch.sim import abi, scenario
from gpuwatch.sim.inference import decode_step_time
from gpuwatch.sim.library import SimulatedNvmlLibrary
from gpuwatch.sim.physics import STEP_S

HW = abi.REASON_HW_SLOWDOWN


class Spell:
    """Tokens, joules and time accumulated over the steps of one kind."""

    def __init__(self) -> None:
        self.tokens = self.joules = self.seconds = 0.0
        self.partner_watts: list[float] = []
        self.partner_sm_active: list[float] = []
        self.partner_utilization: list[int] = []

    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    def tokens_per_joule(self) -> float:
        return self.tokens / self.joules


def run_truth(until_s: float) -> tuple[Spell, Spell, SimulatedNvmlLibrary]:
    """Step the scenario; sum the simulator's true tokens and energy over steps before GPU 1 gets
    hot (100-200 s) and over the steps GPU 1 spends in HW slowdown."""
    now = [0.0]
    library = SimulatedNvmlLibrary(scenario.load("tp-pair-overheat"), lambda: now[0])
    server = library.servers[0]
    cool, hot = Spell(), Spell()
    tokens, joules = server.true_tokens["generation"], server.true_energy_joules()
    while now[0] < until_s:
        now[0] += STEP_S
        library.advance()
        new_tokens, new_joules = server.true_tokens["generation"], server.true_energy_joules()
        spell = None
        if 100 <= now[0] < 200:
            spell = cool
        elif library.gpus[1].state.reasons & HW:
            spell = hot
        if spell is not None:
            spell.tokens += new_tokens - tokens
            spell.joules += new_joules - joules
            spell.seconds += STEP_S
            spell.partner_watts.append(library.gpus[0].state.power_w)
            spell.partner_sm_active.append(library.gpus[0].sm_active)
            spell.partner_utilization.append(library.gpus[0].state.utilization_gpu)
        tokens, joules = new_tokens, new_joules
    library.close()
    return cool, hot, library


def test_the_pair_slows_to_its_hot_members_roofline_and_its_partner_waits_below_its_cap():
    cool, hot, library = run_truth(900)
    assert hot.seconds > 60, "GPU 1 never spent a minute in HW slowdown"
    # GPU 1 under HW slowdown: the SW thermal floor (75 %) halved, 780 MHz of 2100.
    sm_hot = 780 / 2100
    batch = 64 * 0.95
    # The roofline: a full-clock step of this batch is memory-bound; at 37 % of the SM clock the
    # same step is compute-bound and takes this much longer. The rate falls by that ratio.
    predicted = decode_step_time(batch, 1.0, 1.0) / decode_step_time(batch, sm_hot, 1.0)
    assert predicted < 0.55  # far beyond the 15 % that a weighted sum of the clocks gave
    ratio = hot.tokens_per_second() / cool.tokens_per_second()
    assert ratio == pytest.approx(predicted, rel=0.05)
    # GPU 0 waits at the all-reduce for about half of every step: its power falls below its cap.
    cap = library.gpus[0].power_limit_w
    assert max(cool.partner_watts) > 0.98 * cap
    assert sum(hot.partner_watts) / len(hot.partner_watts) < 0.9 * cap
    # The waiting all-reduce is a resident kernel: NVML's utilization counts it; SM activity does not.
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert mean(hot.partner_utilization) > 85
    assert mean(hot.partner_sm_active) < 0.6 * mean(cool.partner_sm_active)


def test_tokens_per_joule_falls_while_a_member_is_in_hw_slowdown():
    """Direction: down, but by less than the token rate. Why: GPU 1 sits below its voltage floor,
    where dynamic power falls only linearly with clock, so its compute energy per token barely
    changes; meanwhile its hot die leaks more, GPU 0 spins at the collective at the wait level, and
    both cards' static power is spread over about half the tokens. Energy per second falls too
    (GPU 1's clock and GPU 0's wait), which is why tokens per joule falls less than tokens per second."""
    cool, hot, _ = run_truth(900)
    rate_ratio = hot.tokens_per_second() / cool.tokens_per_second()
    efficiency_ratio = hot.tokens_per_joule() / cool.tokens_per_joule()
    assert efficiency_ratio < 0.9
    assert rate_ratio < efficiency_ratio


def test_gpuwatch_measures_the_hot_pairs_tokens_per_joule_as_the_simulator_makes_it(sim):
    run = sim("tp-pair-overheat")
    server = run.host.library.servers[0]
    history = {}
    snapshot = None
    for t in range(1, 721):
        snapshot = run.at(t)
        history[run.clock.time()] = (server.true_tokens["generation"], server.true_energy_joules())
    assert snapshot is not None
    source = snapshot.sources[0]
    assert source.up and source.gpus == (0, 1)
    end = run.clock.time() - 1
    (tokens0, joules0), (tokens1, joules1) = history[end - 60], history[end]
    truth = (tokens1 - tokens0) / (joules1 - joules0)
    assert source.efficiency is not None
    assert source.efficiency.tokens_per_joule["generation"] == pytest.approx(truth, rel=0.02)
