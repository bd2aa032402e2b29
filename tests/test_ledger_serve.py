"""The [cost] settings: file, environment, check-config, serve's refusal, and a simulated host
serving the ledger over HTTP (promtool-clean), with a SIGHUP that changes the price."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner
from serving import serve
from test_e2e import daemon, get, parse
from test_exporter import GOLDEN, exposition
from waiting import wait_until

from gpuwatch import config
from gpuwatch.analysis.ledger import CostSettings
from gpuwatch.cli import main
from gpuwatch.runtime import RuntimeOptions, assemble
from gpuwatch.sim.clock import ManualClock


def write(tmp_path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "gpuwatch.toml"
    path.write_text(text)
    return path


def test_cost_settings_come_from_the_file_with_their_defaults(tmp_path):
    path = write(tmp_path, "[cost]\nenergy_price_per_kwh = 0.30\ngpu_hour_price = 2\n")
    assert config.build(config.load_file(path), {}).cost == CostSettings(energy_price_per_kwh=0.3, gpu_hour_price=2.0)
    assert config.build({}, {}).cost == CostSettings()  # no [cost]: no price, no cost series


def test_cost_settings_from_the_environment():
    env = {"GPUWATCH_COST_ENERGY_PRICE_PER_KWH": "0.25", "GPUWATCH_COST_PUE": "1.3", "GPUWATCH_COST_CURRENCY": "EUR"}
    assert config.load(None, {}, env).cost == CostSettings(energy_price_per_kwh=0.25, pue=1.3, currency="EUR")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[cost]\npue = 0.9", ["cost.pue", "0.9", "between 1 and 10"]),
        ("[cost]\nenergy_price_per_kwh = -0.1", ["cost.energy_price_per_kwh", "-0.1", "between 0"]),
        ('[cost]\nenergy_price_per_kwh = "cheap"', ["cost.energy_price_per_kwh", "'cheap'", "expected a number"]),
        ("[cost]\ngpu_hour_price = nan", ["cost.gpu_hour_price", "nan", "between 0"]),
        ('[cost]\ncurrency = "usd"', ["cost.currency", "'usd'", "ISO 4217"]),
        ('[cost]\ncurrency = "dollars"', ["cost.currency", "'dollars'", "ISO 4217"]),
        ("[cost]\nprice = 0.3", ["'cost.price'", "unknown key"]),
    ],
)
def test_bad_cost_values_name_file_key_and_value(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as caught:
        config.load_file(path)
    for fragment in [str(path), *expected]:
        assert fragment in str(caught.value)


def test_serve_and_check_config_refuse_a_bad_cost_with_exit_78(tmp_path):
    path = write(tmp_path, "[cost]\nenergy_price_per_kwh = 0.3\npue = 0.5\n")
    for command in ("serve", "check-config"):
        result = CliRunner().invoke(main, [command, "--config", str(path)], catch_exceptions=False)
        assert result.exit_code == 78, command
        assert str(path) in result.stderr and "cost.pue" in result.stderr and "0.5" in result.stderr


def test_check_config_prints_the_cost_settings(tmp_path):
    path = write(tmp_path, '[cost]\nenergy_price_per_kwh = 0.3\npue = 1.2\ngpu_hour_price = 1.5\ncurrency = "EUR"\n')
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "  cost: 0.3 EUR per kWh at PUE 1.2 + 1.5 EUR per GPU-hour" in result.output.splitlines()
    empty = write(tmp_path, "")
    result = CliRunner().invoke(main, ["check-config", "--config", str(empty)], catch_exceptions=False)
    assert "  cost: no price set (no cost per million tokens)" in result.output.splitlines()


LEDGER_FAMILIES = (
    "gpuwatch_source_energy_joules_total",
    "gpuwatch_source_idle_seconds_total",
    "gpuwatch_source_idle_joules_total",
    "gpuwatch_source_cost_total",
    "gpuwatch_source_cost_per_million_tokens",
)


def test_priced_metrics_match_the_golden_file(update_golden):
    """inference-host at 600 s as tests/test_exporter.py steps it, with [cost] prices: the golden
    file that shows (and lets the rules' tests name) the cost families."""
    clock = ManualClock()
    cost = CostSettings(energy_price_per_kwh=0.30, pue=1.2, gpu_hour_price=0.80)
    with assemble(RuntimeOptions(simulate="inference-host", cost=cost), clock=clock) as rt:
        rt.start(threads=False)
        for t in [1, *range(585, 601)]:
            clock.advance(t - clock.sim_seconds())
            snapshot = rt.step()
            rt.scrape_tokens()
        text = exposition(snapshot)
    golden = GOLDEN / "inference-host-cost-600s.prom"
    if update_golden:
        golden.write_text(text)
    assert text == golden.read_text(), "exposition changed; if intended, run pytest --update-golden and review"
    for family in LEDGER_FAMILIES:
        assert f"\n{family}{{" in text, family


@pytest.mark.slow
def test_serve_simulated_inference_host_with_cost_exports_the_ledger(tmp_path, promtool):
    """The acceptance run: `gpuwatch serve --simulate inference-host` with a [cost] table."""
    path = write(tmp_path, "[cost]\nenergy_price_per_kwh = 0.30\npue = 1.2\n")
    vllm = frozenset({("source", "vllm")})
    with daemon(tmp_path, "--config", str(path), "--simulate", "inference-host", "--sim-speed", "60") as d:
        # the cost needs a complete window (60 simulated seconds) of tokens and energy
        assert wait_until(lambda: "gpuwatch_source_cost_per_million_tokens" in d.metrics(), timeout_s=60), d.stderr
        text = get(d.url + "/metrics")
        samples = parse(text)
        for family in LEDGER_FAMILIES[:3]:
            assert vllm in samples[family], family
        assert frozenset({("source", "vllm"), ("currency", "USD")}) in samples["gpuwatch_source_cost_total"]
        assert samples["gpuwatch_source_energy_joules_total"][vllm] > 0
        costs = samples["gpuwatch_source_cost_per_million_tokens"]
        generation = frozenset({("source", "vllm"), ("kind", "generation"), ("currency", "USD")})
        assert costs[generation] > 0
        assert set(costs) == {generation, frozenset({("source", "vllm"), ("kind", "total"), ("currency", "USD")})}
        check = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
        assert check.returncode == 0 and not check.stdout and not check.stderr, check.stdout + check.stderr

        # /status and `gpuwatch status --json` carry the same ledger
        status = subprocess.run(
            [sys.executable, "-m", "gpuwatch", "status", "--url", d.url, "--json"], capture_output=True, text=True
        )
        (source,) = json.loads(status.stdout)["sources"]
        assert source["energy_joules_total"] > 0 and source["currency"] == "USD"
        assert set(source["cost_per_million_tokens_by_kind"]) == {"generation", "total"}
        assert "total" in source["joules_per_token_by_kind"]

        # a new price on SIGHUP applies without a restart
        path.write_text('[cost]\nenergy_price_per_kwh = 0.30\npue = 1.2\ncurrency = "EUR"\n')
        d.proc.send_signal(signal.SIGHUP)

        def in_euros() -> bool:
            found = d.metrics().get("gpuwatch_source_cost_per_million_tokens", {})
            return bool(found) and all(("currency", "EUR") in labels for labels in found)

        assert wait_until(in_euros, timeout_s=30), d.stderr
        assert "reloaded: cost 0.3 EUR per kWh at PUE 1.2" in d.stderr


@pytest.mark.slow
def test_serve_without_cost_has_no_cost_series_but_the_ledger(tmp_path):
    with serve(tmp_path, "--simulate", "inference-host", "--sim-speed", "60") as served:
        assert wait_until(lambda: "gpuwatch_source_idle_joules_total" in get(served.url + "/metrics"), timeout_s=60)
        assert "gpuwatch_source_cost_per_million_tokens" not in get(served.url + "/metrics")
