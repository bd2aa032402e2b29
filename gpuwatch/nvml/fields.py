"""NVML constants translated once into gpuwatch's label values."""

from __future__ import annotations

from functools import lru_cache

import pynvml

from gpuwatch import labels

# Clock event reason bits -> label. Bits not listed (0x200, 0x400 in the newest bindings) are
# reported as "other" rather than dropped: the mask is not closed (nvml.h).
CLOCK_EVENT_REASONS: dict[str, int] = {
    "idle": pynvml.nvmlClocksThrottleReasonGpuIdle,
    "applications_clocks": pynvml.nvmlClocksThrottleReasonApplicationsClocksSetting,
    "sw_power_cap": pynvml.nvmlClocksThrottleReasonSwPowerCap,
    "hw_slowdown": pynvml.nvmlClocksThrottleReasonHwSlowdown,
    "sync_boost": pynvml.nvmlClocksThrottleReasonSyncBoost,
    "sw_thermal": pynvml.nvmlClocksThrottleReasonSwThermalSlowdown,
    "hw_thermal": pynvml.nvmlClocksThrottleReasonHwThermalSlowdown,
    "hw_power_brake": pynvml.nvmlClocksThrottleReasonHwPowerBrakeSlowdown,
    "display_clocks": pynvml.nvmlClocksThrottleReasonDisplayClockSetting,
}
assert tuple(CLOCK_EVENT_REASONS) == labels.CLOCK_EVENT_REASONS, "one list of reasons, in one order"
_KNOWN_REASON_BITS = sum(CLOCK_EVENT_REASONS.values())


@lru_cache(maxsize=256)  # a GPU shows a handful of masks; each is decoded once
def decode_reasons(mask: int) -> frozenset[str]:
    """Names of the reasons set in an ``nvmlDeviceGetCurrentClocksEventReasons`` mask."""
    names = {name for name, bit in CLOCK_EVENT_REASONS.items() if mask & bit}
    if mask & ~_KNOWN_REASON_BITS:
        names.add("other")
    return frozenset(names)


# nvmlTemperatureThresholds_t -> label (absolute °C; NotSupported on Ada and later).
TEMPERATURE_THRESHOLDS: dict[str, int] = {
    "shutdown": pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN,
    "slowdown": pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN,
    "max_operating": pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX,
    "memory_max": pynvml.NVML_TEMPERATURE_THRESHOLD_MEM_MAX,
    "target": pynvml.NVML_TEMPERATURE_THRESHOLD_ACOUSTIC_CURR,
}

# Thresholds relative to the T.Limit point (R535+; Ada and Hopper answer, Ampere does not): read once.
TEMPERATURE_TLIMIT_FIELDS: dict[str, int] = {
    "shutdown": pynvml.NVML_FI_DEV_TEMPERATURE_SHUTDOWN_TLIMIT,
    "slowdown": pynvml.NVML_FI_DEV_TEMPERATURE_SLOWDOWN_TLIMIT,
    "memory_max": pynvml.NVML_FI_DEV_TEMPERATURE_MEM_MAX_TLIMIT,
    "max_operating": pynvml.NVML_FI_DEV_TEMPERATURE_GPU_MAX_TLIMIT,
}

CLOCKS: dict[str, int] = {
    "graphics": pynvml.NVML_CLOCK_GRAPHICS,
    "sm": pynvml.NVML_CLOCK_SM,
    "memory": pynvml.NVML_CLOCK_MEM,
    "video": pynvml.NVML_CLOCK_VIDEO,
}
