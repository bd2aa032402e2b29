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
            for name, what, value in (
                ("gpuwatch_gpu_process_sm_ratio", "SMs", proc.sm_ratio),
                ("gpuwatch_gpu_process_memory_ratio", "memory bandwidth", proc.memory_ratio),
            ):
                f.gpu_gauge(
                    name,
                    f"The process's share of the GPU's {what} (0-1) in the driver's newest sample since the "
                    "previous listing (nvmlDeviceGetProcessUtilization), refreshed on the process interval; "
                    "absent where the driver gave no sample.",
                    status.identity,
                    value,
                    pid=str(proc.pid),
                    process=proc.name or "",
                    user=proc.user or "",
                )
    return f
