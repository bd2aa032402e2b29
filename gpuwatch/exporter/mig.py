"""MIG instances (their memory, processes and GPM busyness) and the queries a user may not ask."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.exporter.gpm import RATIOS
from gpuwatch.model import Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "MIG mode and instances (memory, processes, GPM busyness) and the queries NVML refused to this user"

_GPM = (
    "of the MIG device's GPU instance, from NVML GPM (nvmlGpmMigSampleGet) over the interval since the previous poll; "
    "with MIG enabled the parent GPU has no utilization or GPM series of its own (NVML answers NotSupported)"
)
# The GPU's GPM families that NVML also gives per GPU instance, as gpuwatch_mig_*
_RATIOS = tuple(
    (key, name.replace("gpuwatch_gpu_", "gpuwatch_mig_"), what)
    for key, name, what in RATIOS
    if key in ("sm_active", "sm_occupancy", "tensor_active", "dram_active")
)


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for status in snapshot.gpus:
        g, r = status.identity, status.reading
        if r is None:
            continue
        f.gpu_gauge(
            "gpuwatch_gpu_mig_enabled",
            "Whether MIG is enabled on the GPU (nvmlDeviceGetMigMode, current mode); absent on GPUs without MIG.",
            g,
            None if r.mig_enabled is None else float(r.mig_enabled),
        )
        for query, permitted in sorted(r.permitted_queries.items()):
            f.gpu_gauge(
                "gpuwatch_gpu_query_permitted",
                "Whether the service user may ask NVML this query of the GPU: 0 when NVML answered NoPermission "
                "(its series are then absent; a MIG-enabled GPU's memory and process lists need privileges), "
                "1 for privilege-sensitive queries that answered.",
                g,
                float(permitted),
                query=query,
            )
        for m in r.mig_instances:
            mig = str(m.index)
            f.gpu_gauge(
                "gpuwatch_mig_info",
                "A MIG device of the GPU (nvmlDeviceGetMigDeviceHandleByIndex): its UUID, profile as nvidia-smi "
                "names it, GPU instance and compute instance ids; always 1.",
                g,
                1.0,
                mig=mig,
                mig_uuid=m.uuid,
                profile=m.profile,
                gi=str(m.gpu_instance_id),
                ci=str(m.compute_instance_id),
            )
            f.gpu_gauge(
                "gpuwatch_mig_memory_size_bytes",
                "Memory of the MIG device (nvmlDeviceGetAttributes memorySizeMB).",
                g,
                m.memory_size_bytes,
                mig=mig,
            )
            f.gpu_gauge(
                "gpuwatch_mig_memory_used_bytes",
                "Memory in use on the MIG device (nvmlDeviceGetMemoryInfo on its handle).",
                g,
                m.memory_used_bytes,
                mig=mig,
            )
            f.gpu_gauge(
                "gpuwatch_mig_processes",
                "Compute processes on the MIG device (nvmlDeviceGetComputeRunningProcesses on its handle), "
                "refreshed on the process interval.",
                g,
                m.processes,
                mig=mig,
            )
            for key, name, what in _RATIOS:
                f.gpu_gauge(name, f"{what}, 0-1, {_GPM}.", g, m.activity_ratio.get(key), mig=mig)
    return f
