"""The Prometheus rules as files: promtool checks and unit tests, and every metric the dashboards and
rules name exists in gpuwatch's golden expositions."""

from __future__ import annotations

import re
import subprocess

import queries
import yaml

UNIT_TESTS = sorted((queries.RULES / "tests").glob("*.test.yml"))
ALERTS = [r for r in queries.rules() if "alert" in r]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=queries.RULES, capture_output=True, text=True)


def test_promtool_check_rules(promtool):
    result = run(promtool, "check", "rules", *(str(p) for p in queries.RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool):
    assert UNIT_TESTS
    result = run(promtool, "test", "rules", *(str(p) for p in UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_stays_silent():
    fires, silent = set(), set()
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case["exp_alerts"] else silent).add(case["alertname"])
    names = {a["alert"] for a in ALERTS}
    assert names - fires == set()
    assert names - silent == set()


def test_every_alert_tells_the_person_on_call_what_to_do():
    for alert in ALERTS:
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        summary, description = alert["annotations"]["summary"], alert["annotations"]["description"]
        assert "$labels.instance" in summary + description, alert["alert"]
        assert len(description) > 200, f"{alert['alert']}: say what it means and what to check or do"


def test_rule_names_follow_level_metric_operations():
    for rule in queries.rules():
        if "record" in rule:
            assert re.fullmatch(r"[a-z_]+:gpuwatch_[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]
        else:
            assert re.fullmatch(r"Gpu[A-Za-z]+", rule["alert"]), rule["alert"]


def test_example_prometheus_config_is_valid(promtool):
    result = run(promtool, "check", "config", "prometheus.example.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((queries.RULES / "prometheus.example.yml").read_text())
    assert set(config["rule_files"]) == {p.name for p in queries.RULE_FILES}
    assert [job["job_name"] for job in config["scrape_configs"]] == ["gpuwatch"]


def test_every_metric_a_dashboard_or_rule_names_exists_in_the_golden_metrics():
    known = queries.golden_names() | queries.recorded_names() | queries.PROMETHEUS_SERIES
    for query in queries.all_queries():
        missing = queries.metric_names(query.expr) - known
        assert not missing, f"{query.where}: {sorted(missing)} not in tests/golden/*.prom"
