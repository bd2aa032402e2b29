"""Temperatures, the card's own thermal thresholds, the margin to them, and the fan."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.model import Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "temperatures, the card's thermal thresholds, the margin to them, and the fan"


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for status in snapshot.gpus:
        g, r = status.identity, status.reading
        if r is None:
            continue
        doc = "Temperature from nvmlDeviceGetTemperature (gpu) and NVML_FI_DEV_MEMORY_TEMP (memory, HBM parts)."
        f.gpu_gauge("gpuwatch_gpu_temperature_celsius", doc, g, r.temperature_celsius, sensor="gpu")
        f.gpu_gauge("gpuwatch_gpu_temperature_celsius", doc, g, r.memory_temperature_celsius, sensor="memory")
        for threshold, value in status.temperature_thresholds_celsius.items():
            f.gpu_gauge(
                "gpuwatch_gpu_temperature_threshold_celsius",
                "The card's own temperature thresholds in °C: max_operating is where SW thermal slowdown "
                "starts, slowdown where hardware cuts clocks. From nvmlDeviceGetTemperatureThreshold where the "
                "driver answers it (Ampere and older); on cards that give T.Limit offsets instead (Ada, Hopper), "
                "the T.Limit point (temperature + nvmlDeviceGetMarginTemperature) minus each offset. Absent "
                "where neither can be had.",
                g,
                value,
                threshold=threshold,
            )
        for threshold, value in g.temperature_tlimit_celsius.items():
            f.gpu_gauge(
                "gpuwatch_gpu_temperature_threshold_tlimit_celsius",
                "Thresholds as the driver gives them relative to the T.Limit point (NVML_FI_DEV_TEMPERATURE_*_TLIMIT, "
                "field ids 193-196, read once): slowdown -2 means 2 °C past the max-operating point. Absent on "
                "cards that report only absolute thresholds.",
                g,
                value,
                threshold=threshold,
            )
        f.gpu_gauge(
            "gpuwatch_gpu_temperature_margin_celsius",
            "Degrees left before the max-operating point, the same on every card: nvmlDeviceGetMarginTemperature "
            "(nvidia-smi's T.Limit temperature, R570+) where the driver answers it, else max_operating minus "
            "the GPU temperature. Negative past it.",
            g,
            status.temperature_margin_celsius,
        )
        f.gpu_gauge(
            "gpuwatch_gpu_fan_speed_ratio",
            "Intended fan speed as a fraction of its maximum (nvmlDeviceGetFanSpeed, read every --process-interval); "
            "may exceed 1.",
            g,
            r.fan_speed_ratio,
        )
    return f
