"""MIG (Multi-Instance GPU): a GPU's MIG devices, read through their own handles.

With MIG enabled (A100, H100, H200 and newer; ``nvmlDeviceGetMigMode`` → ``[current, pending]``,
nvidia-smi "MIG Mode"), the parent GPU stops answering utilization (NotSupported) and, for a user
without privileges, its memory and process lists (NoPermission) (shared/research/real-cards.md).
Each MIG device (``nvmlDeviceGetMigDeviceHandleByIndex``; nvidia-smi ``-L`` lists them as
``MIG 1g.18gb Device 3: (UUID: MIG-…)``) answers its own memory and processes, and GPM counts per
GPU instance (``nvmlGpmMigSampleGet``).

The profile name is the driver's (``nvmlDeviceGetGpuInstanceProfileInfoV``'s ``name``, "MIG 3g.71gb"),
and, as nvidia-smi prints it, a compute instance smaller than its GPU instance is prefixed with its
slice count: ``1c.3g.71gb`` (the h200-mig capture).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pynvml

# nvmlDeviceAttributes.gpuInstanceSliceCount -> the GPU instance profile with that many slices
_GI_PROFILE_BY_SLICES = {
    1: pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE,
    2: pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE,
    3: pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE,
    4: pynvml.NVML_GPU_INSTANCE_PROFILE_4_SLICE,
    7: pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE,
}


@dataclass(frozen=True, slots=True)
class MigDevice:
    """One MIG device as found when its parent was enumerated."""

    index: int
    handle: Any
    uuid: str
    profile: str
    gpu_instance_id: int
    compute_instance_id: int
    memory_size_bytes: int | None


def mig_enabled(handle: Any) -> bool:
    """nvmlDeviceGetMigMode's current mode. Raises NVMLError (NotSupported on cards without MIG)."""
    current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    return bool(current == pynvml.NVML_DEVICE_MIG_ENABLE)


def profile_name(gi_profile_name: str, gi_slices: int, ci_slices: int) -> str:
    """``3g.71gb`` from the driver's "MIG 3g.71gb"; ``1c.3g.71gb`` for a 1-slice compute instance of it."""
    name = gi_profile_name.removeprefix("MIG ").strip()
    return f"{ci_slices}c.{name}" if 0 < ci_slices < gi_slices else name


def enumerate_devices(parent: Any) -> list[MigDevice]:
    """Every MIG device of a MIG-enabled GPU, in index order. Raises NVMLError for the parent's calls;
    an empty slot (NotFound) is skipped."""
    count = pynvml.nvmlDeviceGetMaxMigDeviceCount(parent)
    names: dict[int, str] = {}
    found = []
    for index in range(count):
        try:
            handle = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, index)
        except pynvml.NVMLError_NotFound:
            continue
        attributes = pynvml.nvmlDeviceGetAttributes_v2(handle)
        gi_slices = int(attributes.gpuInstanceSliceCount)
        if gi_slices not in names:
            profile = _GI_PROFILE_BY_SLICES.get(gi_slices)
            try:
                info = None if profile is None else pynvml.nvmlDeviceGetGpuInstanceProfileInfo(parent, profile, 2)
            except pynvml.NVMLError:
                info = None
            raw = info.name if info is not None else b""
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            names[gi_slices] = text or f"{gi_slices}g"
        memory_mb = int(attributes.memorySizeMB)
        found.append(
            MigDevice(
                index=index,
                handle=handle,
                uuid=pynvml.nvmlDeviceGetUUID(handle),
                profile=profile_name(names[gi_slices], gi_slices, int(attributes.computeInstanceSliceCount)),
                gpu_instance_id=int(pynvml.nvmlDeviceGetGpuInstanceId(handle)),
                compute_instance_id=int(pynvml.nvmlDeviceGetComputeInstanceId(handle)),
                memory_size_bytes=memory_mb * 1024 * 1024 if memory_mb else None,
            )
        )
    return found


def memory_used_bytes(handle: Any) -> int:
    """A MIG device's memory in use (nvmlDeviceGetMemoryInfo on its handle; nvidia-smi "Shared FB Memory Usage")."""
    return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


def process_count(handle: Any) -> int:
    """Compute processes on a MIG device (nvmlDeviceGetComputeRunningProcesses on its handle)."""
    return len(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
