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

# The token metrics of issue 4 (token sources), not exported yet on this branch. Expressions that
# need them, directly or through a recording rule, are listed in AWAITING_TOKEN_METRICS; the "exists
# in the golden /metrics" and "returns data" checks skip exactly those, and a test keeps the list
# equal to what the dashboards and rules really contain. Remove both sets once token sources land
# and the golden files carry these metrics: every check then applies to every expression.
TOKEN_METRICS = frozenset(
    {
        "gpuwatch_tokens_total",
        "gpuwatch_source_gpu_info",
        "gpuwatch_tokens_per_joule",
        "gpuwatch_joules_per_token",
        "gpuwatch_source_up",
    }
)
AWAITING_TOKEN_METRICS = frozenset(
    {
        "gpuwatch-host.json: Tokens per joule [A]",
        "gpuwatch-host.json: Joules per token [A]",
        "gpuwatch-host.json: Tokens per second [A]",
        "gpuwatch-host.json: GPUs serving each source [A]",
        "gpuwatch-host.json: GPUs serving each source [B]",
        "gpuwatch-host.json: variable source",
        "gpuwatch-fleet.json: Tokens per joule by source [A]",
        "gpuwatch-fleet.json: Tokens per joule across hosts [A]",
        "gpuwatch-fleet.json: Least efficient hosts [A]",
        "record instance_source:gpuwatch_tokens:rate5m",
        "record instance_source:gpuwatch_gpu_energy_joules:rate5m",
        "record instance_source:gpuwatch_tokens_per_joule:rate5m",
        "record instance_source:gpuwatch_tokens_per_joule:rate5m_busy_median1d",
        "record job_source:gpuwatch_tokens_per_joule:rate5m",
        "alert GpuTokensPerJouleDrop",
    }
)

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

    @property
    def awaiting_token_metrics(self) -> bool:
        return self.where in AWAITING_TOKEN_METRICS


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


def needs_token_metrics(query: Query) -> bool:
    """Whether the expression reads a token metric, directly or through a recording rule."""
    exprs = {r["record"]: r["expr"] for r in rules() if "record" in r}

    def reads(expr: str, seen: frozenset[str]) -> bool:
        names = metric_names(expr)
        if names & TOKEN_METRICS:
            return True
        return any(reads(exprs[n], seen | {n}) for n in names if n in exprs and n not in seen)

    return reads(query.expr, frozenset())


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
