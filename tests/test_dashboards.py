"""The Grafana dashboards as files: current JSON model, variables, unique ids, no hard-coded limits."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import queries
import yaml

DASHBOARDS = queries.load_dashboards()
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Visualisations of the current JSON model; "graph", "singlestat" and "table-old" are the legacy ones.
PANEL_TYPES = {"row", "timeseries", "stat", "state-timeline", "bargauge", "gauge", "table", "histogram"}
# Threshold steps and axis bounds may use only these: "none yet" (the base step), zero (a margin
# used up, a count of errors) and one (a whole share, a flag). A temperature or a wattage in a
# dashboard would be a limit of one GPU model drawn on every other.
NEUTRAL = {None, 0, 1}
_COMPARISON = re.compile(r"(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)")


def test_both_dashboards_are_shipped():
    assert set(DASHBOARDS) == {"gpuwatch-host.json", "gpuwatch-fleet.json"}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_uses_the_current_json_model(name):
    dashboard = DASHBOARDS[name]
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["id"] is None and dashboard["uid"] == name.removesuffix(".json")
    assert "gpuwatch" in dashboard["tags"]
    for panel in queries.panels(dashboard):
        assert panel["type"] in PANEL_TYPES, (panel["title"], panel["type"])
        assert panel["title"]
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{panel['title']}: say what the panel shows"
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_datasource_instance_and_gpu_are_variables(name):
    variables = {v["name"]: v for v in DASHBOARDS[name]["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for key in ("instance", "gpu"):
        assert variables[key]["type"] == "query" and variables[key]["datasource"] == DATASOURCE
    assert variables["gpu"]["multi"] and variables["gpu"]["includeAll"]
    # Every query is scoped by the host variable; every query of per-GPU series by the GPU one too.
    for query in queries.dashboard_queries():
        if query.dashboard != name or query.panel is None:
            continue
        assert '=~"$instance"' in query.expr, query.where
        if any(n.startswith("gpuwatch_gpu_") for n in queries.metric_names(query.expr)):
            assert 'gpu=~"$gpu"' in query.expr, query.where


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panel_ids_are_unique_and_panels_do_not_overlap(name):
    all_panels = list(queries.panels(DASHBOARDS[name]))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    boxes = [(p["title"], p["gridPos"]) for p in all_panels]
    for i, (title_a, a) in enumerate(boxes):
        assert a["x"] + a["w"] <= 24, title_a
        for title_b, b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, (title_a, title_b)


def _numbers(field_config: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every threshold step and axis bound in a panel's field config, overrides included."""
    found: list[tuple[str, Any]] = []
    configs = [field_config.get("defaults", {})]
    configs += [{p["id"]: p["value"] for p in o["properties"]} for o in field_config.get("overrides", [])]
    for config in configs:
        for step in (config.get("thresholds") or {}).get("steps", []):
            found.append(("threshold step", step["value"]))
        for key in ("min", "max"):
            if key in config:
                found.append((key, config[key]))
        custom = config.get("custom", {})
        for key in ("axisSoftMin", "axisSoftMax"):
            if key in custom:
                found.append((key, custom[key]))
    return found


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_no_hard_coded_temperature_or_power_thresholds(name):
    for panel in queries.panels(DASHBOARDS[name]):
        for what, value in _numbers(panel.get("fieldConfig", {})):
            assert value in NEUTRAL, f"{panel['title']}: {what} {value}: draw limits from the card's own metrics"
        for target in panel.get("targets", []):
            for literal in _COMPARISON.findall(target["expr"]):
                assert float(literal) in NEUTRAL, f"{panel['title']}: compares with {literal}"


def test_host_dashboard_draws_each_gpus_own_limits():
    exprs = {
        p["title"]: " ".join(t["expr"] for t in p["targets"])
        for p in queries.panels(DASHBOARDS["gpuwatch-host.json"])
        if p["type"] != "row"
    }
    assert "gpuwatch_gpu_temperature_threshold_celsius" in exprs["Temperature against its own limits"]
    assert 'threshold=~"max_operating|slowdown"' in exprs["Temperature against its own limits"]
    assert "gpuwatch_gpu_temperature_margin_celsius" in exprs["Thermal margin"]
    assert "gpuwatch_gpu_power_limit_watts" in exprs["Power against the enforced cap"]
    assert "gpuwatch_gpu_clock_max_hertz" in exprs["SM clock against its maximum"]
    rows = [p for p in queries.panels(DASHBOARDS["gpuwatch-host.json"]) if p["type"] == "row"]
    assert [r.get("repeat") for r in rows if "$gpu" in r["title"]] == ["gpu"]


def test_every_dashboard_expression_parses(promtool, tmp_path):
    """promtool parses them as recording rules: a syntax error fails here, without a Prometheus."""
    rules = [
        {"record": f"dashboard:expression:{i}", "expr": queries.substitute(q.expr)}
        for i, q in enumerate(queries.dashboard_queries())
    ]
    path = tmp_path / "dashboard-expressions.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_files_point_grafana_at_the_dashboards():
    provisioning = queries.DASHBOARDS / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards.yml").read_text())
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    datasources = yaml.safe_load((provisioning / "datasources.yml").read_text())
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
