"""Reading one GPU twice, from a real capture's text and from the simulated driver through pynvml,
into the same terms (what NVML answers), so a test can compare the two whole."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml

from gpuwatch.sim import smi

CAPTURES = Path(__file__).parent / "data" / "captures"
MIB = 2**20


def answer(call: Callable[[], Any]) -> Any:
    """What the driver answers, or None where it answers NotSupported."""
    try:
        return call()
    except pynvml.NVMLError_NotSupported:
        return None


def field(handle: Any, field_id: int) -> int | None:
    (value,) = pynvml.nvmlDeviceGetFieldValues(handle, [field_id])
    if value.nvmlReturn != pynvml.NVML_SUCCESS:
        return None
    return int(value.value.siVal if value.valueType == pynvml.NVML_VALUE_TYPE_SIGNED_INT else value.value.uiVal)


def _number(value: float | None) -> int | None:
    return None if value is None else round(value)


def from_capture(gpu: smi.SmiGpu) -> dict[str, Any]:
    """What nvidia-smi printed, in the terms NVML answers in."""
    return {
        "name": gpu.name,
        "pci": (gpu.pci_device_id, gpu.pci_subsystem_id),
        "vbios": gpu.vbios_version,
        "power limits W": tuple(_number(gpu.power(k)) for k in ("default", "min", "max", "enforced")),
        "absolute thresholds": tuple(
            _number(gpu.temperature(k)) for k in ("shutdown", "slowdown", "max_operating", "memory_max")
        ),
        "target": _number(gpu.temperature("target")),
        "T.Limit": tuple(
            _number(gpu.temperature(k))
            for k in ("shutdown_tlimit", "slowdown_tlimit", "max_operating_tlimit", "memory_max_tlimit")
        ),
        "max clocks": gpu.clocks("Max Clocks"),
        "memory MiB": tuple(_number(gpu.memory_mib(k)) for k in ("total", "reserved", "bar1")),
        "pcie max": (gpu.pcie("max_generation"), gpu.pcie("max_width")),
        "has fan": gpu.fan_percent is not None,
        "has memory temperature": gpu.temperature("memory") is not None,
        "has serial": gpu.serial is not None,
        "ecc mode": gpu.ecc_enabled,
        "row remapping": gpu.row_remapping,
    }


def from_simulator(h: Any) -> dict[str, Any]:
    """The same, asked of the simulated driver through pynvml."""
    threshold = pynvml.nvmlDeviceGetTemperatureThreshold
    memory = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    pci = pynvml.nvmlDeviceGetPciInfo(h)
    limits = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(h)
    ecc = answer(lambda: pynvml.nvmlDeviceGetEccMode(h))
    return {
        "name": pynvml.nvmlDeviceGetName(h),
        "pci": (pci.pciDeviceId, pci.pciSubSystemId),
        "vbios": pynvml.nvmlDeviceGetVbiosVersion(h),
        "power limits W": tuple(
            round(mw / 1000)
            for mw in (
                pynvml.nvmlDeviceGetPowerManagementDefaultLimit(h),
                limits[0],
                limits[1],
                pynvml.nvmlDeviceGetEnforcedPowerLimit(h),
            )
        ),
        "absolute thresholds": tuple(
            answer(lambda k=k: threshold(h, k))
            for k in (
                pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN,
                pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN,
                pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX,
                pynvml.NVML_TEMPERATURE_THRESHOLD_MEM_MAX,
            )
        ),
        "target": answer(lambda: threshold(h, pynvml.NVML_TEMPERATURE_THRESHOLD_ACOUSTIC_CURR)),
        "T.Limit": tuple(field(h, f) for f in (193, 194, 196, 195)),
        "max clocks": tuple(
            pynvml.nvmlDeviceGetMaxClockInfo(h, c)
            for c in (pynvml.NVML_CLOCK_GRAPHICS, pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM, pynvml.NVML_CLOCK_VIDEO)
        ),
        "memory MiB": (
            memory.total // MIB,
            memory.reserved // MIB,
            pynvml.nvmlDeviceGetBAR1MemoryInfo(h).bar1Total // MIB,
        ),
        "pcie max": (pynvml.nvmlDeviceGetMaxPcieLinkGeneration(h), pynvml.nvmlDeviceGetMaxPcieLinkWidth(h)),
        "has fan": answer(lambda: pynvml.nvmlDeviceGetFanSpeed(h)) is not None,
        "has memory temperature": field(h, pynvml.NVML_FI_DEV_MEMORY_TEMP) is not None,
        "has serial": answer(lambda: pynvml.nvmlDeviceGetSerial(h)) is not None,
        "ecc mode": None if ecc is None else bool(ecc[0]),
        "row remapping": answer(lambda: pynvml.nvmlDeviceGetRemappedRows(h)) is not None,
    }
