"""Pod attribution (gpuwatch/k8s/): cgroup files of each runtime, the PID namespace check, the
kubelet's PodResources API over a unix socket (a local grpc server built from its api.proto), and
the labels they give."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpuwatch.k8s import cgroup, pidns

CGROUPS = Path(__file__).parent / "data" / "cgroup"
CONTAINER = "3f8c2b9a1d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"
CRIO = "9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"
DOCKER = "5be07c1f2a9d48e3b6c0f1a27d9e4b58c3a6f0d1e2b7c4a95f8e3d2c1b0a9f87"
POD_UID = "7e1d9c42-58ab-4f0e-9c3d-b2a61f7e8d05"


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("containerd-systemd-v2", cgroup.Container(CONTAINER, "containerd", POD_UID)),
        ("containerd-systemd-v1", cgroup.Container(CONTAINER, "containerd", POD_UID)),
        ("containerd-cgroupfs-v2", cgroup.Container(CONTAINER, None, POD_UID)),
        ("containerd-kind-v2", cgroup.Container(CONTAINER, "containerd", POD_UID)),
        ("containerd-guaranteed-cgroupns-v2", cgroup.Container(CONTAINER, "containerd", POD_UID)),
        ("crio-systemd-v2", cgroup.Container(CRIO, "cri-o", POD_UID)),
        ("crio-crun-systemd-v2", cgroup.Container(CRIO, "cri-o", POD_UID)),  # crun's sub-cgroup "container"
        ("crio-cgroupfs-v1", cgroup.Container(CRIO, "cri-o", POD_UID)),
        ("docker-kubernetes-cgroupfs-v1", cgroup.Container(DOCKER, None, POD_UID)),
        ("docker-kubernetes-systemd-v2", cgroup.Container(DOCKER, "docker", POD_UID)),
        ("docker-plain-v1", cgroup.Container(DOCKER, "docker", None)),
        ("docker-plain-systemd-v2", cgroup.Container(DOCKER, "docker", None)),
        ("crio-conmon-v2", None),  # CRI-O's monitor process: not in the container
        ("host-process-v2", None),
        ("host-service-v1", None),
    ],
)
def test_the_container_and_pod_of_each_runtime_and_cgroup_version(fixture, expected):
    assert cgroup.parse((CGROUPS / f"{fixture}.txt").read_text()) == expected


def test_every_cgroup_fixture_is_tested():
    """Each fixture file is named in this module (a parametrized case or a test of its own)."""
    here = Path(__file__).read_text()
    untested = sorted(p.stem for p in CGROUPS.glob("*.txt") if f'"{p.stem}"' not in here)
    assert not untested and len(list(CGROUPS.glob("*.txt"))) == 15, untested


@pytest.mark.parametrize("text", ["", "garbage", "0::", "0::/", "12:memory:/kubepods/pod" + "x" * 40])
def test_nothing_from_a_cgroup_file_that_names_no_container(text):
    assert cgroup.parse(text) is None


def test_a_process_gone_or_out_of_sight_has_no_cgroup(tmp_path):
    assert cgroup.read(12345, proc=str(tmp_path)) is None
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text((CGROUPS / "crio-systemd-v2.txt").read_text())
    assert cgroup.read(7, proc=str(tmp_path)) == cgroup.Container(CRIO, "cri-o", POD_UID)


# -- the PID namespace ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "status", "host"),
    [
        ("pid:[4026531836]", "Name:\tgpuwatch\nNSpid:\t4242\n", True),  # the initial namespace's fixed inode
        # a container without hostPID mounts its own /proc: one NSpid number, as on the host
        ("pid:[4026532612]", "Name:\tgpuwatch\nNSpid:\t1\n", False),
        (None, "Name:\tgpuwatch\nTgid:\t98765\nNSpid:\t98765\t7\nPPid:\t1\n", False),  # a /proc from above
        (None, "Name:\tgpuwatch\nNSpid:\t4242\n", None),  # one number alone does not say
        (None, "Name:\tgpuwatch\nTgid:\t4242\nPPid:\t1\n", None),  # a kernel before 4.1
    ],
)
def test_the_pid_namespace_from_its_inode(link, status, host):
    assert pidns.in_host_namespace(link, status) is host


def test_a_pid_namespace_of_its_own_is_not_the_host_s():
    """As in a pod without hostPID: a new PID namespace with its own /proc (unshare, where the
    kernel lets an unprivileged user namespace make one)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare here")
    code = "from gpuwatch.k8s import pidns; print(pidns.in_host_namespace(pidns.own_namespace(), pidns.own_status()))"
    run = subprocess.run(
        [unshare, "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if run.returncode != 0:
        pytest.skip(f"unshare refused here: {run.stderr.strip()[:200]}")
    assert run.stdout.strip() == "False"


def test_nvml_pids_this_namespace_lacks():
    assert pidns.pids_missing([10, 11, 4000, 4000], {1, 10, 11}) == [4000]


# -- the kubelet's PodResources API over its unix socket ------------------------------------------

grpc = pytest.importorskip("grpc")  # in the test extra; CI installs it

from concurrent import futures  # noqa: E402

from gpuwatch.k8s import podresources  # noqa: E402
from gpuwatch.k8s.v1 import api_pb2, api_pb2_grpc  # noqa: E402

GPU0 = "GPU-2f4e6a8c-1b3d-4f5a-9c7e-0d1f2a3b4c5d"
GPU1 = "GPU-8a9b0c1d-2e3f-4a5b-8c6d-7e8f9a0b1c2d"
MIG = "MIG-5c6d7e8f-9a0b-5c1d-2e3f-4a5b6c7d8e9f"


def pod(namespace: str, name: str, *containers: tuple[str, str, list[str]]) -> api_pb2.PodResources:
    return api_pb2.PodResources(
        name=name,
        namespace=namespace,
        containers=[
            api_pb2.ContainerResources(
                name=container, devices=[api_pb2.ContainerDevices(resource_name=resource, device_ids=ids)]
            )
            for container, resource, ids in containers
        ],
    )


class Kubelet(api_pb2_grpc.PodResourcesListerServicer):
    """The kubelet's side of the API, answering List with the pods given."""

    def __init__(self, pods: list[api_pb2.PodResources]) -> None:
        self.pods = pods
        self.calls = 0

    def List(self, request, context):  # the API's name
        self.calls += 1
        return api_pb2.ListPodResourcesResponse(pod_resources=self.pods)


@pytest.fixture
def kubelet(tmp_path):
    """A grpc server on a unix socket, as the kubelet serves pod-resources/kubelet.sock."""
    servers = []

    def start(pods: list[api_pb2.PodResources]) -> tuple[str, Kubelet]:
        path = str(tmp_path / f"kubelet-{len(servers)}.sock")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        servicer = Kubelet(pods)
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(servicer, server)
        server.add_insecure_port(f"unix://{path}")
        server.start()
        servers.append(server)
        return path, servicer

    yield start
    for server in servers:
        server.stop(grace=None)


def test_gpus_are_mapped_to_the_containers_they_are_allocated_to(kubelet):
    path, servicer = kubelet(
        [
            pod("llm", "vllm-0", ("server", "nvidia.com/gpu", [GPU0, GPU1]), ("sidecar", "cpu", [])),
            pod("batch", "embed-7f9c", ("worker", "nvidia.com/mig-1g.10gb", [MIG])),
            pod("kube-system", "nic-plugin", ("plugin", "example.com/nic", ["eth1"])),
        ]
    )
    owners = podresources.list_gpu_owners(path, timeout_s=5)
    assert owners == {
        GPU0: (podresources.PodRef("llm", "vllm-0", "server"),),
        GPU1: (podresources.PodRef("llm", "vllm-0", "server"),),
        MIG: (podresources.PodRef("batch", "embed-7f9c", "worker"),),
    }
    assert servicer.calls == 1


def test_a_time_sliced_gpu_is_owned_by_every_replica_holder(kubelet):
    path, _ = kubelet(
        [
            pod("a", "p1", ("c", "nvidia.com/gpu", [f"{GPU0}::0"])),
            pod("b", "p2", ("c", "nvidia.com/gpu", [f"{GPU0}::1"])),
        ]
    )
    assert podresources.list_gpu_owners(path, timeout_s=5) == {
        GPU0: (podresources.PodRef("a", "p1", "c"), podresources.PodRef("b", "p2", "c"))
    }


def test_no_socket_is_not_an_error_to_log_but_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        podresources.list_gpu_owners(str(tmp_path / "absent.sock"), timeout_s=1)


def test_a_socket_that_never_answers_costs_the_timeout_and_no_more(tmp_path):
    import socket
    import time

    path = str(tmp_path / "silent.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)  # accepts connections (the backlog) and never speaks HTTP/2
    try:
        started = time.monotonic()
        with pytest.raises(podresources.PodResourcesError, match=r"DEADLINE_EXCEEDED|UNAVAILABLE"):
            podresources.list_gpu_owners(path, timeout_s=0.5)
        assert time.monotonic() - started < 30  # a hang guard, not a speed target
    finally:
        listener.close()


def test_the_committed_stubs_are_what_protoc_makes_of_the_published_proto():
    pytest.importorskip("grpc_tools")
    from gpuwatch.k8s import stubs

    assert stubs.differences() == [], "run python -m gpuwatch.k8s.stubs and commit the result"


def test_the_api_is_the_kubelets_on_the_wire():
    service = api_pb2.DESCRIPTOR.services_by_name["PodResourcesLister"]
    assert service.full_name == "v1.PodResourcesLister"
    assert {m.name for m in service.methods} >= {"List", "GetAllocatableResources", "Get"}


def test_podresources_says_when_grpc_is_missing(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_grpc(name, *args, **kwargs):
        if name == "grpc" or name.startswith("grpc."):
            raise ImportError("No module named 'grpc'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_grpc)
    why = podresources.available()
    assert why is not None and "kubernetes extra" in why
    monkeypatch.undo()
    assert podresources.available() is None


# -- the attributor and what /metrics shows ----------------------------------------------------------

from gpuwatch.k8s.pods import PodAttributor  # noqa: E402
from gpuwatch.model import GpuIdentity, GpuProcess, GpuStatus, PodRef, Snapshot  # noqa: E402


def fake_proc(tmp_path: Path, nspid: str, cgroups: dict[int, str]) -> str:
    """A /proc with this process's status and some processes' cgroup files."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "status").write_text(f"Name:\tgpuwatch\nNSpid:\t{nspid}\n")
    # the namespace link as the kernel shows it: the initial namespace's inode for one NSpid number
    (proc / "self" / "ns").mkdir()
    inode = pidns.INIT_PID_NAMESPACE_INODE if "\t" not in nspid else 4026532612
    (proc / "self" / "ns" / "pid").symlink_to(f"pid:[{inode}]")
    for pid, fixture in cgroups.items():
        (proc / str(pid)).mkdir()
        (proc / str(pid) / "cgroup").write_text((CGROUPS / f"{fixture}.txt").read_text())
    return str(proc)


def gpu_snapshot(*pids_per_gpu: tuple[int, ...]) -> Snapshot:
    gpus = tuple(
        GpuStatus(
            identity=GpuIdentity(
                index=i, uuid=(GPU0, GPU1)[i], name="NVIDIA H100 80GB HBM3", pci_bus_id=f"0000:0{i}:00.0"
            ),
            up=True,
            processes=tuple(
                GpuProcess(pid=pid, name="python3", user="root", used_memory_bytes=1 << 30) for pid in pids
            ),
        )
        for i, pids in enumerate(pids_per_gpu)
    )
    return Snapshot(timestamp=1.0, nvml_up=True, gpus=gpus)


def test_processes_get_their_gpus_pod_and_their_own_container(tmp_path, kubelet):
    path, _ = kubelet([pod("llm", "vllm-0", ("server", "nvidia.com/gpu", [GPU0]))])
    proc = fake_proc(tmp_path, "4242", {100: "containerd-systemd-v2", 200: "crio-systemd-v2"})
    attributor = PodAttributor(lambda: 5.0, path, proc=proc)
    pods = attributor.refresh(gpu_snapshot((100,), (200, 300)))
    assert pods.host_pid_namespace is True and pods.pod_resources_up is True
    by_pid = {p.pid: p for p in pods.processes}
    assert by_pid[100].pod == PodRef("llm", "vllm-0", "server") and by_pid[100].container_id == CONTAINER
    assert by_pid[200].pod is None and by_pid[200].container_id == CRIO and by_pid[200].pod_uid == POD_UID
    assert 300 not in by_pid  # no cgroup to read, and its GPU has no owner


def test_outside_the_host_pid_namespace_no_process_is_attributed(tmp_path, kubelet, caplog):
    path, _ = kubelet([pod("llm", "vllm-0", ("server", "nvidia.com/gpu", [GPU0]))])
    proc = fake_proc(tmp_path, "98765\t7", {100: "containerd-systemd-v2"})
    attributor = PodAttributor(lambda: 5.0, path, proc=proc)
    with caplog.at_level("INFO"):
        pods = attributor.refresh(gpu_snapshot((100,)))
        attributor.refresh(gpu_snapshot((100,)))
    assert pods.host_pid_namespace is False and pods.processes == ()
    assert pods.gpus[GPU0] == (PodRef("llm", "vllm-0", "server"),)  # GPUs still, by UUID
    assert sum("not in the host's PID namespace" in r.message for r in caplog.records) == 1  # said once


def test_without_nspid_nvml_pids_missing_from_proc_mean_another_namespace(tmp_path):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "status").write_text("Name:\tgpuwatch\n")
    (proc / "1").mkdir()
    attributor = PodAttributor(lambda: 5.0, str(tmp_path / "absent.sock"), proc=str(proc))
    assert attributor.refresh(gpu_snapshot((1, 777))).host_pid_namespace is False
    assert attributor.refresh(gpu_snapshot((1,))).host_pid_namespace is True


def test_no_socket_means_cgroups_only_and_no_pod_resources_series(tmp_path):
    proc = fake_proc(tmp_path, "4242", {100: "docker-kubernetes-systemd-v2"})
    pods = PodAttributor(lambda: 5.0, str(tmp_path / "absent.sock"), proc=proc).refresh(gpu_snapshot((100,)))
    assert pods.pod_resources_up is None and pods.gpus == {}
    assert [(p.container_id, p.pod_uid) for p in pods.processes] == [(DOCKER, POD_UID)]


def test_a_simulated_node_exports_pod_info_for_gpus_and_token_sources(tmp_path, kubelet):
    from gpuwatch.runtime import RuntimeOptions, assemble
    from gpuwatch.sim.clock import ManualClock

    clock = ManualClock()
    with assemble(RuntimeOptions(simulate="inference-host", pods=True), clock=clock) as rt:
        rt.start(threads=False)
        clock.advance(1)
        snapshot = rt.step()
        uuids = [g.identity.uuid for g in snapshot.gpus]
        path, _ = kubelet([pod("llm", "vllm-0", ("server", "nvidia.com/gpu", uuids))])
        rt.pods.socket_path = path
        for t in (20, 40, 60):
            clock.advance(t - clock.sim_seconds())
            rt.step()
            rt.scrape_tokens()
        rt.refresh_pods()
        body = rt.exposition.render("")[0].decode()
    assert rt.pods.latest.pod_resources_up, rt.pods.latest
    from prometheus_client.parser import text_string_to_metric_families

    samples = {f.name: f.samples for f in text_string_to_metric_families(body)}
    server = {"namespace": "llm", "pod": "vllm-0", "container": "server"}
    gpu_pods = samples["gpuwatch_gpu_pod_info"]
    assert sorted(s.labels["uuid"] for s in gpu_pods) == sorted(uuids)
    assert all({k: s.labels[k] for k in server} == server for s in gpu_pods)
    assert [s.labels for s in samples["gpuwatch_source_pod_info"]] == [{"source": "vllm", **server}]
    assert samples["gpuwatch_pod_resources_up"][0].value == 1


def test_without_pid_the_process_pod_series_are_one_per_container(tmp_path, kubelet):
    from gpuwatch.collectors import CollectorSettings, select

    path, _ = kubelet([pod("llm", "vllm-0", ("server", "nvidia.com/gpu", [GPU0]))])
    proc = fake_proc(tmp_path, "4242", {100: "containerd-systemd-v2", 101: "containerd-systemd-v2"})
    gpus = gpu_snapshot((100, 101))
    pods = PodAttributor(lambda: 5.0, path, proc=proc).refresh(gpus)
    snapshot = Snapshot(timestamp=1.0, nvml_up=True, gpus=gpus.gpus, pods=pods)

    def series(settings: CollectorSettings) -> list[dict[str, str]]:
        families = select(settings)["pods"](snapshot)
        return [s.labels for f in families if f.name == "gpuwatch_gpu_process_pod_info" for s in f.samples]

    assert sorted(s["pid"] for s in series(CollectorSettings())) == ["100", "101"]
    assert [("pid" in s, s["container_id"]) for s in series(CollectorSettings(process_pid=False))] == [
        (False, CONTAINER)
    ]


def test_the_attributor_refreshes_on_its_own_thread_when_due(tmp_path, kubelet):
    from waiting import wait_until

    path, servicer = kubelet([pod("llm", "vllm-0", ("server", "nvidia.com/gpu", [GPU0]))])
    now = [100.0]
    attributor = PodAttributor(lambda: now[0], path, refresh_s=30, proc=fake_proc(tmp_path, "4242", {}))
    attributor.start()
    try:
        attributor.on_snapshot(gpu_snapshot(()))  # returns at once; the thread asks the kubelet
        assert wait_until(lambda: attributor.latest is not None, timeout_s=30, every_s=0.05)
        first = attributor.latest
        attributor.on_snapshot(gpu_snapshot(()))  # not due: 30 s have not passed
        now[0] = 131.0
        attributor.on_snapshot(gpu_snapshot(()))
        assert wait_until(lambda: attributor.latest is not first, timeout_s=30, every_s=0.05)
        assert servicer.calls == 2 and attributor.latest.gpus[GPU0] == (PodRef("llm", "vllm-0", "server"),)
    finally:
        attributor.stop(timeout_s=5)


def test_the_pod_series_pass_promtool(tmp_path, kubelet, promtool):
    import subprocess

    from prometheus_client import generate_latest

    from gpuwatch.exporter.registry import build_registry

    path, _ = kubelet([pod("llm", "vllm-0", ("server", "nvidia.com/gpu", [GPU0, GPU1]))])
    proc = fake_proc(tmp_path, "4242", {100: "containerd-systemd-v2"})
    gpus = gpu_snapshot((100,), ())
    snapshot = Snapshot(
        timestamp=1.0, nvml_up=True, gpus=gpus.gpus, pods=PodAttributor(lambda: 5.0, path, proc=proc).refresh(gpus)
    )
    text = generate_latest(build_registry(lambda: snapshot, include_process=False))
    assert b"gpuwatch_gpu_process_pod_info{" in text and b"gpuwatch_gpu_pod_info{" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, check=False)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_no_process_collector_means_no_process_pod_series_either(tmp_path, kubelet):
    from gpuwatch.collectors import CollectorSettings, select

    path, _ = kubelet([pod("llm", "vllm-0", ("server", "nvidia.com/gpu", [GPU0]))])
    gpus = gpu_snapshot((100,))
    proc = fake_proc(tmp_path, "4242", {100: "containerd-systemd-v2"})
    snapshot = Snapshot(
        timestamp=1.0, nvml_up=True, gpus=gpus.gpus, pods=PodAttributor(lambda: 5.0, path, proc=proc).refresh(gpus)
    )
    names = {f.name for f in select(CollectorSettings.from_keys({"processes": False}))["pods"](snapshot)}
    assert "gpuwatch_gpu_pod_info" in names
    assert not any(name.startswith("gpuwatch_gpu_process_") for name in names)


def test_owners_named_by_index_or_mig_uuid_are_the_gpus():
    """deviceIDStrategy=index names GPUs by NVML index, and MIG devices by their own UUID."""
    from gpuwatch.k8s.pods import by_gpu_uuid

    snapshot = gpu_snapshot((), ())
    first, second = (g.identity.uuid for g in snapshot.gpus)
    owners = {"0": (PodRef("ai", "llm-0", "vllm"),), second: (PodRef("ai", "llm-1", "vllm"),), "nvidia9": ()}
    keyed = by_gpu_uuid(owners, snapshot)
    assert keyed[first] == (PodRef("ai", "llm-0", "vllm"),)
    assert keyed[second] == (PodRef("ai", "llm-1", "vllm"),)
    assert "nvidia9" in keyed and "0" not in keyed
