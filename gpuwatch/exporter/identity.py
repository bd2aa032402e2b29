"""gpuwatch_gpu_info, gpuwatch_gpu_up and gpuwatch_gpu_stale: which GPUs there are, whether they answered."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.model import Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "which GPUs there are (gpu_info), whether each answered (up) and whether its values are stale"


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for status in snapshot.gpus:
        g = status.identity
        f.gpu_gauge(
            "gpuwatch_gpu_info",
            "GPU identity (nvmlDeviceGetName, nvmlDeviceGetPciInfo, nvmlDeviceGetVbiosVersion, "
            "nvmlSystemGetDriverVersion); always 1.",
            g,
            1,
            name=g.name,
            pci_bus_id=g.pci_bus_id,
            driver_version=snapshot.driver_version or "",
            vbios_version=g.vbios_version or "",
        )
        f.gpu_gauge("gpuwatch_gpu_up", "1 when the GPU answered the last poll, 0 when it did not.", g, int(status.up))
        f.gpu_gauge(
            "gpuwatch_gpu_stale",
            "1 while an NVML call for this GPU hangs: its other series hold the values of the last poll it "
            "answered (gpuwatch_gpu_up is 0); the other GPUs are polled on without it.",
            g,
            int(status.stale_since is not None),
        )
    return f
