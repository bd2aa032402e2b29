"""Collector switches (gpuwatch/collectors.py): node_exporter's flags, the [collectors] keys, SIGHUP,
the process collector without pid, and the lean set against the shipped rules and dashboards.

``python tests/test_collectors.py`` prints the README's collector table, measured here."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpuwatch import collectors, config
from gpuwatch.analysis.ledger import CostSettings
from gpuwatch.collectors import LEAN_SET, SWITCHABLE, CollectorSettings, select
from gpuwatch.exporter import lean, processes
from gpuwatch.exporter.registry import COLLECTORS, SnapshotCollector, registry_for
from gpuwatch.model import GpuProcess, Snapshot
from gpuwatch.runtime import RuntimeOptions, assemble
from gpuwatch.sim.clock import ManualClock

ROOT = Path(__file__).resolve().parent.parent
MEASURED_ON = ("inference-host", 600)  # the README's figures: a 4-GPU inference host after ten minutes
LEAN_MAX_PER_GPU = 30


# -- every collector carries its switch -------------------------------------------------------------


@pytest.mark.parametrize("name", list(COLLECTORS))
def test_every_collector_says_its_default_and_what_it_exports(name):
    module = collectors.module_of(COLLECTORS[name])
    assert isinstance(getattr(module, "DEFAULT_ENABLED", None), bool), f"{module.__name__} lacks DEFAULT_ENABLED"
    text = getattr(module, "DESCRIPTION", None)
    assert isinstance(text, str) and text and "\n" not in text, f"{module.__name__} lacks a one-line DESCRIPTION"


def test_gpuwatch_own_series_have_no_switch_and_every_other_collector_has_one():
    assert "self" not in SWITCHABLE and set(SWITCHABLE) | {"self"} == set(COLLECTORS)
    assert all(name in COLLECTORS for name in LEAN_SET)


# -- combining switches the node_exporter way -------------------------------------------------------


def enabled(**keys: bool) -> tuple[str, ...]:
    return CollectorSettings.from_keys({k.replace("__", "."): v for k, v in keys.items()}).enabled


def test_defaults_run_every_collector_on_by_default():
    assert enabled() == tuple(n for n in COLLECTORS if n == "self" or collectors.default_enabled(n))


def test_no_collector_turns_one_off():
    assert "processes" not in enabled(processes=False)
    assert set(enabled()) - set(enabled(processes=False)) == {"processes"}


def test_disable_defaults_keeps_only_the_named_ones_and_gpuwatch_own():
    assert enabled(disable_defaults=True) == ("self",)
    assert enabled(disable_defaults=True, power=True) == ("power", "self")
    assert enabled(disable_defaults=True, power=True, thermal=False) == ("power", "self")


def test_the_lean_set_starts_from_its_collectors_and_switches_still_apply():
    assert set(enabled(lean_set=True)) == {*LEAN_SET, "self"}
    assert "pcie" in enabled(lean_set=True, pcie=True)
    assert "power" not in enabled(lean_set=True, power=False)


def test_a_table_of_its_own_switches_the_process_collector_too():
    settings = CollectorSettings.from_keys({"processes.enabled": False, "processes.pid": False})
    assert "processes" not in settings.enabled and not settings.process_pid


@pytest.mark.parametrize(("key", "says"), [("gpus", "no collector is named 'gpus'"), ("self", "always exported")])
def test_an_unknown_collector_is_refused(key, says):
    with pytest.raises(ValueError, match=says):
        CollectorSettings.from_keys({key: True})


# -- the config file ----------------------------------------------------------------------------------


def test_collectors_from_the_file_with_flags_over_it(tmp_path):
    path = tmp_path / "gpuwatch.toml"
    path.write_text("[collectors]\ndisable_defaults = true\npower = true\nprocesses = false\n")
    settings = config.load(str(path), {"collectors.thermal": True, "collectors.power": False}, {})
    assert settings.collectors.enabled == ("thermal", "self")


def test_the_processes_table_and_the_environment(tmp_path):
    path = tmp_path / "gpuwatch.toml"
    path.write_text("[collectors.processes]\npid = false\n")
    settings = config.load(str(path), {}, {"GPUWATCH_COLLECTORS_PCIE": "false"})
    assert not settings.collectors.process_pid
    assert "processes" in settings.collectors.enabled and "pcie" not in settings.collectors.enabled


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[collectors]\ngpus = true\n", "key 'collectors.gpus': value True: no collector is named 'gpus'"),
        ("[collectors]\nself = false\n", "key 'collectors.self': value False: 'self' is gpuwatch's own series"),
        ("[collectors]\nprocesses = 'maybe'\n", "key 'collectors.processes': value 'maybe': expected true or false"),
        ("[collectors.power]\npid = false\n", "key 'collectors.power.pid'"),
    ],
)
def test_a_bad_collectors_key_names_file_key_and_value(tmp_path, text, says):
    path = tmp_path / "gpuwatch.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as raised:
        config.load(str(path), {}, {})
    assert str(path) in str(raised.value) and says in str(raised.value)


def test_check_config_exits_78_on_an_unknown_collector(tmp_path):
    from click.testing import CliRunner

    from gpuwatch.cli import main

    path = tmp_path / "gpuwatch.toml"
    path.write_text("[collectors]\nnvlinks = true\n")
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)], env={"GPUWATCH_CONFIG": None})
    assert result.exit_code == 78
    assert str(path) in result.output and "collectors.nvlinks" in result.output and "True" in result.output


# -- what the exposition holds ---------------------------------------------------------------------


def rendered(snapshot: Snapshot, settings: CollectorSettings) -> list:  # type: ignore[type-arg]
    registry = registry_for(SnapshotCollector(lambda: snapshot, select(settings)), include_process=False)
    return list(text_string_to_metric_families(generate_latest(registry).decode()))


@pytest.fixture(scope="module")
def host_snapshot() -> Snapshot:
    """The README's measuring point: inference-host after ten minutes (a tokens window and more)."""
    return simulated_snapshot(*MEASURED_ON)


def simulated_snapshot(scenario: str, at_s: int, cost: CostSettings | None = None, xid_log: str = "off") -> Snapshot:
    """A scenario's merged snapshot at ``at_s``, polled (and its servers scraped) every 5 s before."""
    clock = ManualClock()
    with assemble(RuntimeOptions(simulate=scenario, cost=cost or CostSettings(), xid_log=xid_log), clock=clock) as rt:
        rt.start(threads=False)
        for t in range(1, at_s + 1, 5):
            clock.advance(t - clock.sim_seconds())
            rt.step()
            rt.scrape_tokens()
        clock.advance(at_s - clock.sim_seconds())
        return rt.step()


OWN = {
    "gpuwatch_build_info",
    "gpuwatch_nvml_up",
    "gpuwatch_last_poll_timestamp_seconds",
    "gpuwatch_poll_duration_seconds",
    "gpuwatch_polls",
    "gpuwatch_nvml_errors",
    "gpuwatch_scrape_collector_success",
    "gpuwatch_scrape_collector_duration_seconds",
}


def test_no_collector_processes_exports_no_process_series(host_snapshot):
    assert any(f.name.startswith("gpuwatch_gpu_process_") for f in rendered(host_snapshot, CollectorSettings()))
    off = rendered(host_snapshot, CollectorSettings.from_keys({"processes": False}))
    assert not any(f.name.startswith("gpuwatch_gpu_process_") for f in off)
    success = next(f for f in off if f.name == "gpuwatch_scrape_collector_success")
    assert "processes" not in {s.labels["collector"] for s in success.samples}


def test_disable_defaults_and_power_exports_power_and_gpuwatch_own_only(host_snapshot):
    families = rendered(host_snapshot, CollectorSettings.from_keys({"disable_defaults": True, "power": True}))
    names = {f.name for f in families}
    assert "gpuwatch_gpu_power_watts" in names and "gpuwatch_build_info" in names
    assert all(
        name.startswith("gpuwatch_gpu_power_") or name == "gpuwatch_gpu_energy_joules" or name in OWN for name in names
    ), names
    success = next(f for f in families if f.name == "gpuwatch_scrape_collector_success")
    assert {s.labels["collector"] for s in success.samples} == {"power", "self"}


def test_without_pid_one_series_per_name_and_user_with_memory_summed():
    procs = (
        GpuProcess(pid=10, name="python3", user="svc", used_memory_bytes=1 << 30),
        GpuProcess(pid=11, name="python3", user="svc", used_memory_bytes=2 << 30),
        GpuProcess(pid=12, name="python3", user="other", used_memory_bytes=None),
        GpuProcess(pid=13, name=None, user=None, used_memory_bytes=5),
    )
    assert processes.by_name_and_user(procs) == {
        ("python3", "svc"): 3 << 30,
        ("python3", "other"): None,
        ("", ""): 5,
    }


def test_the_process_series_lose_pid_when_told(host_snapshot):
    families = rendered(host_snapshot, CollectorSettings(process_pid=False))
    family = next(f for f in families if f.name == "gpuwatch_gpu_process_memory_used_bytes")
    assert family.samples and all("pid" not in s.labels for s in family.samples)
    keys = [(s.labels["gpu"], s.labels["process"], s.labels["user"]) for s in family.samples]
    assert len(keys) == len(set(keys))
    with_pid = next(f for f in rendered(host_snapshot, CollectorSettings()) if f.name == family.name)
    assert sum(s.value for s in family.samples) == sum(s.value for s in with_pid.samples)


# -- SIGHUP: switches change on a running runtime ---------------------------------------------------


def test_reconfigure_switches_collectors_and_the_process_listing():
    clock = ManualClock()
    options = RuntimeOptions(simulate="healthy", process_interval_s=1.0)
    with assemble(options, clock=clock) as rt:
        rt.start(threads=False)
        clock.advance(1)
        snapshot = rt.step()
        body = rt.exposition.render("")[0].decode()
        assert "gpuwatch_gpu_process_memory_used_bytes" in body and any(g.processes for g in snapshot.gpus)
        off = CollectorSettings.from_keys({"processes": False})
        rt.reconfigure(1.0, 1.0, options.tokens_window_s, off)
        body = rt.exposition.render("")[0].decode()  # the same snapshot, rendered again
        assert "gpuwatch_gpu_process_" not in body
        assert not rt.sampler.list_processes
        clock.advance(2)
        assert all(g.processes == () for g in rt.step().gpus)  # listing skipped; none left over
        rt.reconfigure(1.0, 1.0, options.tokens_window_s, CollectorSettings())
        clock.advance(2)
        assert any(g.processes for g in rt.step().gpus) and rt.sampler.list_processes


def test_processes_are_still_listed_for_a_token_source_that_finds_its_gpus_by_them():
    clock = ManualClock()
    options = RuntimeOptions(simulate="inference-host", collectors=CollectorSettings.from_keys({"processes": False}))
    with assemble(options, clock=clock) as rt:
        rt.start(threads=False)
        assert rt.sampler.list_processes  # the scenario's servers are found by their processes


# -- the README table and the lean set --------------------------------------------------------------


def series_by_collector(snapshot: Snapshot, settings: CollectorSettings) -> dict[str, tuple[float, int]]:
    """For each collector that runs: (series carrying a gpu label per GPU, series without one)."""
    gpus = len(snapshot.gpus)
    counts = {}
    for name, collect in select(settings).items():
        samples = [s for family in collect(snapshot) for s in family.samples]
        per_gpu = sum(1 for s in samples if "gpu" in s.labels)
        counts[name] = (per_gpu / gpus, len(samples) - per_gpu)
    return counts


def lean_counts(snapshot: Snapshot) -> tuple[float, int]:
    counts = series_by_collector(snapshot, CollectorSettings(lean_set=True))
    per_gpu = sum(c[0] for c in counts.values())
    per_host = sum(c[1] for c in counts.values()) + 2 * len(counts)  # and the scrape_collector pair
    return per_gpu, per_host


def readme_table(snapshot: Snapshot) -> str:
    full = series_by_collector(snapshot, CollectorSettings())
    trimmed = series_by_collector(snapshot, CollectorSettings(lean_set=True))
    rows = [
        "| collector | default | lean set | series per GPU | series per host | what it exports |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in COLLECTORS:
        default = "always" if name == "self" else ("on" if collectors.default_enabled(name) else "off")
        in_lean = "always" if name == "self" else (f"{trimmed[name][0]:g} per GPU" if name in trimmed else "no")
        per_gpu, per_host = full[name]
        rows.append(f"| `{name}` | {default} | {in_lean} | {per_gpu:g} | {per_host} | {collectors.description(name)} |")
    per_gpu, per_host = lean_counts(snapshot)
    rows.append(f"| lean set | | | {per_gpu:g} | {per_host} | `--collector.lean-set` |")
    return "\n".join(rows)


def test_the_readme_table_is_what_a_simulated_host_exports(host_snapshot):
    readme = (ROOT / "README.md").read_text()
    assert readme_table(host_snapshot) in readme, (
        "README collector table differs from the measurement; replace it with the output of "
        "`python tests/test_collectors.py`:\n" + readme_table(host_snapshot)
    )


def test_the_lean_set_stays_under_30_series_per_gpu(host_snapshot):
    per_gpu, _ = lean_counts(host_snapshot)
    assert per_gpu <= LEAN_MAX_PER_GPU


def rule_and_panel_expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every alert, recording rule and dashboard panel shipped."""
    for path in sorted((ROOT / "prometheus").glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc.get("groups", []) if isinstance(doc, dict) else []:
            for rule in group.get("rules", []):
                yield f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"]
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        yield from ((path.name, expr) for expr in _exprs(json.loads(path.read_text())))


def _exprs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query") and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _exprs(value)


_METRIC = re.compile(r"(?<![\w:])gpuwatch_\w+(?![\w:])")  # recorded names hold colons: not exported


def test_rules_and_dashboards_are_read_from_the_files():
    used = {m for _, expr in rule_and_panel_expressions() for m in _METRIC.findall(expr)}
    assert {"gpuwatch_gpu_up", "gpuwatch_gpu_health", "gpuwatch_tokens_per_joule"} <= used


# Scenarios whose full exposition holds every family a shipped rule or panel reads (Xid counters
# need an Xid): a metric none of them exports fails the test below, so add a scenario that does.
EXPORTING_SCENARIOS = (
    ("xid-79", 60),
    ("ecc-uncorrectable", 60),
    ("thermal-throttle", 300),
    ("h200-node", 30),
    ("h200-mig", 30),
)


def test_the_lean_set_exports_every_metric_a_shipped_rule_or_panel_reads(host_snapshot):
    """Each metric read is exported (on some simulated host) by a collector of the lean set, and
    its family is one the lean set keeps (gpuwatch/exporter/lean.py; ``self`` is kept whole)."""
    found: dict[str, tuple[str, str]] = {}  # sample name -> (collector, family)
    snapshots = [host_snapshot, *(simulated_snapshot(*at) for at in EXPORTING_SCENARIOS)]
    snapshots.append(
        simulated_snapshot("inference-host", 120, CostSettings(energy_price_per_kwh=0.3, gpu_hour_price=2.4))
    )
    snapshots.append(simulated_snapshot("nvlink-faults", 120, xid_log="auto"))
    for snapshot in snapshots:
        for name, collect in COLLECTORS.items():
            found.update({s.name: (name, f.name) for f in collect(snapshot) for s in f.samples})
    lean_collectors = CollectorSettings(lean_set=True).enabled
    missing = []
    for where, expr in rule_and_panel_expressions():
        for metric in _METRIC.findall(expr):
            if metric in lean.NOT_SERVED:
                continue
            collector, family = found.get(metric, (None, None))
            if collector is None:
                missing.append(f"{metric} ({where}): no simulated host checked exports it")
            elif collector not in lean_collectors:
                missing.append(f"{metric} ({where}): its collector {collector} is not in LEAN_SET")
            elif collector != "self" and family not in lean.LEAN_SERIES:
                missing.append(f"{metric} ({where}): not in gpuwatch/exporter/lean.py's LEAN_SERIES")
    assert not missing, "the lean set drops what these read:\n" + "\n".join(sorted(set(missing)))


def test_the_lean_set_trims_state_sets_to_the_series_that_are_set(host_snapshot):
    families = {f.name: f for f in rendered(host_snapshot, CollectorSettings(lean_set=True))}
    health = families["gpuwatch_gpu_health"]
    assert len(health.samples) == len(host_snapshot.gpus) and all(s.value == 1 for s in health.samples)
    assert {s.labels["clock"] for s in families["gpuwatch_gpu_clock_hertz"].samples} == {"sm"}
    assert "gpuwatch_gpu_pcie_link_width" not in families and "gpuwatch_gpu_info" not in families
    added = {f.name for f in rendered(host_snapshot, CollectorSettings.from_keys({"lean_set": True, "pcie": True}))}
    assert "gpuwatch_gpu_pcie_link_width" in added  # a collector added by name exports whole


if __name__ == "__main__":  # print the README table
    print(readme_table(simulated_snapshot(*MEASURED_ON)))


# -- end to end: the acceptance commands, and a SIGHUP -----------------------------------------------


def scraped_names(url: str) -> set[str]:
    import requests

    text = requests.get(url + "/metrics", timeout=10).text
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def wait_for_poll(url: str) -> set[str]:
    from waiting import wait_until

    names: set[str] = set()

    def polled() -> bool:
        nonlocal names
        names = scraped_names(url)
        return "gpuwatch_polls_total" in names and "gpuwatch_last_poll_timestamp_seconds" in names

    assert wait_until(polled, timeout_s=30, every_s=0.1), f"no poll in /metrics within 30 s: {sorted(names)}"
    return names


@pytest.mark.slow
def test_serve_without_the_process_collector(tmp_path):
    from serving import serve

    with serve(tmp_path, "--simulate", "--no-collector.processes", "--process-interval", "1s") as d:
        names = wait_for_poll(d.url)
        assert "gpuwatch_gpu_power_watts" in names
        assert not any(name.startswith("gpuwatch_gpu_process_") for name in names)


@pytest.mark.slow
def test_serve_with_power_only_and_a_sighup_that_brings_processes_back(tmp_path):
    from serving import serve

    path = tmp_path / "gpuwatch.toml"
    path.write_text("[collectors]\n")
    args = ("--config", str(path), "--simulate", "--process-interval", "1s")
    with serve(tmp_path, *args, "--collector.disable-defaults", "--collector.power") as d:
        names = wait_for_poll(d.url)
        foreign = {n for n in names if not n.startswith(("gpuwatch_gpu_power_", "gpuwatch_gpu_energy_joules"))}
        own = {n.removesuffix("_total") for n in foreign}
        assert "gpuwatch_gpu_power_watts" in names
        assert all(n in OWN or n.startswith("gpuwatch_process_") for n in own), sorted(foreign)
        path.write_text("[collectors]\nprocesses = true\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_log("reloaded: collectors power, processes, self", timeout_s=30)
        from waiting import wait_until

        assert wait_until(
            lambda: any(n.startswith("gpuwatch_gpu_process_") for n in scraped_names(d.url)), timeout_s=30, every_s=0.1
        ), "no per-process series 30 s after the reload"


def test_every_collectors_key_has_its_flag_on_serve():
    from click.testing import CliRunner

    from gpuwatch.cli import main

    text = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200).output
    for key, flag in config.FLAG_FOR_KEY.items():
        if key.startswith("collectors."):
            assert flag in text, flag
    assert all(f"--no-collector.{name}" in text for name in SWITCHABLE)


def test_a_flag_beats_the_environment_whichever_spelling_each_uses(tmp_path):
    """`processes` and `[collectors.processes] enabled` are one switch: file < environment < flag."""
    path = tmp_path / "gpuwatch.toml"
    path.write_text("[collectors]\nprocesses = false\n")
    environ = {"GPUWATCH_COLLECTORS_PROCESSES_ENABLED": "true"}
    on = config.load(str(path), {}, environ)
    assert "processes" in on.collectors.enabled  # the environment beats the file
    off = config.load(str(path), {"collectors.processes": False}, environ)
    assert "processes" not in off.collectors.enabled  # the flag beats both
