"""The per-source energy ledger and cost (analysis/ledger.py): pure functions, table-driven."""

from __future__ import annotations

import pytest

from gpuwatch.analysis.efficiency import EnergyPoint, TokenPoint, window_efficiency
from gpuwatch.analysis.ledger import (
    CostSettings,
    IdleSpell,
    add_share,
    cost_per_million_tokens,
    energy_deltas,
    settle,
    spend,
    split_energy,
)
from gpuwatch.records import Efficiency, SourceLedger


def test_energy_deltas_come_from_the_reset_safe_totals_of_gpus_in_both_polls():
    previous = {0: 1000.0, 1: 2000.0, 2: 50.0}
    current = {0: 1300.0, 1: 2000.0, 3: 10.0}  # GPU 2 stopped reporting, GPU 3 just started
    assert energy_deltas(previous, current) == {0: 300.0, 1: 0.0}


def test_an_energy_total_that_went_back_gives_nothing_rather_than_a_negative_share():
    # derive.py's totals never go back; if one ever did (a bug upstream), no source is debited
    assert energy_deltas({0: 500.0}, {0: 400.0}) == {0: 0.0}


@pytest.mark.parametrize(
    ("deltas", "serving", "expected"),
    [
        ({0: 300.0, 1: 100.0}, {"a": (0, 1)}, {"a": 400.0}),
        # two servers on one GPU (two llama.cpp instances on a workstation card): half each
        ({0: 300.0}, {"a": (0,), "b": (0,)}, {"a": 150.0, "b": 150.0}),
        # a TP pair and a small server sharing GPU 1
        ({0: 200.0, 1: 100.0}, {"tp": (0, 1), "small": (1,)}, {"tp": 250.0, "small": 50.0}),
        # a source whose GPUs gave no energy this poll gets no entry (its ledger stays absent)
        ({0: 200.0}, {"a": (0,), "b": (1,)}, {"a": 200.0}),
        ({}, {"a": (0,)}, {}),
    ],
)
def test_split_energy_shares_each_gpu_equally_among_the_sources_serving_it(deltas, serving, expected):
    shares = split_energy(deltas, serving)
    assert shares == pytest.approx(expected)
    # nothing counted twice: the shares add up to the energy of the GPUs that serve anything
    served = {gpu for gpus in serving.values() for gpu in gpus}
    assert sum(shares.values()) == pytest.approx(sum(j for gpu, j in deltas.items() if gpu in served))


def test_add_share_starts_a_ledger_and_only_ever_adds():
    ledger = add_share(None, 120.0)
    assert ledger == SourceLedger(energy_joules=120.0)
    assert add_share(ledger, 30.0).energy_joules == pytest.approx(150.0)
    with pytest.raises(ValueError, match="negative"):
        add_share(ledger, -1.0)


def test_add_share_prices_each_poll_at_the_prices_then_in_force():
    usd = CostSettings(energy_price_per_kwh=0.30, gpu_hour_price=3.6)
    ledger = add_share(None, 3.6e6, gpu_seconds=7200.0, cost=usd)  # 1 kWh and 2 GPU-hours
    assert ledger.spent == pytest.approx({"USD": 0.30 + 7.2})
    ledger = add_share(ledger, 3.6e6, cost=CostSettings(energy_price_per_kwh=0.30, pue=2.0))
    assert ledger.spent == pytest.approx({"USD": 0.30 + 7.2 + 0.60})
    ledger = add_share(ledger, 3.6e6, cost=CostSettings(energy_price_per_kwh=0.25, currency="EUR"))
    assert ledger.spent == pytest.approx({"USD": 8.1, "EUR": 0.25})  # a currency changed on SIGHUP starts anew
    assert add_share(ledger, 3.6e6, cost=CostSettings()).spent == ledger.spent  # no price: nothing spent


def test_spend_is_energy_times_pue_at_the_kwh_price_plus_gpu_time():
    assert spend(7.2e6, 0.0, CostSettings(energy_price_per_kwh=0.1, pue=1.5)) == pytest.approx(0.3)
    assert spend(7.2e6, 1800.0, CostSettings(gpu_hour_price=2.0)) == pytest.approx(1.0)
    assert spend(7.2e6, 1800.0, CostSettings()) == 0.0


def scrape(t: float, generation: float, prompt: float = 0.0) -> TokenPoint:
    return TokenPoint(t, {"generation": generation, "prompt": prompt})


ATTRIBUTED = [EnergyPoint(float(t), 100.0 * t) for t in range(0, 31)]  # 100 W for 30 s


def settled(pending, attributed=ATTRIBUTED, ledger=None, spell=None):  # type: ignore[no-untyped-def]
    return settle(ledger or SourceLedger(), pending, attributed, spell or IdleSpell())


def test_a_still_spell_of_five_seconds_or_more_is_idle_with_its_interpolated_energy():
    # busy to 2.5, still from 2.5 to 9.5 (7 s), busy again to 10.5, still 10.5 to 12.5 (2 s)
    pending = [scrape(1.5, 10), scrape(2.5, 12)]
    pending += [scrape(t + 0.5, 12) for t in range(3, 10)]
    pending += [scrape(10.5, 15), scrape(11.5, 15), scrape(12.5, 15)]
    after, consumed, spell = settled(pending, ledger=SourceLedger(energy_joules=1000.0))
    assert consumed == len(pending) - 1
    assert after.idle_seconds == pytest.approx(7.0)
    assert after.idle_joules == pytest.approx(700.0)
    assert after.energy_joules == 1000.0  # the energy itself was counted poll by poll
    assert spell == IdleSpell(2.0, 200.0)  # the short spell at the end: not idle (yet)


def test_still_intervals_shorter_than_a_spell_are_not_idle():
    # a server whose counters move only as requests end (SGLang, TGI), busy: one still second in two
    pending = [scrape(t + 0.5, 10 * (t // 2)) for t in range(0, 29)]
    after, _, _ = settled(pending)
    assert after.idle_seconds == 0.0


def test_an_open_spell_counts_once_it_reaches_five_seconds_then_as_it_grows():
    pending = [scrape(t + 0.5, 7) for t in range(0, 4)]  # 3 s still
    ledger, consumed, spell = settled(pending)
    assert (ledger.idle_seconds, spell.seconds) == (0.0, pytest.approx(3.0))
    pending = [pending[consumed], *[scrape(t + 0.5, 7) for t in range(4, 7)]]  # 6 s now
    ledger, consumed, spell = settled(pending, ledger=ledger, spell=spell)
    assert ledger.idle_seconds == pytest.approx(6.0)
    pending = [pending[consumed], scrape(7.5, 7)]
    ledger, _, _ = settled(pending, ledger=ledger, spell=spell)
    assert ledger.idle_seconds == pytest.approx(7.0)


def test_a_scrape_after_the_newest_poll_waits_for_the_next_poll():
    pending = [scrape(29.5, 5), scrape(30.5, 5)]
    after, consumed, _ = settled(pending)
    assert (after, consumed) == (SourceLedger(), 0)


def test_scrapes_older_than_the_attributed_energy_are_dropped_and_end_a_spell():
    # the source's GPUs were found (or came back) only at t=5: nothing before is known
    attributed = ATTRIBUTED[5:]
    pending = [scrape(float(t), 5) for t in range(1, 13)]
    after, consumed, _ = settled(pending, attributed)
    assert consumed == 11
    assert after.idle_seconds == pytest.approx(7.0)  # 5 to 12, not 1 to 12
    # with no attributed energy at all, only the newest scrape is kept
    assert settled(pending, [])[1] == 11


def test_a_counter_reset_between_scrapes_is_not_still_when_the_reset_safe_total_rose():
    # the tracker gives settle reset-safe totals: a server restart that made tokens shows as a rise
    pending = [scrape(1.0, 500), *[scrape(float(t), 507) for t in range(2, 12)]]
    after, _, spell = settled(pending)
    assert after.idle_seconds == pytest.approx(9.0)  # from 2 s on; 1 to 2 moved
    assert spell.seconds == pytest.approx(9.0)


def test_idle_energy_never_exceeds_the_energy_attributed():
    attributed: list[EnergyPoint] = []
    ledger: SourceLedger | None = None
    pending: list[TokenPoint] = []
    spell = IdleSpell()
    for t in range(1, 40):
        ledger = add_share(ledger, 90.0)
        attributed.append(EnergyPoint(float(t), ledger.energy_joules))
        pending.append(scrape(t + 0.4, 100 if t < 20 else 100 + t))  # idle, then busy
        ledger, consumed, spell = settle(ledger, pending, attributed, spell)
        del pending[:consumed]
        assert ledger.idle_joules <= ledger.energy_joules
    assert ledger is not None
    assert ledger.idle_seconds == pytest.approx(18.0)  # scrapes 1.4 .. 19.4, as the counter held still


def efficiency(joules: float, generation: float, prompt: float, window_s: float = 60.0) -> Efficiency:
    tokens = [
        TokenPoint(0.0, {"generation": 0.0, "prompt": 0.0}),
        TokenPoint(window_s, {"generation": generation, "prompt": prompt}),
    ]
    energy = [EnergyPoint(0.0, 0.0), EnergyPoint(window_s, joules)]
    result = window_efficiency(tokens, energy, window_s)
    assert result is not None
    return result


def test_window_efficiency_gives_joules_per_total_token():
    e = efficiency(36_000.0, generation=6_000.0, prompt=30_000.0)
    assert e.joules_per_token["generation"] == pytest.approx(6.0)
    assert e.joules_per_token["total"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("settings", "gpus", "generation", "total"),
    [
        # 36 kJ = 0.01 kWh at 0.30/kWh = 0.003 for 6,000 generated (36,000 total) tokens
        (CostSettings(energy_price_per_kwh=0.30), 2, 0.5, 0.003 / 36_000 * 1e6),
        # PUE 1.5 scales the energy part
        (CostSettings(energy_price_per_kwh=0.30, pue=1.5), 2, 0.75, 0.0045 / 36_000 * 1e6),
        # 2 GPUs at 2.40 per GPU-hour for 60 s = 0.08, plus the energy
        (CostSettings(energy_price_per_kwh=0.30, gpu_hour_price=2.40), 2, 0.083 / 6_000 * 1e6, 0.083 / 36_000 * 1e6),
        # a GPU-hour price alone (cloud rental with power included)
        (CostSettings(gpu_hour_price=2.40), 2, 0.08 / 6_000 * 1e6, 0.08 / 36_000 * 1e6),
    ],
)
def test_cost_per_million_tokens(settings, gpus, generation, total):
    e = efficiency(36_000.0, generation=6_000.0, prompt=30_000.0)
    assert cost_per_million_tokens(e, gpus, settings) == pytest.approx({"generation": generation, "total": total})


def test_no_price_or_no_tokens_gives_no_cost():
    e = efficiency(36_000.0, generation=6_000.0, prompt=30_000.0)
    assert cost_per_million_tokens(e, 2, CostSettings()) == {}
    idle = efficiency(36_000.0, generation=0.0, prompt=0.0)
    assert cost_per_million_tokens(idle, 2, CostSettings(energy_price_per_kwh=0.3)) == {}


def test_cost_settings_refuse_what_cannot_be_a_price():
    with pytest.raises(ValueError, match="pue"):
        CostSettings(energy_price_per_kwh=0.3, pue=0.9)
    with pytest.raises(ValueError, match="energy_price_per_kwh"):
        CostSettings(energy_price_per_kwh=-0.1)
    with pytest.raises(ValueError, match="currency"):
        CostSettings(energy_price_per_kwh=0.3, currency="dollars")
