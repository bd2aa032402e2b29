"""Settings for `gpuwatch serve`: a TOML file and flags, merged into one frozen value.

Every flag has a key in the file; a flag given on the command line wins over the file. A bad file
is refused whole, with an error that names the file, the key and the value.

    poll_interval = "1s"          # --poll-interval
    process_interval = "10s"      # --process-interval
    [web]
    listen_address = ":9961"      # --web.listen-address
    [simulate]
    scenario = "inference-host"   # --simulate
    speed = 1.0                   # --sim-speed
    [log]
    level = "info"                # --log.level
    [health]                      # thresholds of the health verdicts (no flags)
    window = "60s"
    sustained_ratio = 0.5
    hw_slowdown_critical_ratio = 0.1
    unexplained_clock_ratio = 0.5
    margin_warning_celsius = 0
    margin_critical_celsius = -2
    critical_xids = [48, 62, 64, 74, 79, 92, 94, 95, 119, 120]
    warning_xids = [63]
    xid_window = "1h"
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gpuwatch.analysis.health import HealthThresholds
from gpuwatch.exporter.web import DEFAULT_LISTEN_ADDRESS, ListenAddressError, parse_listen_address

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A setting that cannot be used; the message says where it came from and what is wrong."""


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Everything `gpuwatch serve` needs to start."""

    listen_address: str = DEFAULT_LISTEN_ADDRESS
    poll_interval_s: float = 1.0
    process_interval_s: float = 10.0
    simulate: str | None = None  # scenario name or path; None reads the real driver
    sim_speed: float = 1.0
    log_level: str = "info"
    health: HealthThresholds = field(default_factory=HealthThresholds)


# file key -> (settings field, parser)
_KEYS: dict[str, tuple[str, str]] = {
    "poll_interval": ("poll_interval_s", "duration"),
    "process_interval": ("process_interval_s", "duration"),
    "web.listen_address": ("listen_address", "listen_address"),
    "simulate.scenario": ("simulate", "string"),
    "simulate.speed": ("sim_speed", "positive"),
    "log.level": ("log_level", "log_level"),
    "health.window": ("health.window_seconds", "duration"),
    "health.sustained_ratio": ("health.sustained_ratio", "ratio"),
    "health.hw_slowdown_critical_ratio": ("health.hw_slowdown_critical_ratio", "ratio"),
    "health.unexplained_clock_ratio": ("health.unexplained_clock_ratio", "ratio"),
    "health.margin_warning_celsius": ("health.margin_warning_celsius", "number"),
    "health.margin_critical_celsius": ("health.margin_critical_celsius", "number"),
    "health.critical_xids": ("health.critical_xids", "xids"),
    "health.warning_xids": ("health.warning_xids", "xids"),
    "health.xid_window": ("health.xid_window_seconds", "duration"),
}
# Every flag has a key; the [health] thresholds are file-only.
FLAG_FOR_KEY = {
    "poll_interval": "--poll-interval",
    "process_interval": "--process-interval",
    "web.listen_address": "--web.listen-address",
    "simulate.scenario": "--simulate",
    "simulate.speed": "--sim-speed",
    "log.level": "--log.level",
}

_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from a Prometheus-style duration ("500ms", "1s", "2m", "1m30s") or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '1s' or '500ms'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        if not _DURATION.match(text):
            raise ValueError("expected a duration such as '1s', '500ms', '2m' or '1m30s'")
        seconds = sum(float(m["n"]) * _UNIT_S[m["unit"]] for m in _DURATION_PART.finditer(text))
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def _convert(kind: str, value: Any) -> Any:
    if kind == "duration":
        return parse_duration(value)
    if kind in ("number", "ratio"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("expected a number")
        if kind == "ratio" and not 0 < value <= 1:
            raise ValueError("expected a fraction greater than 0 and at most 1")
        return float(value)
    if kind == "xids":
        if not isinstance(value, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value
        ):
            raise ValueError("expected a list of Xid numbers, e.g. [48, 79]")
        return tuple(value)
    if kind == "positive":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError("expected a number")
        number = float(value)
        if number <= 0:
            raise ValueError("must be greater than zero")
        return number
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    if kind == "listen_address":
        try:
            parse_listen_address(value)
        except ListenAddressError as exc:
            raise ValueError(str(exc)) from exc
    if kind == "log_level" and value.lower() not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return value.lower() if kind == "log_level" else value


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a config file into ``{settings field: value}``; raises :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror or exc}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from exc
    values: dict[str, Any] = {}
    for key, value in _flatten(doc).items():
        if key not in _KEYS:
            raise ConfigError(f"config file {path}: unknown key {key!r} (known keys: {', '.join(_KEYS)})")
        field_name, kind = _KEYS[key]
        try:
            values[field_name] = _convert(kind, value)
        except ValueError as exc:
            raise ConfigError(f"config file {path}: key {key!r}: value {value!r}: {exc}") from exc
    return values


def build(file_values: Mapping[str, Any], flag_values: Mapping[str, Any]) -> ServeSettings:
    """Defaults, overridden by the file, overridden by flags given on the command line."""
    known = {f.name for f in fields(ServeSettings)}
    merged = {k: v for k, v in {**file_values, **flag_values}.items() if k in known}
    health = {k.removeprefix("health."): v for k, v in file_values.items() if k.startswith("health.")}
    return replace(ServeSettings(), **merged, health=replace(HealthThresholds(), **health))
