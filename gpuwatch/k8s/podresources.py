"""The kubelet's PodResources v1 API: which pod and container each GPU is allocated to.

The kubelet serves ``List`` on a unix socket (default ``/var/lib/kubelet/pod-resources/kubelet.sock``,
mounted read-only into gpuwatch's pod): every pod on the node, its containers, and the devices each
was given, by resource name. The NVIDIA device plugin names GPUs by UUID (``GPU-…``) and MIG
devices by theirs (``MIG-…``) under ``nvidia.com/gpu`` or ``nvidia.com/mig-<profile>``; with
``deviceIDStrategy=index`` by NVML index; with time-slicing, a shared GPU's replicas as
``<id>::<n>``. This is how dcgm-exporter labels GPUs with pods too.

Bounded: one call with a deadline (a socket that accepts and never answers costs that long, no
more), on the slow path only (:mod:`gpuwatch.k8s.pods` caches the answer). Needs grpcio and
protobuf (the ``kubernetes`` extra: ``pip install '.[kubernetes]'`` in a clone); without them
:func:`available` says why.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from gpuwatch.model import PodRef

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
DEFAULT_TIMEOUT_S = 2.0
GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
MAX_MESSAGE_BYTES = 16 << 20  # the kubelet's own limit on a List answer (podresources.DefaultMaxMsgSize)


class PodResourcesError(Exception):
    """The kubelet's socket is there but did not answer ``List`` usefully; the message says how."""


def available() -> str | None:
    """None when grpcio and protobuf can be imported; else why not, for a log line."""
    try:
        import grpc  # noqa: F401

        from gpuwatch.k8s.v1 import api_pb2, api_pb2_grpc  # noqa: F401
    except ImportError as exc:
        return f"pod attribution via the kubelet's PodResources API needs grpcio and protobuf (the kubernetes extra: pip install '.[kubernetes]' in a clone): {exc}"
    except Exception as exc:  # the stubs' version check: a protobuf older than they were generated for
        return f"pod attribution via the kubelet's PodResources API cannot load its stubs: {type(exc).__name__}: {exc}"
    return None


def is_gpu_resource(name: str) -> bool:
    return name == GPU_RESOURCE or name.startswith(MIG_RESOURCE_PREFIX)


def device_key(device_id: str) -> str:
    """A device id as NVML names the device: a time-sliced replica's ``::n`` taken off."""
    return device_id.split("::", 1)[0]


def gpu_owners(response: Any) -> dict[str, tuple[PodRef, ...]]:
    """Device id (UUID, MIG UUID or index) -> the containers it is allocated to, from a
    ``ListPodResourcesResponse`` (more than one where a device is shared by time-slicing)."""
    owners: dict[str, set[PodRef]] = {}
    for pod in response.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                if not is_gpu_resource(devices.resource_name):
                    continue
                for device_id in devices.device_ids:
                    ref = PodRef(pod.namespace, pod.name, container.name)
                    owners.setdefault(device_key(device_id), set()).add(ref)
    return {device: tuple(sorted(refs)) for device, refs in owners.items()}


def list_gpu_owners(
    socket_path: str = DEFAULT_SOCKET, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Mapping[str, tuple[PodRef, ...]]:
    """Ask the kubelet once; raises :class:`PodResourcesError` (with why) or FileNotFoundError
    when there is no socket (gpuwatch is not on a Kubernetes node, or the socket is not mounted)."""
    import grpc

    from gpuwatch.k8s.v1 import api_pb2, api_pb2_grpc

    if not os.path.exists(socket_path):
        raise FileNotFoundError(socket_path)
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(f"unix://{socket_path}", options=options) as channel:
        stub = api_pb2_grpc.PodResourcesListerStub(channel)
        try:
            response = stub.List(api_pb2.ListPodResourcesRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") and exc.code() is not None else "error"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise PodResourcesError(f"{socket_path}: List answered {code}: {details}") from None
    return gpu_owners(response)
