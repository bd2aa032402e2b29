"""Pod attribution: the pods and containers that hold each GPU and each GPU process, refreshed on
a period of its own, off the poll thread.

The kubelet's PodResources API (:mod:`gpuwatch.k8s.podresources`) says which container each GPU is
allocated to; each GPU process's ``/proc/PID/cgroup`` (:mod:`gpuwatch.k8s.cgroup`) says its
container id and pod UID, which name the container where the socket is not mounted. A process is
given its GPU's pod only where the kubelet names one owner for that GPU (a time-sliced GPU has
several, and which one a process belongs to is not known from the GPU alone).

Nothing is read from ``/proc`` for NVML's PIDs unless gpuwatch shares the host's PID namespace
(:mod:`gpuwatch.k8s.pidns`): else those PIDs may name unrelated processes here. That is logged once
and exported as ``gpuwatch_host_pid_namespace 0``.

Threading: :meth:`PodAttributor.on_snapshot` (the sampler's subscriber, on the poll thread) only
hands the GPU snapshot over and wakes the attributor's own thread, which refreshes when the
refresh period has passed: a kubelet that does not answer holds that thread for the call's
deadline, never a poll. :meth:`refresh` does one refresh on the calling thread (tests, `status`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping

from gpuwatch.k8s import cgroup, pidns, podresources
from gpuwatch.model import PodRef, PodsSnapshot, ProcessPod, Snapshot

log = logging.getLogger(__name__)

DEFAULT_REFRESH_S = 30.0


class PodAttributor:
    """Refreshes a :class:`~gpuwatch.model.PodsSnapshot` from the latest GPU snapshot."""

    def __init__(
        self,
        clock: Callable[[], float],
        socket_path: str = podresources.DEFAULT_SOCKET,
        refresh_s: float = DEFAULT_REFRESH_S,
        timeout_s: float = podresources.DEFAULT_TIMEOUT_S,
        proc: str = "/proc",
    ) -> None:
        self._clock = clock
        self.socket_path = socket_path
        self.refresh_s = refresh_s
        self._timeout_s = timeout_s
        self._proc = proc
        self._gpus: Snapshot | None = None
        self._next_at = float("-inf")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._said: set[str] = set()  # log lines said once
        self.latest: PodsSnapshot | None = None

    def on_snapshot(self, snapshot: Snapshot) -> None:
        """The sampler's subscriber: keep the GPU snapshot, wake the thread (never blocks)."""
        self._gpus = snapshot
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gpuwatch-pods", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 0.5) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            snapshot = self._gpus
            if snapshot is not None and self._clock() >= self._next_at:
                try:
                    self.refresh(snapshot)
                except Exception:  # a bug here must not end attribution for good
                    log.exception("pod attribution failed; trying again in %gs", self.refresh_s)

    def refresh(self, snapshot: Snapshot) -> PodsSnapshot:
        """One refresh on this thread: ask the kubelet, read the GPU processes' cgroups; publish."""
        now = self._clock()
        self._next_at = now + self.refresh_s
        owners, up, error = self._owners()
        owners = by_gpu_uuid(owners, snapshot)
        host = self._host_pid_namespace(snapshot)
        processes = self._processes(snapshot, owners) if host else ()
        self.latest = PodsSnapshot(now, owners, processes, host, up, error)
        return self.latest

    def _owners(self) -> tuple[Mapping[str, tuple[PodRef, ...]], bool | None, str | None]:
        if not os.path.exists(self.socket_path):
            self._once(
                "socket",
                f"no kubelet PodResources socket at {self.socket_path}; containers named from cgroups only",
                level=logging.DEBUG,
            )
            return {}, None, None
        missing = podresources.available()
        if missing is not None:
            self._once("grpc", missing)
            return {}, None, missing
        try:
            owners = podresources.list_gpu_owners(self.socket_path, self._timeout_s)
        except (podresources.PodResourcesError, OSError) as exc:
            # once per kind of failure (every refresh would repeat it), and again after it answered
            self._once(f"kubelet: {type(exc).__name__}: {exc}", str(exc), level=logging.WARNING)
            return {}, False, str(exc)
        self._said = {said for said in self._said if not said.startswith("kubelet: ")}
        return owners, True, None

    def _host_pid_namespace(self, snapshot: Snapshot) -> bool | None:
        host = pidns.in_host_namespace(pidns.own_namespace(self._proc), pidns.own_status(self._proc))
        if host is None:  # the kernel does not say: NVML's PIDs must all be in this /proc
            listed = [p.pid for g in snapshot.gpus for p in g.processes]
            if listed:
                host = not pidns.pids_missing(listed, _visible_pids(self._proc))
        if host is False:
            self._once(
                "pidns",
                level=logging.WARNING,
                message="gpuwatch is not in the host's PID namespace: NVML's process IDs may name other processes here, "
                "so GPU processes are not attributed to pods (run with hostPID: true)",
            )
        return host

    def _processes(self, snapshot: Snapshot, owners: Mapping[str, tuple[PodRef, ...]]) -> tuple[ProcessPod, ...]:
        found = []
        for gpu in snapshot.gpus:
            gpu_owners = owners.get(gpu.identity.uuid, ())
            pod = gpu_owners[0] if len(gpu_owners) == 1 else None
            for proc in gpu.processes:
                container = cgroup.read(proc.pid, self._proc)
                if pod is None and container is None:
                    continue
                found.append(
                    ProcessPod(
                        pid=proc.pid,
                        gpu_uuid=gpu.identity.uuid,
                        pod=pod,
                        container_id=container.container_id if container else None,
                        pod_uid=container.pod_uid if container else None,
                    )
                )
        return tuple(found)

    def _once(self, key: str, message: str, level: int = logging.INFO) -> None:
        if key not in self._said:
            self._said.add(key)
            log.log(level, "pod attribution: %s", message)


def _visible_pids(proc: str) -> set[int]:
    try:
        return {int(name) for name in os.listdir(proc) if name.isdigit()}
    except OSError:
        return set()


def by_gpu_uuid(owners: Mapping[str, tuple[PodRef, ...]], snapshot: Snapshot) -> dict[str, tuple[PodRef, ...]]:
    """The kubelet's owners keyed by the GPU's UUID, whatever the device plugin names a device by:
    the GPU's UUID (its default), its NVML index (``deviceIDStrategy=index``), or a MIG device's
    UUID (``MIG-...``, owned with the other instances' pods by its parent GPU). A device id that
    names no GPU here is kept as it came."""
    by_index = {str(gpu.identity.index): gpu.identity.uuid for gpu in snapshot.gpus}
    by_mig = {
        instance.uuid: gpu.identity.uuid
        for gpu in snapshot.gpus
        if gpu.reading is not None
        for instance in gpu.reading.mig_instances
    }
    keyed: dict[str, tuple[PodRef, ...]] = {}
    for device, pods in owners.items():
        uuid = by_index.get(device) or by_mig.get(device) or device
        keyed[uuid] = tuple(dict.fromkeys((*keyed.get(uuid, ()), *pods)))
    return keyed
