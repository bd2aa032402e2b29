"""Pods on a Kubernetes node: which pod and container holds each GPU, each GPU process and each
token source, as info series to join on (``* on (gpu, uuid) group_left (namespace, pod, container)``)."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.model import PodRef, Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "the pod and container of each GPU, GPU process and token source on a Kubernetes node"


def collect(snapshot: Snapshot) -> Families:
    return collect_with(snapshot)


def collect_with(snapshot: Snapshot, processes: bool = True, pid: bool = True) -> Families:
    """:func:`collect`, with the collector switches' say on per-process series: none while the
    ``processes`` collector is off (``--no-collector.processes`` exports no ``gpuwatch_gpu_process_``
    series), and without ``pid`` (``--no-collector.processes.pid``) one per GPU and container."""
    f = Families()
    pods = snapshot.pods
    if pods is None:
        return f
    f.gauge(
        "gpuwatch_host_pid_namespace",
        "1 when gpuwatch shares the host's PID namespace, so NVML's process IDs name processes it can see; "
        "0 when it does not (GPU processes are then not attributed to pods: run with hostPID).",
        None if pods.host_pid_namespace is None else int(pods.host_pid_namespace),
    )
    f.gauge(
        "gpuwatch_pod_resources_up",
        "1 when the kubelet's PodResources API answered the latest List, 0 when it did not; absent without its socket.",
        None if pods.pod_resources_up is None else int(pods.pod_resources_up),
    )
    by_uuid = {gpu.identity.uuid: gpu.identity for gpu in snapshot.gpus}
    for uuid, owners in sorted(pods.gpus.items()):
        identity = by_uuid.get(uuid)
        if identity is None:
            continue  # a MIG device, or a GPU NVML does not list
        for owner in owners:
            f.gpu_gauge(
                "gpuwatch_gpu_pod_info",
                "The pod and container a GPU is allocated to, by the kubelet's PodResources API (List); "
                "several where the GPU is time-sliced.",
                identity,
                1,
                **_labels(owner),
            )
    seen = set()
    for proc in pods.processes if processes else ():
        identity = by_uuid.get(proc.gpu_uuid)
        if identity is None:
            continue
        pod = proc.pod or PodRef("", "", "")
        pid_label = {"pid": str(proc.pid)} if pid else {}
        key = (proc.gpu_uuid, proc.pid if pid else None, pod, proc.container_id, proc.pod_uid)
        if key in seen:
            continue
        seen.add(key)
        f.gpu_gauge(
            "gpuwatch_gpu_process_pod_info",
            "The pod of a GPU process: namespace, pod and container from its GPU's only owner (PodResources), "
            "container_id and pod_uid from /proc/PID/cgroup; empty where not known.",
            identity,
            1,
            **pid_label,
            **_labels(pod),
            container_id=proc.container_id or "",
            pod_uid=proc.pod_uid or "",
        )
    for source in snapshot.sources:
        holders = {
            owner
            for gpu in snapshot.gpus
            if gpu.identity.index in source.gpus
            for owner in pods.gpus.get(gpu.identity.uuid, ())
        }
        if len(holders) == 1:
            f.gauge(
                "gpuwatch_source_pod_info",
                "The pod and container of a token source: the one container its GPUs are allocated to (PodResources).",
                1,
                source=source.name,
                **_labels(holders.pop()),
            )
    return f


def _labels(pod: PodRef) -> dict[str, str]:
    return {"namespace": pod.namespace, "pod": pod.pod, "container": pod.container}
