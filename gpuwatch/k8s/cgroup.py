"""The container and pod of a process, from its ``/proc/PID/cgroup``.

Each container runtime names a container's cgroup its own way, under the kubelet's pod cgroup:

==========================  ===========================================================================
containerd, systemd driver  ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID_>.slice/cri-containerd-<ID>.scope``
CRI-O, systemd driver       ``…-pod<UID_>.slice/crio-<ID>.scope`` (``crio-conmon-<ID>.scope`` is its monitor, not the container)
Docker, systemd driver      ``…-pod<UID_>.slice/docker-<ID>.scope``; outside Kubernetes ``/system.slice/docker-<ID>.scope``
cgroupfs driver             ``/kubepods/burstable/pod<UID>/<ID>`` (containerd, Docker), ``…/crio-<ID>`` (CRI-O); ``/docker/<ID>``
==========================  ===========================================================================

The systemd driver writes the pod UID with ``_`` for ``-`` (a ``-`` nests slices); a guaranteed pod
has no QoS level (``kubepods-pod<UID_>.slice``); kind prefixes ``kubelet-``; and a process seen from
inside another cgroup namespace shows a path relative to it (``0::/../../kubepods-…``). cgroup v1
lists one line per hierarchy (``N:controllers:path``), v2 one line ``0::path``; a hybrid host has
both, and the v1 lines name the container while the v2 line may be ``/``. Container ids are 64 hex
digits in every runtime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
_POD = re.compile(rf"pod({_UID})(?:\.slice)?$")
_CONTAINER = re.compile(r"^(?:(cri-containerd|crio|docker|containerd)-)?([0-9a-f]{64})(?:\.scope)?$")
_RUNTIME = {"cri-containerd": "containerd", "containerd": "containerd", "crio": "cri-o", "docker": "docker"}


@dataclass(frozen=True, slots=True)
class Container:
    """A process's container: its runtime's id, the runtime when the cgroup names it, and the pod's
    UID when the kubelet made the cgroup (None outside Kubernetes)."""

    container_id: str
    runtime: str | None = None  # containerd, cri-o or docker; None where the cgroupfs path says no name
    pod_uid: str | None = None


def parse(text: str) -> Container | None:
    """The container a ``/proc/PID/cgroup`` text places its process in; None for a process in no
    container (a host service, a login session, a runtime's monitor process)."""
    for path in _paths(text):
        found = _from_path(path)
        if found is not None:
            return found
    return None


def _paths(text: str) -> list[str]:
    """The cgroup paths of each hierarchy, the v1 ones first (on a hybrid host the v2 line is ``/``)."""
    v1: list[str] = []
    v2: list[str] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        (v2 if parts[0] == "0" and parts[1] == "" else v1).append(parts[2].strip())
    return v1 + v2


def _from_path(path: str) -> Container | None:
    parts = [p for p in path.split("/") if p and p != ".."]
    if len(parts) >= 2 and parts[-1] == "container":
        parts = parts[:-1]  # crun (CRI-O's usual runtime) on cgroup v2 puts the process in a sub-cgroup so named
    if not parts:
        return None
    match = _CONTAINER.match(parts[-1])
    if match is None:
        return None
    prefix, container_id = match.groups()
    pod_uid = None
    for part in reversed(parts[:-1]):
        pod = _POD.search(part)
        if pod is not None:
            pod_uid = pod.group(1).replace("_", "-")
            break
    runtime = _RUNTIME.get(prefix or "")
    if runtime is None and len(parts) >= 2 and parts[-2] == "docker":
        runtime = "docker"
    return Container(container_id=container_id, runtime=runtime, pod_uid=pod_uid)


def read(pid: int, proc: str = "/proc") -> Container | None:
    """:func:`parse` of ``/proc/PID/cgroup``; None when it cannot be read (the process ended, or
    belongs to a PID namespace this one cannot see)."""
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            return parse(f.read(64 * 1024))
    except OSError:
        return None
