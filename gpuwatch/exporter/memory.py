"""VRAM, BAR1 and engine utilization."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.model import Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "VRAM, BAR1 and engine utilization"


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for status in snapshot.gpus:
        g, r = status.identity, status.reading
        if r is None:
            continue
        source = "nvmlDeviceGetMemoryInfo (v2 where the driver has it)"
        f.gpu_gauge("gpuwatch_gpu_memory_size_bytes", f"Total VRAM ({source}).", g, g.memory_size_bytes)
        f.gpu_gauge(
            "gpuwatch_gpu_memory_used_bytes",
            f"VRAM allocated, excluding reserved ({source}).",
            g,
            r.memory_used_bytes,
        )
        f.gpu_gauge("gpuwatch_gpu_memory_free_bytes", f"VRAM free ({source}).", g, r.memory_free_bytes)
        f.gpu_gauge(
            "gpuwatch_gpu_memory_reserved_bytes",
            f"VRAM reserved by driver and firmware ({source}).",
            g,
            r.memory_reserved_bytes,
        )
        f.gpu_gauge(
            "gpuwatch_gpu_bar1_size_bytes",
            "BAR1 aperture size (nvmlDeviceGetBAR1MemoryInfo).",
            g,
            g.bar1_size_bytes,
        )
        f.gpu_gauge(
            "gpuwatch_gpu_bar1_used_bytes",
            "BAR1 aperture in use (nvmlDeviceGetBAR1MemoryInfo, read every --process-interval).",
            g,
            r.bar1_used_bytes,
        )
        for engine, ratio in r.utilization_ratio.items():
            f.gpu_gauge(
                "gpuwatch_gpu_utilization_ratio",
                "Fraction of the driver's last sample period the engine was busy (nvmlDeviceGetUtilizationRates, "
                "nvmlDeviceGetEncoderUtilization, nvmlDeviceGetDecoderUtilization); gpu and memory every poll, encoder and "
                "decoder every --process-interval.",
                g,
                ratio,
                engine=engine,
            )
    return f
