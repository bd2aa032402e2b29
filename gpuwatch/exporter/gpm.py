"""Real busyness from GPM (Hopper and newer): SM, tensor, DRAM and FP pipe activity, PCIe and NVLink rates."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.model import Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "real busyness from GPM on Hopper and newer: SM, tensor, DRAM and FP pipe activity, PCIe and NVLink rates"

_WHERE = (
    "from NVML GPM (nvmlGpmSampleGet and nvmlGpmMetricsGet) over the interval since the previous poll; "
    "absent on GPUs without GPM (before Hopper), under MIG (see gpuwatch_mig_*) and on the first poll"
)
RATIOS: tuple[tuple[str, str, str], ...] = (
    ("sm_active", "gpuwatch_gpu_sm_active_ratio", "Share of SMs busy (DCGM SM_ACTIVE)"),
    ("sm_occupancy", "gpuwatch_gpu_sm_occupancy_ratio", "Resident warps as a share of the SMs' maximum"),
    ("tensor_active", "gpuwatch_gpu_tensor_active_ratio", "Share of time any tensor pipe was busy"),
    ("dram_active", "gpuwatch_gpu_dram_active_ratio", "DRAM bandwidth used as a share of the peak"),
    ("fp16_active", "gpuwatch_gpu_fp16_active_ratio", "Share of time the non-tensor FP16 pipe was busy"),
    ("fp32_active", "gpuwatch_gpu_fp32_active_ratio", "Share of time the non-tensor FP32 pipe was busy"),
    ("fp64_active", "gpuwatch_gpu_fp64_active_ratio", "Share of time the non-tensor FP64 pipe was busy"),
)


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for status in snapshot.gpus:
        g, r = status.identity, status.reading
        if r is None:
            continue
        for key, name, what in RATIOS:
            f.gpu_gauge(name, f"{what}, 0-1, {_WHERE}.", g, r.activity_ratio.get(key))
        for (link, direction), rate in sorted(r.interconnect_bytes_per_second.items()):
            f.gpu_gauge(
                f"gpuwatch_gpu_{link}_bytes_per_second",
                f"{'PCIe' if link == 'pcie' else 'NVLink (all links)'} traffic in bytes per second, {_WHERE}.",
                g,
                rate,
                direction=direction,
            )
    return f
