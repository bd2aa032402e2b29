"""Settings for `gpuwatch serve`: a TOML file, environment variables and flags, merged into one
frozen value.

Every flag has a key in the file and an environment variable (``GPUWATCH_`` and the key in capitals
with dots as underscores: ``web.listen_address`` is ``GPUWATCH_WEB_LISTEN_ADDRESS``). Precedence:
defaults, then the file, then the environment, then flags given on the command line. A bad file is
refused whole, with an error that names the file (or variable), the key and the value.

    poll_interval = "1s"          # --poll-interval
    process_interval = "10s"      # --process-interval
    tokens_window = "60s"         # --tokens-window: the tokens-per-joule window (10 s or more)
    xid_log = "auto"              # --xid-log: kernel-log Xids from kmsg, journal, a file, or off
    [web]
    listen_address = ":9961"      # --web.listen-address
    config_file = "web.yml"       # --web.config.file (TLS, basic auth; relative to this file)
    max_requests = 40             # --web.max-requests
    read_timeout = "10s"          # --web.read-timeout
    tuner_result = "tune.json"    # --web.tuner-result: a power-limit tuner result for the page at /
    [simulate]
    scenario = "inference-host"   # --simulate
    speed = 1.0                   # --sim-speed
    [log]
    level = "info"                # --log.level
    [[tokens]]                    # --tokens URL: an inference server to count tokens from
    url = "http://127.0.0.1:8000/metrics"
    preset = "vllm"               # or auto; more keys in gpuwatch/tokens/source.py and the README
    gpus = "auto"
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
    [collectors]                  # --collector.NAME / --no-collector.NAME (README "Collectors")
    disable_defaults = false      # --collector.disable-defaults: only the collectors named here run
    lean_set = false              # --collector.lean-set: at most 30 series per GPU
    pcie = true                   # --collector.pcie
    [collectors.processes]        # the process collector: its switch (or `processes = true` above) and option
    enabled = true
    pid = true                    # --no-collector.processes.pid: no pid label, memory summed per name and user
    [kubernetes]                  # pod attribution (the pods collector), on a real host
    pod_resources_socket = "/var/lib/kubelet/pod-resources/kubelet.sock"  # --kubernetes.pod-resources-socket
    refresh_interval = "30s"      # --kubernetes.refresh-interval
    [cost]                        # prices for gpuwatch_source_cost_per_million_tokens (no flags)
    energy_price_per_kwh = 0.30   # at the meter; without it (and gpu_hour_price) no cost series
    pue = 1.0                     # power usage effectiveness of the room, 1 or more
    gpu_hour_price = 2.40         # optional: rent or depreciation per GPU-hour
    currency = "USD"              # ISO 4217 code, a label value (nothing is converted)
"""

from __future__ import annotations

import codecs
import difflib
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gpuwatch import collectors as collector_switches
from gpuwatch.analysis.efficiency import DEFAULT_WINDOW_S, MIN_WINDOW_S
from gpuwatch.analysis.health import HealthThresholds
from gpuwatch.analysis.ledger import CostSettings
from gpuwatch.collectors import CollectorSettings
from gpuwatch.exporter.address import (
    DEFAULT_LISTEN_ADDRESS,
    DEFAULT_MAX_REQUESTS,
    DEFAULT_READ_TIMEOUT_S,
    Limits,
    ListenAddressError,
    parse_listen_address,
)
from gpuwatch.k8s.podresources import DEFAULT_SOCKET as DEFAULT_POD_RESOURCES_SOCKET
from gpuwatch.k8s.pods import DEFAULT_REFRESH_S as DEFAULT_PODS_REFRESH_S
from gpuwatch.labels import utf8_text
from gpuwatch.tokens import source

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
    web_config_file: str | None = None  # exporter-toolkit YAML: TLS, mTLS, basic auth
    max_requests: int = DEFAULT_MAX_REQUESTS
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    health: HealthThresholds = field(default_factory=HealthThresholds)
    tokens: tuple[source.SourceConfig, ...] = ()
    tokens_window_s: float = DEFAULT_WINDOW_S
    # the live page: a `gpuwatch tune power-limit --json` result to draw (gpuwatch/page/tuner.py)
    tuner_result_file: str | None = None
    collectors: CollectorSettings = field(default_factory=CollectorSettings)
    pod_resources_socket: str = DEFAULT_POD_RESOURCES_SOCKET
    pods_refresh_s: float = DEFAULT_PODS_REFRESH_S
    cost: CostSettings = field(default_factory=CostSettings)  # [cost]
    xid_log: str = "auto"  # gpuwatch.xidlog: auto, kmsg, journal, off or a file path

    @property
    def limits(self) -> Limits:
        return Limits(max_requests=self.max_requests, read_timeout_s=self.read_timeout_s)


# file key -> (settings field, parser, lowest, highest)
_KEYS: dict[str, tuple[str, str, float, float]] = {
    "poll_interval": ("poll_interval_s", "duration", 0.01, 3600),
    "process_interval": ("process_interval_s", "duration", 0.1, 86400),
    "web.listen_address": ("listen_address", "listen_address", 0, 0),
    "web.config_file": ("web_config_file", "path", 0, 0),
    "web.max_requests": ("max_requests", "integer", 1, 1024),
    "web.read_timeout": ("read_timeout_s", "duration", 0.1, 300),
    "simulate.scenario": ("simulate", "string", 0, 0),
    "simulate.speed": ("sim_speed", "positive", 0, 1e6),
    "log.level": ("log_level", "log_level", 0, 0),
    "tokens": ("tokens", "tokens", 0, 0),
    "tokens_window": ("tokens_window_s", "duration", MIN_WINDOW_S, 86400),
    "health.window": ("health.window_seconds", "duration", 1, 86400),
    "health.sustained_ratio": ("health.sustained_ratio", "ratio", 0, 1),
    "health.hw_slowdown_critical_ratio": ("health.hw_slowdown_critical_ratio", "ratio", 0, 1),
    "health.unexplained_clock_ratio": ("health.unexplained_clock_ratio", "ratio", 0, 1),
    "health.margin_warning_celsius": ("health.margin_warning_celsius", "number", -50, 50),
    "health.margin_critical_celsius": ("health.margin_critical_celsius", "number", -50, 50),
    "health.critical_xids": ("health.critical_xids", "xids", 0, 0),
    "health.warning_xids": ("health.warning_xids", "xids", 0, 0),
    "health.xid_window": ("health.xid_window_seconds", "duration", 1, 30 * 86400),
    # the live page
    "web.tuner_result": ("tuner_result_file", "path", 0, 0),
    # [cost]: file and environment only, applied on SIGHUP (analysis/ledger.py)
    "cost.energy_price_per_kwh": ("cost.energy_price_per_kwh", "number", 0, 1e6),
    "cost.pue": ("cost.pue", "number", 1, 10),
    "cost.gpu_hour_price": ("cost.gpu_hour_price", "number", 0, 1e6),
    "cost.currency": ("cost.currency", "currency", 0, 0),
    "xid_log": ("xid_log", "string", 0, 0),
}
# Every flag has a key; the [health] thresholds are file-only.
FLAG_FOR_KEY = {
    "poll_interval": "--poll-interval",
    "process_interval": "--process-interval",
    "web.listen_address": "--web.listen-address",
    "web.config_file": "--web.config.file",
    "web.max_requests": "--web.max-requests",
    "web.read_timeout": "--web.read-timeout",
    "simulate.scenario": "--simulate",
    "simulate.speed": "--sim-speed",
    "log.level": "--log.level",
    "tokens": "--tokens",
    "tokens_window": "--tokens-window",
    "web.tuner_result": "--web.tuner-result",
    "xid_log": "--xid-log",
}
# [collectors]: a switch per collector (`collectors.processes`, or `collectors.processes.enabled`
# inside a [collectors.processes] table), `collectors.disable_defaults` and `collectors.processes.pid`;
# flags in gpuwatch/cli.py (`--collector.NAME`), reloaded on SIGHUP.
_KEYS.update({f"collectors.{key}": (f"collectors.{key}", "bool", 0, 0) for key in collector_switches.config_keys()})
FLAG_FOR_KEY.update(
    {f"collectors.{key}": collector_switches.flag_for_key(key) for key in collector_switches.config_keys()}
)
# [kubernetes]: pod attribution (gpuwatch/k8s/); a change takes a restart.
_KEYS.update(
    {
        "kubernetes.pod_resources_socket": ("pod_resources_socket", "string", 0, 0),
        "kubernetes.refresh_interval": ("pods_refresh_s", "duration", 1, 86400),
    }
)
FLAG_FOR_KEY.update(
    {
        "kubernetes.pod_resources_socket": "--kubernetes.pod-resources-socket",
        "kubernetes.refresh_interval": "--kubernetes.refresh-interval",
    }
)
# Changing these needs a restart; everything else is applied on SIGHUP.
# (the live page's routes are built once, so its tuner_result_file path too; the file is re-read when it changes)
RESTART_FIELDS = (
    "listen_address",
    "max_requests",
    "read_timeout_s",
    "simulate",
    "sim_speed",
    "tokens",
    "tuner_result_file",
    "pod_resources_socket",
    "pods_refresh_s",
    "xid_log",
)
ENV_PREFIX = "GPUWATCH_"


def env_name(key: str) -> str:
    """The environment variable for a file key: ``web.listen_address`` -> ``GPUWATCH_WEB_LISTEN_ADDRESS``."""
    return ENV_PREFIX + key.replace(".", "_").upper()


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


def _convert(key: str, value: Any) -> Any:
    _, kind, lowest, highest = _KEYS[key]
    if kind in ("number", "ratio"):
        number = _real(value)
        if kind == "ratio" and not 0 < number <= 1:
            raise ValueError("expected a fraction greater than 0 and at most 1")
        if not lowest <= number <= highest:
            raise ValueError(f"out of range: must be between {lowest:g} and {highest:g}")
        return number
    if kind == "xids":
        return _xids(value)
    if kind == "tokens":
        return _token_sources(value)
    if kind == "bool":
        return _bool(value)
    if kind in ("duration", "positive", "integer"):
        number = _number(kind, value)
        if not lowest <= number <= highest:
            unit = " s" if kind == "duration" else ""
            raise ValueError(f"out of range: must be between {lowest:g}{unit} and {highest:g}{unit}")
        return number
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    if kind == "listen_address":
        try:
            parse_listen_address(value)
        except ListenAddressError as exc:
            raise ValueError(str(exc)) from exc
    if kind == "currency" and not re.fullmatch(r"[A-Z]{3}", value):
        raise ValueError("expected an ISO 4217 currency code in capitals, e.g. 'USD' or 'EUR'")
    if kind == "log_level" and value.lower() not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return value.lower() if kind == "log_level" else value


def _real(value: Any) -> float:
    """Any real number (the environment gives strings)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("expected a number")
    try:
        return float(value)
    except ValueError:
        raise ValueError("expected a number") from None


def _bool(value: Any) -> bool:
    """true or false: a TOML boolean, or "true"/"false" (also 1/0, yes/no) from the environment."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise ValueError("expected true or false")


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _xids(value: Any) -> tuple[int, ...]:
    """A list of Xid numbers: a TOML array of integers, or "48,79" from the environment."""
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        items: list[Any] = [int(part) if part.isdigit() else part for part in parts]
    else:
        items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in items):
        raise ValueError("expected a list of Xid numbers, e.g. [48, 79]")
    return tuple(items)


def _token_sources(value: Any) -> tuple[source.SourceConfig, ...]:
    """``[[tokens]]`` tables from the file, or comma-separated URLs from the environment or flags."""
    if isinstance(value, str):
        urls = [url.strip() for url in value.split(",") if url.strip()]
        sources = tuple(source.from_url(url) for url in urls)
    elif isinstance(value, list | tuple) and all(isinstance(t, source.SourceConfig) for t in value):
        sources = tuple(value)
    elif isinstance(value, list) and all(isinstance(t, dict) for t in value):
        parsed = []
        for n, table in enumerate(value, start=1):
            try:
                parsed.append(source.from_table(table, parse_duration))
            except KeyError as exc:
                key, message = exc.args
                raise ValueError(f"[[tokens]] table {n}: key {key!r}: {message}") from None
        sources = tuple(parsed)
    else:
        raise ValueError("expected [[tokens]] tables, each with a url")
    names = [s.name for s in sources]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two token sources are named {twice[0]!r}; give each a distinct name")
    return sources


def _number(kind: str, value: Any) -> float | int:
    if kind == "duration":
        return parse_duration(value)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("expected an integer" if kind == "integer" else "expected a number")
    try:
        number = int(value) if kind == "integer" else float(value)
    except ValueError:
        raise ValueError("expected an integer" if kind == "integer" else "expected a number") from None
    if kind == "integer" and isinstance(value, float):
        raise ValueError("expected an integer")
    if number <= 0:
        raise ValueError("must be greater than zero")
    return number


def _flatten(table: Mapping[str, Any], prefix: str = "", depth: int = 1) -> dict[str, Any]:
    """``{"web": {"listen_address": v}}`` as ``{"web.listen_address": v}``. No key is deeper than
    :data:`_KEY_DEPTH`: a table below that is left whole, an unknown key, not recursed into."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth < _KEY_DEPTH:
            flat.update(_flatten(value, f"{name}.", depth + 1))
        else:
            flat[name] = value
    return flat


_KEY_DEPTH = max(key.count(".") for key in _KEYS) + 2  # one more than any key, so a deeper one is named


MAX_FILE_BYTES = 1 << 20  # a config file is a few kB; anything near this is not one
MAX_NESTING = 32  # tables and arrays inside each other; gpuwatch's own keys go three deep


def read_text_file(path: Path, what: str) -> str:
    """A small regular file's text, strict UTF-8 without a byte order mark; raises :class:`ConfigError`.

    Never blocks: the file is opened non-blocking, so a FIFO (or a device) in its place is refused
    at once instead of waiting for a writer, and only a regular file is read. Read whole and
    decoded strictly, so a Latin-1 byte names its line and column instead of raising later.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it: {exc.strerror or exc}") from exc
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind != stat.S_IFREG:
            raise ConfigError(f"{what} {path}: not a regular file ({_FILE_KINDS.get(kind, 'a special file')})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{what} {path}: larger than {MAX_FILE_BYTES // 1024} KiB; not a config file")
    if raw.startswith(codecs.BOM_UTF8):
        raise ConfigError(f"{what} {path}: starts with a byte order mark (BOM); save it as UTF-8 without one")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = raw[exc.start]
        raise ConfigError(
            f"{what} {path}: not UTF-8: byte 0x{byte:02x} at line {line}, column {column} (save the file as UTF-8)"
        ) from None


_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _nesting(text: str) -> int:
    """How deep brackets and braces nest (strings included: an overestimate, which is safe).
    Checked before parsing: tomllib recurses once per level and fails with RecursionError."""
    deepest = depth = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a config file into ``{settings field: value}``; raises :class:`ConfigError`."""
    path = Path(path)
    text = read_text_file(path, "config file")
    if _nesting(text) > MAX_NESTING:
        raise ConfigError(f"config file {path}: arrays or tables nested more than {MAX_NESTING} deep")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from exc
    values: dict[str, Any] = {}
    for key, value in _flatten(doc).items():
        if key.startswith("collectors.") and key not in _KEYS:  # a collector this gpuwatch does not have
            name = key.removeprefix("collectors.").removesuffix(".enabled")
            raise ConfigError(
                f"config file {path}: key {key!r}: value {value!r}: {collector_switches.unknown_collector(name)}"
            )
        if key not in _KEYS:
            raise ConfigError(f"config file {path}: unknown key {key!r} (known keys: {', '.join(_KEYS)})")
        try:
            values[_KEYS[key][0]] = _convert(key, value)
        except (ValueError, TypeError) as exc:
            shown = "" if key == "tokens" else f" value {value!r}:"  # the tables are long; the error names the key
            raise ConfigError(f"config file {path}: key {key!r}:{shown} {exc}") from exc
    if isinstance(values.get("web_config_file"), str):
        values["web_config_file"] = str(path.parent / values["web_config_file"])  # relative to this file
    if isinstance(values.get("tuner_result_file"), str):
        values["tuner_result_file"] = str(path.parent / values["tuner_result_file"])
    return values


def load_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``{settings field: value}`` from ``GPUWATCH_*`` variables; raises :class:`ConfigError` for a
    bad value, a value that is not UTF-8, or an unknown variable that is a close misspelling of a
    known one (:func:`misspelt`). Any other unknown variable is left alone (:func:`ignored_env`)."""
    names = {env_name(key): key for key in _KEYS}
    values: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS:
            continue
        key = names.get(name)
        if key is None:
            meant = misspelt(name)
            if meant is not None:
                raise ConfigError(f"environment variable {name}: unknown; did you mean {meant}?")
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # os.environ holds undecodable bytes as surrogates
            raise ConfigError(f"environment variable {name}: value {utf8_text(value)!r} is not UTF-8") from None
        try:
            values[_KEYS[key][0]] = _convert(key, value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"environment variable {name} (key {key!r}): value {value!r}: {exc}") from exc
    return values


# GPUWATCH_* variables that are not settings: the config file path (--config) and the unit's
# extra flags (systemd's EnvironmentFile).
_NOT_SETTINGS = {"GPUWATCH_CONFIG", "GPUWATCH_OPTS"}
_MISSPELT_RATIO = 0.8  # difflib similarity of the part after GPUWATCH_: POLL_INTEVRAL is 0.92 of POLL_INTERVAL


def misspelt(name: str) -> str | None:
    """The known ``GPUWATCH_*`` variable that an unknown ``name`` most likely misspells, if any.

    Compared without the shared prefix, which would make every pair look alike; a typo such as
    ``GPUWATCH_POLL_INTEVRAL`` is one, ``GPUWATCH_TEST_CACHE`` (some other tool's) is not.
    """
    known = {n.removeprefix(ENV_PREFIX): n for n in [*map(env_name, _KEYS), *_NOT_SETTINGS]}
    close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), known, n=1, cutoff=_MISSPELT_RATIO)
    return known[close[0]] if close else None


def ignored_env(environ: Mapping[str, str]) -> list[str]:
    """The ``GPUWATCH_*`` variables that gpuwatch does not know and does not take for a misspelling:
    `serve` and `check-config` name each in a warning and go on."""
    known = {*map(env_name, _KEYS), *_NOT_SETTINGS}
    return sorted(n for n in environ if n.startswith(ENV_PREFIX) and n not in known and misspelt(n) is None)


def build(
    file_values: Mapping[str, Any], flag_values: Mapping[str, Any], env_values: Mapping[str, Any] | None = None
) -> ServeSettings:
    """Defaults, overridden by the file, the environment, then flags given on the command line."""
    known = {f.name for f in fields(ServeSettings)}
    layers = [_one_name_per_switch(values) for values in (file_values, env_values or {}, flag_values)]
    layered = {k: v for layer in layers for k, v in layer.items()}
    merged = {k: v for k, v in layered.items() if k in known}
    health = {k.removeprefix("health."): v for k, v in layered.items() if k.startswith("health.")}
    switches = {k.removeprefix("collectors."): v for k, v in layered.items() if k.startswith("collectors.")}
    cost = {k.removeprefix("cost."): v for k, v in layered.items() if k.startswith("cost.")}
    return replace(
        ServeSettings(),
        **merged,
        health=replace(HealthThresholds(), **health),
        collectors=CollectorSettings.from_keys(switches),
        cost=CostSettings(**cost),
    )


def _one_name_per_switch(values: Mapping[str, Any]) -> dict[str, Any]:
    """``collectors.NAME.enabled`` (inside a ``[collectors.NAME]`` table) as ``collectors.NAME``, so
    that a later layer overrides an earlier one whichever of the two spellings each uses."""
    prefix = "collectors."
    return {
        (prefix + collector_switches.switch_name(k[len(prefix) :]) if k.startswith(prefix) else k): v
        for k, v in values.items()
    }


def load(config_file: str | None, flag_values: Mapping[str, Any], environ: Mapping[str, str]) -> ServeSettings:
    """Everything at once, as `serve`, `check-config` and a SIGHUP reload do; raises :class:`ConfigError`."""
    file_values = load_file(config_file) if config_file else {}
    for key, flag in FLAG_FOR_KEY.items():  # flags were parsed by click; the same ranges hold
        value = flag_values.get(field_for_key(key))
        if isinstance(value, int | float) and _KEYS[key][1] in ("duration", "positive", "integer"):
            try:
                _convert(key, value)
            except ValueError as exc:
                raise ConfigError(f"flag {flag} (key {key!r}): value {value!r}: {exc}") from exc
    return build(file_values, flag_values, load_env(environ))


def field_for_key(key: str) -> str:
    """The :class:`ServeSettings` field a file key sets."""
    return _KEYS[key][0]


def key_for_field(field_name: str) -> str:
    """The file key that sets a :class:`ServeSettings` field."""
    return next(key for key, spec in _KEYS.items() if spec[0] == field_name)
