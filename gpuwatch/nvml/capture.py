"""`gpuwatch capture`: what NVML answers on this host, for every query gpuwatch makes, as JSON.

A capture records the driver, NVML and CUDA versions, and for each GPU every entry point gpuwatch
calls (identity, limits, thresholds, clocks, memory, ECC, PCIe, processes) and every field id it
asks, each with the return code NVML gave (``SUCCESS``, ``NotSupported``, ``NoPermission``, ...)
and, where it answered, one sample of the value. It is how a bug report shows what a card really
says, and what the simulator replays (`gpuwatch serve --simulate capture.json`).

Serial numbers, UUIDs and process names are masked unless ``mask=False``: a masked UUID keeps its
shape (``GPU-00000000-0000-0000-0000-00000000000N``), a masked serial or name reads ``masked``.
"""

from __future__ import annotations

import ctypes
import datetime
import importlib.metadata
from collections.abc import Callable
from functools import partial
from typing import Any

import pynvml

from gpuwatch import __version__
from gpuwatch.nvml import fields, prepared
from gpuwatch.nvml.reader import FIELDS, nvml_process_name

FORMAT = "gpuwatch-capture/1"
NvmlError = pynvml.NVMLError
MASKED = "masked"


def _field_ids() -> dict[int, str]:
    """Every field id gpuwatch reads or may read, by id, with pynvml's name for it."""
    by_value: dict[int, str] = {}
    for name, value in vars(pynvml).items():  # the first of aliases (later ones renamed the field)
        if name.startswith("NVML_FI_DEV_") and isinstance(value, int):
            by_value.setdefault(value, name)
    ids = {f.field_id for f in FIELDS} | set(fields.TEMPERATURE_TLIMIT_FIELDS.values())
    return {fid: by_value.get(fid, f"field {fid}") for fid in sorted(ids)}


def _queries(handle: Any) -> list[tuple[str, Callable[[], Any]]]:
    """(name, call) for every direct query gpuwatch makes of one GPU, and the ones that identify it."""
    h, n = handle, pynvml
    queries: list[tuple[str, Callable[[], Any]]] = [
        ("nvmlDeviceGetName", lambda: n.nvmlDeviceGetName(h)),
        ("nvmlDeviceGetUUID", lambda: n.nvmlDeviceGetUUID(h)),
        ("nvmlDeviceGetSerial", lambda: n.nvmlDeviceGetSerial(h)),
        ("nvmlDeviceGetPciInfo", lambda: n.nvmlDeviceGetPciInfo(h)),
        ("nvmlDeviceGetVbiosVersion", lambda: n.nvmlDeviceGetVbiosVersion(h)),
        ("nvmlDeviceGetBrand", lambda: n.nvmlDeviceGetBrand(h)),
        ("nvmlDeviceGetArchitecture", lambda: n.nvmlDeviceGetArchitecture(h)),
        ("nvmlDeviceGetCudaComputeCapability", lambda: n.nvmlDeviceGetCudaComputeCapability(h)),
        ("nvmlDeviceGetPowerManagementLimitConstraints", lambda: n.nvmlDeviceGetPowerManagementLimitConstraints(h)),
        ("nvmlDeviceGetPowerManagementDefaultLimit", lambda: n.nvmlDeviceGetPowerManagementDefaultLimit(h)),
        ("nvmlDeviceGetPowerManagementLimit", lambda: n.nvmlDeviceGetPowerManagementLimit(h)),
        ("nvmlDeviceGetEnforcedPowerLimit", lambda: n.nvmlDeviceGetEnforcedPowerLimit(h)),
        ("nvmlDeviceGetPowerUsage", lambda: n.nvmlDeviceGetPowerUsage(h)),
        ("nvmlDeviceGetTotalEnergyConsumption", lambda: n.nvmlDeviceGetTotalEnergyConsumption(h)),
        ("nvmlDeviceGetTemperature:gpu", lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
        ("nvmlDeviceGetMarginTemperature", lambda: n.nvmlDeviceGetMarginTemperature(h)),
        ("nvmlDeviceGetFanSpeed", lambda: n.nvmlDeviceGetFanSpeed(h)),
        ("nvmlDeviceGetPerformanceState", lambda: n.nvmlDeviceGetPerformanceState(h)),
        ("nvmlDeviceGetUtilizationRates", lambda: n.nvmlDeviceGetUtilizationRates(h)),
        ("nvmlDeviceGetEncoderUtilization", lambda: n.nvmlDeviceGetEncoderUtilization(h)),
        ("nvmlDeviceGetDecoderUtilization", lambda: n.nvmlDeviceGetDecoderUtilization(h)),
        ("nvmlDeviceGetCurrentClocksEventReasons", lambda: n.nvmlDeviceGetCurrentClocksEventReasons(h)),
        ("nvmlDeviceGetMemoryInfo_v2", lambda: n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)),
        ("nvmlDeviceGetMemoryInfo", lambda: n.nvmlDeviceGetMemoryInfo(h)),
        ("nvmlDeviceGetBAR1MemoryInfo", lambda: n.nvmlDeviceGetBAR1MemoryInfo(h)),
        ("nvmlDeviceGetEccMode", lambda: n.nvmlDeviceGetEccMode(h)),
        ("nvmlDeviceGetRemappedRows", lambda: n.nvmlDeviceGetRemappedRows(h)),
        ("nvmlDeviceGetMaxPcieLinkGeneration", lambda: n.nvmlDeviceGetMaxPcieLinkGeneration(h)),
        ("nvmlDeviceGetMaxPcieLinkWidth", lambda: n.nvmlDeviceGetMaxPcieLinkWidth(h)),
        ("nvmlDeviceGetCurrPcieLinkGeneration", lambda: n.nvmlDeviceGetCurrPcieLinkGeneration(h)),
        ("nvmlDeviceGetCurrPcieLinkWidth", lambda: n.nvmlDeviceGetCurrPcieLinkWidth(h)),
        ("nvmlDeviceGetPcieReplayCounter", lambda: n.nvmlDeviceGetPcieReplayCounter(h)),
        ("nvmlDeviceGetMigMode", lambda: n.nvmlDeviceGetMigMode(h)),
        ("nvmlDeviceGetComputeRunningProcesses", lambda: n.nvmlDeviceGetComputeRunningProcesses(h)),
        ("nvmlDeviceGetGraphicsRunningProcesses", lambda: n.nvmlDeviceGetGraphicsRunningProcesses(h)),
    ]
    for label, code in fields.TEMPERATURE_THRESHOLDS.items():
        queries.append(
            (f"nvmlDeviceGetTemperatureThreshold:{label}", partial(n.nvmlDeviceGetTemperatureThreshold, h, code))
        )
    for label, code in fields.CLOCKS.items():
        queries.append((f"nvmlDeviceGetClockInfo:{label}", partial(n.nvmlDeviceGetClockInfo, h, code)))
        queries.append((f"nvmlDeviceGetMaxClockInfo:{label}", partial(n.nvmlDeviceGetMaxClockInfo, h, code)))
    return queries


def _plain(value: Any) -> Any:
    """A JSON value of whatever pynvml returned (structs as objects of their fields)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, ctypes.Structure | ctypes.Union):
        return {name: _plain(getattr(value, name)) for name, *_ in value._fields_}
    if isinstance(value, ctypes.Array):
        return [_plain(v) for v in value]
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, pynvml.nvmlFriendlyObject):  # pynvml's process entries
        return {name: _plain(v) for name, v in vars(value).items()}
    return str(value)


def _answer(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        value = call()
    except pynvml.NVMLError as exc:
        return {"return": _return_name(exc.value)}
    return {"return": "SUCCESS", "value": _plain(value)}


def _return_name(code: int) -> str:
    cls = pynvml.NVMLError._valClassMapping.get(code) if hasattr(pynvml.NVMLError, "_valClassMapping") else None
    return cls.__name__.removeprefix("NVMLError_") if cls is not None else f"code {code}"


def _fields(handle: Any) -> dict[str, dict[str, Any]]:
    """Each field id asked alone, so one the driver does not know costs only its own answer."""
    out: dict[str, dict[str, Any]] = {}
    for fid, name in _field_ids().items():
        entry: dict[str, Any] = {"name": name}
        try:
            (value,) = pynvml.nvmlDeviceGetFieldValues(handle, [fid])
        except pynvml.NVMLError as exc:
            entry["return"] = _return_name(exc.value)
        else:
            if value.nvmlReturn == pynvml.NVML_SUCCESS:
                entry["return"] = "SUCCESS"
                entry["value"] = _field_value(value)
            else:
                entry["return"] = _return_name(value.nvmlReturn)
        out[str(fid)] = entry
    return out


def _field_value(value: Any) -> float | int:
    member = prepared.VALUE_MEMBERS.get(value.valueType, "ullVal")
    result: float | int = getattr(value.value, member)
    return result


def _mask_gpu(gpu: dict[str, Any], index: int) -> None:
    queries = gpu["queries"]
    masked_uuid = f"GPU-00000000-0000-0000-0000-{index:012d}"
    for key, replacement in (("nvmlDeviceGetUUID", masked_uuid), ("nvmlDeviceGetSerial", MASKED)):
        if queries[key].get("return") == "SUCCESS":
            queries[key]["value"] = replacement
    for process in gpu.get("processes", []):
        process["name"] = MASKED


def capture(mask: bool = True) -> dict[str, Any]:
    """NVML's answers on this host (NVML must be loadable: pynvml's library, real or simulated)."""
    pynvml.nvmlInit()
    try:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "gpuwatch_version": __version__,
            "nvidia_ml_py_version": _package_version("nvidia-ml-py"),
            "captured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "masked": mask,
            "system": {
                "nvmlSystemGetDriverVersion": _answer(pynvml.nvmlSystemGetDriverVersion),
                "nvmlSystemGetNVMLVersion": _answer(pynvml.nvmlSystemGetNVMLVersion),
                "nvmlSystemGetCudaDriverVersion_v2": _answer(pynvml.nvmlSystemGetCudaDriverVersion_v2),
            },
            "gpus": [],
        }
        for index in range(pynvml.nvmlDeviceGetCount()):
            doc["gpus"].append(_gpu(index, mask))
        return doc
    finally:
        pynvml.nvmlShutdown()


def _gpu(index: int, mask: bool) -> dict[str, Any]:
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError as exc:
        return {"index": index, "handle": _return_name(exc.value)}
    gpu: dict[str, Any] = {
        "index": index,
        "queries": {name: _answer(call) for name, call in _queries(handle)},
        "fields": _fields(handle),
    }
    processes = []
    for kind in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        for entry in gpu["queries"][kind].get("value") or []:
            pid = entry.get("pid")
            processes.append(
                {
                    "pid": pid,
                    "name": None if pid is None else nvml_process_name(pid),
                    "kind": kind.removeprefix("nvmlDeviceGet"),
                }
            )
    gpu["processes"] = processes
    if mask:
        _mask_gpu(gpu, index)
    return gpu


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
