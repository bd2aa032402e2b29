"""What `gpuwatch status` and the daemon's ``/status`` show: one JSON document, and a table of it.

The daemon serves :func:`to_document` of its latest snapshot; `gpuwatch status` renders the same
document whether it came over HTTP or from sampling NVML in-process, so both paths print alike.
"""

from __future__ import annotations

from typing import Any

from gpuwatch import __version__
from gpuwatch.model import GpuStatus, Snapshot

SCHEMA_VERSION = 1


def to_document(snapshot: Snapshot) -> dict[str, Any]:
    """The ``/status`` JSON document of a snapshot (SI units, ``null`` where not reported)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "gpuwatch_version": __version__,
        "timestamp": snapshot.timestamp,
        "nvml_up": snapshot.nvml_up,
        "nvml_error": snapshot.nvml_error,
        "driver_version": snapshot.driver_version,
        "cuda_driver_version": snapshot.cuda_driver_version,
        "gpus": [_gpu(status) for status in snapshot.gpus],
    }


def _gpu(status: GpuStatus) -> dict[str, Any]:
    g, r = status.identity, status.reading
    thresholds = dict(g.temperature_thresholds_celsius)
    doc: dict[str, Any] = {
        "index": g.index,
        "uuid": g.uuid,
        "name": g.name,
        "pci_bus_id": g.pci_bus_id,
        "up": status.up,
        "error": status.error,
        "temperature_celsius": None,
        "temperature_limit_celsius": thresholds.get("max_operating"),
        "temperature_thresholds_celsius": thresholds,
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
    }
    if r is not None:
        margin = r.temperature_margin_celsius
        if margin is None and r.temperature_celsius is not None and "max_operating" in thresholds:
            margin = thresholds["max_operating"] - r.temperature_celsius
        doc.update(
            temperature_celsius=r.temperature_celsius,
            temperature_margin_celsius=margin,
            power_watts=r.power_watts,
            power_limit_watts=r.power_limit_watts,
            sm_clock_hertz=r.clocks_hertz.get("sm"),
            utilization_ratio=dict(r.utilization_ratio),
            memory_used_bytes=r.memory_used_bytes,
            ecc_errors={f"{kind}_{scope}": n for (kind, scope), n in sorted(r.ecc_errors.items())},
            row_remap_pending=r.row_remap_pending,
            row_remap_failure=r.row_remap_failure,
            clock_event_reasons=sorted(r.clock_event_reasons or ()),
        )
    return doc


# -- the table ----------------------------------------------------------------------------------


_COLUMNS = ("GPU", "NAME", "TEMP/LIMIT", "POWER/CAP", "SM CLOCK/MAX", "VRAM USED/SIZE", "ECC", "CLOCK EVENTS")


def render_table(doc: dict[str, Any]) -> str:
    """A fixed-width table, one row per GPU, from a ``/status`` document."""
    lines = []
    header = f"gpuwatch {doc.get('gpuwatch_version', '')}"
    if doc.get("driver_version"):
        header += f" · driver {doc['driver_version']}"
        if doc.get("cuda_driver_version"):
            header += f" · CUDA {doc['cuda_driver_version']}"
    if not doc.get("nvml_up"):
        header += f" · NVML down: {doc.get('nvml_error') or 'unknown error'}"
    lines.append(header)
    rows = [list(_COLUMNS)] + [_row(gpu) for gpu in doc.get("gpus", [])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)


def _row(gpu: dict[str, Any]) -> list[str]:
    index = str(gpu["index"])
    if not gpu["up"]:
        return [index, gpu["name"] or "?", f"down: {gpu.get('error') or 'no answer'}", "", "", "", "", ""]
    temp = _pair(gpu["temperature_celsius"], gpu["temperature_limit_celsius"], "°C", 1)
    if gpu["temperature_limit_celsius"] is None and gpu["temperature_margin_celsius"] is not None:
        temp = f"{_num(gpu['temperature_celsius'], 1)}°C ({gpu['temperature_margin_celsius']:.0f} left)"
    return [
        index,
        gpu["name"],
        temp,
        _pair(gpu["power_watts"], gpu["power_limit_watts"], " W", 1),
        _pair(gpu["sm_clock_hertz"], gpu["sm_clock_max_hertz"], " MHz", 1e6),
        _pair(gpu["memory_used_bytes"], gpu["memory_size_bytes"], " GiB", 2**30, decimals=1),
        _ecc(gpu),
        ",".join(gpu["clock_event_reasons"]) or "none",
    ]


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
