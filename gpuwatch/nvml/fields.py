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


# Violation (time below target clocks) counters, ns since driver load. Ids 74-79 are stable across
# driver branches; the newer clock-event counters (251-253 or 269-271) were renumbered, so they are
# not used (shared/research/nvml.md §3.5).
VIOLATION_FIELDS: dict[str, int] = {
    "power": pynvml.NVML_FI_DEV_PERF_POLICY_POWER,
    "thermal": pynvml.NVML_FI_DEV_PERF_POLICY_THERMAL,
    "sync_boost": pynvml.NVML_FI_DEV_PERF_POLICY_SYNC_BOOST,
    "board_limit": pynvml.NVML_FI_DEV_PERF_POLICY_BOARD_LIMIT,
    "low_utilization": pynvml.NVML_FI_DEV_PERF_POLICY_LOW_UTILIZATION,
    "reliability": pynvml.NVML_FI_DEV_PERF_POLICY_RELIABILITY,
}
VIOLATION_POLICIES: dict[str, int] = {
    "power": pynvml.NVML_PERF_POLICY_POWER,
    "thermal": pynvml.NVML_PERF_POLICY_THERMAL,
    "sync_boost": pynvml.NVML_PERF_POLICY_SYNC_BOOST,
    "board_limit": pynvml.NVML_PERF_POLICY_BOARD_LIMIT,
    "low_utilization": pynvml.NVML_PERF_POLICY_LOW_UTILIZATION,
    "reliability": pynvml.NVML_PERF_POLICY_RELIABILITY,
}

# (type, scope) -> field id, and the matching nvmlDeviceGetTotalEccErrors arguments.
ECC_FIELDS: dict[tuple[str, str], int] = {
    ("corrected", "volatile"): pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL,
    ("uncorrected", "volatile"): pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL,
    ("corrected", "aggregate"): pynvml.NVML_FI_DEV_ECC_SBE_AGG_TOTAL,
    ("uncorrected", "aggregate"): pynvml.NVML_FI_DEV_ECC_DBE_AGG_TOTAL,
}
ECC_ARGUMENTS: dict[tuple[str, str], tuple[int, int]] = {
    ("corrected", "volatile"): (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC),
    ("uncorrected", "volatile"): (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC),
    ("corrected", "aggregate"): (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC),
    ("uncorrected", "aggregate"): (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC),
}

RETIRED_PAGE_FIELDS: dict[str, int] = {
    "multiple_single_bit": pynvml.NVML_FI_DEV_RETIRED_SBE,
    "double_bit": pynvml.NVML_FI_DEV_RETIRED_DBE,
}
REMAPPED_ROW_FIELDS: dict[str, int] = {
    "correctable": pynvml.NVML_FI_DEV_REMAPPED_COR,
    "uncorrectable": pynvml.NVML_FI_DEV_REMAPPED_UNC,
}

# nvmlTemperatureThresholds_t -> label (absolute °C; NotSupported on Ada and later).
TEMPERATURE_THRESHOLDS: dict[str, int] = {
    "shutdown": pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN,
    "slowdown": pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN,
    "max_operating": pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX,
    "memory_max": pynvml.NVML_TEMPERATURE_THRESHOLD_MEM_MAX,
    "target": pynvml.NVML_TEMPERATURE_THRESHOLD_ACOUSTIC_CURR,
}

CLOCKS: dict[str, int] = {
    "graphics": pynvml.NVML_CLOCK_GRAPHICS,
    "sm": pynvml.NVML_CLOCK_SM,
    "memory": pynvml.NVML_CLOCK_MEM,
    "video": pynvml.NVML_CLOCK_VIDEO,
}
