"""MIG instances (their memory, processes and GPM busyness) and the queries a user may not ask."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.model import Snapshot

_GPM = (
    "from NVML GPM per GPU instance (nvmlGpmMigSampleGet) over the interval since the previous poll; "
    "with MIG enabled the parent GPU has no utilization or GPM series of its own (NVML answers NotSupported)"
)
_RATIOS = (
    ("sm_active", "gpuwatch_mig_sm_active_ratio", "Share of the instance's SMs busy"),
    ("sm_occupancy", "gpuwatch_mig_sm_occupancy_ratio", "Resident warps as a share of the instance's maximum"),
    ("tensor_active", "gpuwatch_mig_tensor_active_ratio", "Share of time any tensor pipe of the instance was busy"),
    ("dram_active", "gpuwatch_mig_dram_active_ratio", "The instance's DRAM bandwidth use as a share of its peak"),
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
