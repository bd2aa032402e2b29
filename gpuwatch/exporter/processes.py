"""Processes holding GPU memory (refreshed on the slower process loop)."""

from __future__ import annotations

from collections import defaultdict

from gpuwatch.exporter.families import Families
from gpuwatch.model import GpuProcess, Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "GPU memory held by each process (listed on the slow process loop)"

_HELP = (
    "GPU memory held by a process (nvmlDeviceGetComputeRunningProcesses and the graphics twin), "
    "refreshed on the process interval."
)
_HELP_WITHOUT_PID = (
    "GPU memory held by the processes of one name and user, summed (nvmlDeviceGetComputeRunningProcesses "
    "and the graphics twin), refreshed on the process interval."
)


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for status in snapshot.gpus:
        for proc in status.processes:
            f.gpu_gauge(
                "gpuwatch_gpu_process_memory_used_bytes",
                _HELP,
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


def collect_without_pid(snapshot: Snapshot) -> Families:
    """The same family without ``pid`` (``--no-collector.processes.pid``): one series per GPU,
    process name and user, so a restarted worker keeps its series instead of starting a new one."""
    f = Families()
    for status in snapshot.gpus:
        for (name, user), used in sorted(by_name_and_user(status.processes).items()):
            f.gpu_gauge(
                "gpuwatch_gpu_process_memory_used_bytes",
                _HELP_WITHOUT_PID,
                status.identity,
                used,
                process=name,
                user=user,
            )
    return f


def by_name_and_user(processes: tuple[GpuProcess, ...]) -> dict[tuple[str, str], int | None]:
    """Memory summed per (name, user); None where no process of that pair reports its memory
    (NVML answers NVML_VALUE_NOT_AVAILABLE without the privilege to see it)."""
    summed: dict[tuple[str, str], int | None] = defaultdict(lambda: None)
    for proc in processes:
        key = (proc.name or "", proc.user or "")
        if proc.used_memory_bytes is not None:
            summed[key] = (summed[key] or 0) + proc.used_memory_bytes
        else:
            summed[key] = summed[key]
    return dict(summed)
