"""Processes holding GPU memory (refreshed on the slower process loop)."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.model import Snapshot


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for status in snapshot.gpus:
        for proc in status.processes:
            f.gpu_gauge(
                "gpuwatch_gpu_process_memory_used_bytes",
                "GPU memory held by a process (nvmlDeviceGetComputeRunningProcesses and the graphics twin), "
                "refreshed on the process interval.",
                status.identity,
                proc.used_memory_bytes,
                pid=str(proc.pid),
                process=proc.name or "",
                user=proc.user or "",
            )
    return f
