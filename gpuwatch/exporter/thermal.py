"""Temperatures, the card's own thermal thresholds, the margin to them, and the fan."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.model import Snapshot


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for status in snapshot.gpus:
        g, r = status.identity, status.reading
        if r is None:
            continue
        doc = "Temperature from nvmlDeviceGetTemperature (gpu) and NVML_FI_DEV_MEMORY_TEMP (memory, HBM parts)."
        f.gpu_gauge("gpuwatch_gpu_temperature_celsius", doc, g, r.temperature_celsius, sensor="gpu")
        f.gpu_gauge("gpuwatch_gpu_temperature_celsius", doc, g, r.memory_temperature_celsius, sensor="memory")
        for threshold, value in g.temperature_thresholds_celsius.items():
            f.gpu_gauge(
                "gpuwatch_gpu_temperature_threshold_celsius",
                "The card's own temperature thresholds (nvmlDeviceGetTemperatureThreshold): max_operating is "
                "where SW thermal slowdown starts, slowdown where hardware halves clocks. Absent on parts "
                "that report only a margin (Ada and later).",
                g,
                value,
                threshold=threshold,
            )
        f.gpu_gauge(
            "gpuwatch_gpu_temperature_margin_celsius",
            "Degrees left before the first thermal slowdown threshold (nvmlDeviceGetMarginTemperature, or "
            "max_operating minus the GPU temperature where the driver has no margin query).",
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
