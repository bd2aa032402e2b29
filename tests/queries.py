"""Every PromQL expression gpuwatch ships: dashboard panels and variables, recording and alert rules.

The static tests (metric names exist in the golden expositions) and the tests against a real
Prometheus (every expression returns data) walk the same list, so neither can miss a panel.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
RULES = ROOT / "prometheus"
RULE_FILES = (RULES / "recording-rules.yml", RULES / "alert-rules.yml")
GOLDEN = ROOT / "tests" / "golden"

# Series Prometheus makes itself rather than scrapes.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS"})

# What a Grafana variable stands for when an expression is sent to Prometheus by a test: every
# host and GPU, and windows that suit a 1 s scrape interval.
GRAFANA_VARIABLES = {
    "instance": ".+",
    "gpu": ".+",
    "source": ".+",
    "job": ".+",
    "__rate_interval": "30s",
    "__interval": "15s",
    "__range": "5m",
}


@dataclass(frozen=True)
class Query:
    """One shipped PromQL expression and where it lives."""

    where: str  # "gpuwatch-host.json: Temperature against its own limits [B]", "record …", "alert …"
    expr: str
    dashboard: str | None = None
    panel: str | None = None


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*\w+\)$")


def dashboard_queries() -> list[Query]:
    queries = []
    for name, dashboard in load_dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                queries.append(
                    Query(f"{name}: {panel['title']} [{target['refId']}]", target["expr"], name, panel["title"])
                )
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                match = _LABEL_VALUES.match(variable["query"])
                assert match, f"{name}: variable {variable['name']}: expected label_values(selector, label)"
                queries.append(Query(f"{name}: variable {variable['name']}", match["selector"], name))
    return queries


@functools.cache
def rules() -> tuple[dict[str, Any], ...]:
    return tuple(
        rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    )


def rule_queries() -> list[Query]:
    return [
        Query(f"record {r['record']}" if "record" in r else f"alert {r['alert']}", r["expr"].strip()) for r in rules()
    ]


def all_queries() -> list[Query]:
    return dashboard_queries() + rule_queries()


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# gpuwatch's own metrics, recording-rule names (level:metric:operations) and the series Prometheus
# makes. A subquery's [1d:5m] never matches: its left side starts with a digit.
_NAME = re.compile(r"(?<![\w:$])(gpuwatch_\w+|[a-zA-Z_]\w*(?::\w+)+|up|ALERTS)(?![\w(])")


def metric_names(expr: str) -> set[str]:
    """The series an expression reads (label values and function names left out)."""
    return set(_NAME.findall(_STRING.sub('""', expr)))


def golden_names() -> set[str]:
    names = set()
    for path in GOLDEN.glob("*.prom"):
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def substitute(expr: str, values: dict[str, str] = GRAFANA_VARIABLES) -> str:
    """Grafana's variables ($name and ${name}) replaced as a test sends the expression."""

    def value(match: re.Match[str]) -> str:
        name = match["braced"] or match["plain"]
        if name not in values:
            raise KeyError(f"no test value for Grafana variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(?P<braced>\w+)\}|\$(?P<plain>\w+)", value, expr)
