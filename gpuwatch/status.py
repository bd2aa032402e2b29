"""What `gpuwatch status` and the daemon's ``/status`` show: one JSON document, and a table of it.

The daemon serves :func:`to_document` of its latest snapshot; `gpuwatch status` renders the same
document whether it came over HTTP or from sampling NVML in-process, so both paths print alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from gpuwatch import __version__
from gpuwatch.labels import EXIT_CODES
from gpuwatch.model import GpuStatus, LoadedModel, Snapshot, SourceStatus

SCHEMA_VERSION = 1


def to_document(
    snapshot: Snapshot,
    age_s: float | None = None,
    poll_interval_s: float | None = None,
    stale_after_s: float | None = None,
) -> dict[str, Any]:
    """The ``/status`` JSON document of a snapshot (SI units, ``null`` where not reported).

    ``age_s``: wall seconds since the poll was published; past ``stale_after_s`` the data is
    stale and the host verdict is ``unknown`` (the GPUs keep their last verdicts).
    """
    verdict, reasons = snapshot.verdict.state, list(snapshot.verdict.reasons)
    if age_s is not None and stale_after_s is not None and age_s > stale_after_s:
        verdict = "unknown"
        reasons.insert(
            0, f"no poll for {age_s:.1f} s (stale after {stale_after_s:g} s): the poll loop is stuck or starved"
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "gpuwatch_version": __version__,
        "timestamp": snapshot.timestamp,
        "age_seconds": age_s,
        "poll_interval_seconds": poll_interval_s,
        "stale_after_seconds": stale_after_s,
        "nvml_up": snapshot.nvml_up,
        "nvml_error": snapshot.nvml_error,
        "driver_version": snapshot.driver_version,
        "cuda_driver_version": snapshot.cuda_driver_version,
        "verdict": verdict,
        "reasons": reasons,
        "gpus": [_gpu(status) for status in snapshot.gpus],
        "sources": [_source(source) for source in snapshot.sources],
    }


# -- text from elsewhere ----------------------------------------------------------------------------

# scheme://user:password@ -> scheme://user:xxxxx@ (as Prometheus shows a secret)
_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/?#@:]*):[^\s/?#]*@")  # to the last @, as urlsplit
# C0 and C1 controls, DEL, and the format characters that reorder or hide text (bidi overrides,
# zero-width marks), as well as line and paragraph separators
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it replaced by ``xxxxx``."""
    return _CREDENTIALS.sub(r"\1:xxxxx@", text)


def clean_text(text: str) -> str:
    """Text from another process or server, safe to print: passwords in URLs redacted, control and
    reordering characters shown as escapes (``\\x1b``), so none reaches a terminal."""
    return _UNPRINTABLE.sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", redact(text)
    )


def clean(value: Any) -> Any:
    """A ``/status`` document (or any JSON value) with every string, key or value, :func:`clean_text`-ed."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def _source(source: SourceStatus) -> dict[str, Any]:
    efficiency = source.efficiency
    return {
        "name": source.name,
        "url": source.url,
        "up": source.up,
        "error": source.error,
        "preset": source.preset,
        "gpus": list(source.gpus),
        "gpus_from": source.gpus_from,
        "tokens_total": dict(source.tokens_total),
        # Generated tokens per joule over the window; null until a window is complete.
        "tokens_per_joule": None if efficiency is None else efficiency.tokens_per_joule.get("generation"),
        "window_seconds": None if efficiency is None else efficiency.window_seconds,
        "tokens_per_joule_by_kind": {} if efficiency is None else dict(efficiency.tokens_per_joule),
        "joules_per_token_by_kind": {} if efficiency is None else dict(efficiency.joules_per_token),
        # the energy ledger since gpuwatch started (null until the source's GPUs gave energy) and,
        # with [cost] prices, the price per million tokens by kind over the window
        "energy_joules_total": None if source.ledger is None else source.ledger.energy_joules,
        "idle_seconds_total": None if source.ledger is None else source.ledger.idle_seconds,
        "idle_joules_total": None if source.ledger is None else source.ledger.idle_joules,
        "cost_per_million_tokens_by_kind": dict(source.cost_per_million_tokens),
        "cost_total_by_currency": {} if source.ledger is None else dict(source.ledger.spent),
        "currency": source.currency,
        "models": [_model(m) for m in source.models],  # loaded, as the server lists them (Ollama's /api/ps)
    }


def _model(model: LoadedModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "size_bytes": model.size_bytes,
        "vram_bytes": model.vram_bytes,
        "context_length": model.context_length,
    }


def _gpu(status: GpuStatus) -> dict[str, Any]:
    g, r = status.identity, status.reading
    thresholds = dict(status.temperature_thresholds_celsius or g.temperature_thresholds_celsius)
    doc: dict[str, Any] = {
        "index": g.index,
        "uuid": g.uuid,
        "name": g.name,
        "pci_bus_id": g.pci_bus_id,
        "serial": g.serial,  # the board serial, for an RMA; null where the card has none (GeForce)
        "up": status.up,
        "error": status.error,
        "stale_since": status.stale_since,
        "verdict": status.verdict.state,
        "reasons": list(status.verdict.reasons),
        "checks": dict(status.verdict.checks),
        "throttle_class": None if status.throttle is None else status.throttle.dominant,
        "throttle_ratios": {} if status.throttle is None else {c: r for c, r in status.throttle.ratios.items() if r},
        "clock_loss_ratio": None if status.throttle is None else status.throttle.clock_loss_ratio,
        "xid_errors": {str(x): n for x, n in sorted(status.xid_errors.items())},
        "recent_xids": [{"timestamp": ts, "xid": x} for ts, x in status.recent_xids],
        "xid_actions": {str(x): action for x, action in sorted(status.xid_actions.items())},
        "temperature_celsius": None,
        "temperature_limit_celsius": thresholds.get("max_operating"),
        "temperature_thresholds_celsius": thresholds,
        "temperature_tlimit_celsius": dict(g.temperature_tlimit_celsius),
        "temperature_reference": status.temperature_reference,
        "temperature_margin_celsius": None,
        "power_watts": None,
        "power_limit_watts": None,
        "energy_joules_total": status.energy_joules_total,
        "sm_clock_hertz": None,
        "sm_clock_max_hertz": g.max_clocks_hertz.get("sm"),
        "utilization_ratio": {},
        "memory_used_bytes": None,
        "memory_size_bytes": g.memory_size_bytes,
        "ecc_enabled": g.ecc_enabled,
        "ecc_errors": {},
        "row_remap_pending": None,
        "row_remap_failure": None,
        "clock_event_reasons": [],
        "processes": [
            {"pid": p.pid, "name": p.name, "user": p.user, "used_memory_bytes": p.used_memory_bytes}
            for p in status.processes
        ],
        # GPM (Hopper and newer): sm_active, tensor_active, dram_active, … over the last poll; MIG devices
        "activity_ratio": {},
        "mig_instances": [],
    }
    if r is not None:
        doc.update(
            temperature_celsius=r.temperature_celsius,
            temperature_margin_celsius=status.temperature_margin_celsius,
            power_watts=r.power_watts,
            power_limit_watts=r.power_limit_watts,
            sm_clock_hertz=r.clocks_hertz.get("sm"),
            utilization_ratio=dict(r.utilization_ratio),
            memory_used_bytes=r.memory_used_bytes,
            ecc_errors={f"{kind}_{scope}": n for (kind, scope), n in sorted(r.ecc_errors.items())},
            row_remap_pending=r.row_remap_pending,
            row_remap_failure=r.row_remap_failure,
            clock_event_reasons=sorted(r.clock_event_reasons or ()),
            activity_ratio=dict(r.activity_ratio),
            mig_instances=[
                {
                    "index": m.index,
                    "uuid": m.uuid,
                    "profile": m.profile,
                    "gpu_instance_id": m.gpu_instance_id,
                    "compute_instance_id": m.compute_instance_id,
                    "memory_used_bytes": m.memory_used_bytes,
                    "memory_size_bytes": m.memory_size_bytes,
                    "activity_ratio": dict(m.activity_ratio),
                    "processes": m.processes,
                }
                for m in r.mig_instances
            ],
        )
    return doc


# -- the table ----------------------------------------------------------------------------------


_COLUMNS = (
    "GPU",
    "NAME",
    "VERDICT",
    "TEMP/LIMIT",
    "POWER/CAP",
    "SM CLOCK/MAX",
    "VRAM USED/SIZE",
    "ECC",
    "THROTTLE",
    "BUSY",
    "REASONS",
)
_COLOURS = {"ok": "32", "warning": "33", "critical": "31", "unknown": "35"}


def exit_code(doc: dict[str, Any]) -> int:
    """The Nagios exit code of a ``/status`` document."""
    return EXIT_CODES.get(doc.get("verdict") or "unknown", 3)


def _paint(text: str, state: str | None, colour: bool) -> str:
    code = _COLOURS.get(state or "")
    return f"\033[{code}m{text}\033[0m" if colour and code else text


def render_table(doc: dict[str, Any], colour: bool = False) -> str:
    """The host verdict, then a fixed-width table with one row per GPU, from a ``/status`` document."""
    verdict = doc.get("verdict") or "unknown"
    reasons = "; ".join(doc.get("reasons") or [])
    lines = [_paint(verdict.upper(), verdict, colour) + (f": {reasons}" if reasons else "")]
    header = f"gpuwatch {doc.get('gpuwatch_version', '')}"
    if doc.get("driver_version"):
        header += f" · driver {doc['driver_version']}"
        if doc.get("cuda_driver_version"):
            header += f" · CUDA {doc['cuda_driver_version']}"
    if not doc.get("nvml_up"):
        header += f" · NVML down: {doc.get('nvml_error') or 'unknown error'}"
    if doc.get("age_seconds") is not None:
        header += f" · data {doc['age_seconds']:.1f} s old"
    lines.append(header)
    rows = [list(_COLUMNS)] + [_row(gpu) for gpu in doc.get("gpus", [])]
    verdicts = [None] + [gpu.get("verdict") for gpu in doc.get("gpus", [])]
    lines.extend(_columns(rows, lambda n, i, cell: _paint(cell, verdicts[n], colour) if n and i == 2 else cell))
    if doc.get("sources"):
        lines.append("")
        lines.extend(_columns([list(_SOURCE_COLUMNS)] + [_source_row(s) for s in doc["sources"]]))
        ledgers = [s for s in doc["sources"] if s.get("energy_joules_total") is not None]
        if ledgers:
            lines.append("")
            lines.extend(_columns([list(_LEDGER_COLUMNS)] + [_ledger_row(s) for s in ledgers]))
    return "\n".join(lines)


_SOURCE_COLUMNS = ("SOURCE", "GPUS", "UP", "TOKENS/J", "J/TOKEN", "WINDOW", "NOTE")


def _columns(rows: list[list[str]], paint: Callable[[int, int, str], str] = lambda n, i, cell: cell) -> list[str]:
    """Rows as left-aligned columns; ``paint(row, column, padded cell)`` may colour a cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(paint(n, i, cell.ljust(widths[i])) for i, cell in enumerate(row)).rstrip()
        for n, row in enumerate(rows)
    ]


def _source_row(source: dict[str, Any]) -> list[str]:
    gpus = ",".join(map(str, source.get("gpus") or [])) or "?"
    if source.get("gpus_from") == "auto":
        gpus += " (auto)"
    per_token = (source.get("joules_per_token_by_kind") or {}).get("generation")
    window = source.get("window_seconds")
    if not source.get("up"):
        note = source.get("error") or "down"
    elif source.get("tokens_per_joule") is None:
        note = "window not complete yet" if source.get("gpus") else "looking for its GPUs"
    else:
        note = f"{source.get('preset') or ''} {source.get('url')}".strip()
    note += _models_note(source)
    return [
        source["name"],
        gpus,
        "yes" if source.get("up") else "no",
        "n/a" if source.get("tokens_per_joule") is None else f"{source['tokens_per_joule']:.3g}",
        "n/a" if per_token is None else f"{per_token:.3g}",
        "n/a" if window is None else f"{window:.0f} s",
        note,
    ]


_LEDGER_COLUMNS = ("SOURCE", "ENERGY", "IDLE", "IDLE ENERGY", "J/GEN TOKEN", "J/TOKEN", "COST/M GEN", "COST/M TOKENS")


def _ledger_row(source: dict[str, Any]) -> list[str]:
    """A source's energy ledger: energy and idle since gpuwatch started, per token and cost over the window."""
    per_token = source.get("joules_per_token_by_kind") or {}
    cost = source.get("cost_per_million_tokens_by_kind") or {}
    currency = source.get("currency") or ""

    def price(kind: str) -> str:
        return "n/a" if cost.get(kind) is None else f"{cost[kind]:.3g} {currency}".strip()

    def joules(kind: str) -> str:
        return "n/a" if per_token.get(kind) is None else f"{per_token[kind]:.3g} J"

    return [
        source["name"],
        _energy(source["energy_joules_total"]),
        f"{source.get('idle_seconds_total') or 0:.0f} s",
        _energy(source.get("idle_joules_total") or 0.0),
        joules("generation"),
        joules("total"),
        price("generation"),
        price("total"),
    ]


def _energy(joules: float) -> str:
    """Joules as an operator reads them: J, kJ, then kWh."""
    if joules < 1e4:
        return f"{joules:.0f} J"
    if joules < 3.6e6:
        return f"{joules / 1e3:.1f} kJ"
    return f"{joules / 3.6e6:.2f} kWh"


def _models_note(source: dict[str, Any]) -> str:
    """The loaded models (Ollama's), and why an Ollama source has no tokens per joule without its proxy."""
    models = source.get("models") or []
    shown = ", ".join(
        f"{m.get('name')} ({_num(m.get('vram_bytes'), 2**30, 1)} of {_num(m.get('size_bytes'), 2**30, 1)} GiB in VRAM)"
        for m in models[:3]
    )
    note = f"; models {shown}{' …' if len(models) > 3 else ''}" if models else ""
    if source.get("preset") == "ollama" and source.get("up") and not source.get("tokens_total"):
        note += "; no token counts: set listen in its [[tokens]] table to count through the proxy"
    return note


def _row(gpu: dict[str, Any]) -> list[str]:
    index = str(gpu["index"])
    verdict = gpu.get("verdict") or "unknown"
    prefix = f"GPU {gpu['index']}: "
    reasons = "; ".join(r.removeprefix(prefix) for r in gpu.get("reasons") or [])
    if not gpu["up"] and gpu.get("stale_since") is None:  # a stale GPU shows its last values
        return [index, gpu["name"] or "?", verdict, "", "", "", "", "", "", "", reasons or "not answering"]
    temp = _pair(gpu["temperature_celsius"], gpu["temperature_limit_celsius"], "°C", 1)
    if gpu["temperature_limit_celsius"] is None and gpu["temperature_margin_celsius"] is not None:
        temp = f"{_num(gpu['temperature_celsius'], 1)}°C ({gpu['temperature_margin_celsius']:.0f} left)"
    return [
        index,
        gpu["name"],
        verdict,
        temp,
        _pair(gpu["power_watts"], gpu["power_limit_watts"], " W", 1),
        _pair(gpu["sm_clock_hertz"], gpu["sm_clock_max_hertz"], " MHz", 1e6),
        _pair(gpu["memory_used_bytes"], gpu["memory_size_bytes"], " GiB", 2**30, decimals=1),
        _ecc(gpu),
        gpu.get("throttle_class") or "n/a",
        busy(gpu),
        reasons,
    ]


def busy(gpu: dict[str, Any]) -> str:
    """``util 100 %, SM active 38 %``: NVML's utilization beside GPM's SM active where the GPU has GPM;
    under MIG, SM active per instance (``MIG SM active 40/95/12/0 %``)."""
    parts = []
    utilization = (gpu.get("utilization_ratio") or {}).get("gpu")
    if utilization is not None:
        parts.append(f"util {utilization * 100:.0f} %")
    active = (gpu.get("activity_ratio") or {}).get("sm_active")
    if active is not None:
        parts.append(f"SM active {active * 100:.0f} %")
    instances = [m.get("activity_ratio", {}).get("sm_active") for m in gpu.get("mig_instances") or []]
    if instances:
        shown = "/".join("?" if a is None else f"{a * 100:.0f}" for a in instances)
        parts.append(f"MIG SM active {shown} %")
    return ", ".join(parts) or "n/a"


def _num(value: float | None, unit: float, decimals: int = 0) -> str:
    return "n/a" if value is None else f"{value / unit:.{decimals}f}"


def _pair(value: float | None, limit: float | None, suffix: str, unit: float, decimals: int = 0) -> str:
    return f"{_num(value, unit, decimals)}/{_num(limit, unit, decimals)}{suffix}"


def _ecc(gpu: dict[str, Any]) -> str:
    if gpu["ecc_enabled"] is None:
        return "n/a"
    if not gpu["ecc_enabled"]:
        return "off"
    uncorrected = gpu["ecc_errors"].get("uncorrected_volatile")
    return "on" if not uncorrected else f"on, {uncorrected} unc"


# -- the Nagios plugin line ---------------------------------------------------------------------


def render_nagios(doc: dict[str, Any]) -> str:
    """One Nagios plugin line: ``GPUWATCH STATE - reasons | perfdata``.

    Performance data (Nagios' 'label'=value[unit];warn;crit;min;max, no unit where Nagios has
    none): the data's age in seconds (crit: when it counts as stale); per GPU, temperature with the max-operating and slowdown thresholds as warn and crit, margin,
    power with the cap as max, and the cap itself.
    """
    state = (doc.get("verdict") or "unknown").upper()
    reasons = "; ".join(doc.get("reasons") or []) or "no data"
    perf: list[str] = []
    age = doc.get("age_seconds")
    _perf(
        perf,
        "data_age",
        None if age is None else round(age, 3),
        crit=doc.get("stale_after_seconds"),
        minimum=0,
        unit="s",
    )
    for gpu in doc.get("gpus", []):
        if not gpu["up"]:
            continue
        n = gpu["index"]
        thresholds = gpu.get("temperature_thresholds_celsius") or {}
        _perf(
            perf,
            f"gpu{n}_temperature_celsius",
            gpu["temperature_celsius"],
            thresholds.get("max_operating"),
            thresholds.get("slowdown"),
        )
        _perf(perf, f"gpu{n}_temperature_margin_celsius", gpu["temperature_margin_celsius"])
        _perf(perf, f"gpu{n}_power_watts", gpu["power_watts"], minimum=0, maximum=gpu["power_limit_watts"])
        _perf(perf, f"gpu{n}_power_limit_watts", gpu["power_limit_watts"])
    for source in doc.get("sources", []):
        _perf(perf, f"{source['name']}_tokens_per_joule", source.get("tokens_per_joule"), minimum=0)
    return f"GPUWATCH {state} - {reasons}" + (" | " + " ".join(perf) if perf else "")


def _perf(
    out: list[str],
    label: str,
    value: float | None,
    warn: float | None = None,
    crit: float | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    unit: str = "",
) -> None:
    if value is None:
        return
    fields = [_g(v) for v in (warn, crit, minimum, maximum)]
    while fields and not fields[-1]:
        fields.pop()
    out.append(f"'{label}'={_g(value)}{unit}" + "".join(f";{f}" for f in fields))


def _g(value: float | None) -> str:
    return "" if value is None else f"{value:g}"
