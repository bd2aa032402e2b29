"""The data that flows from the NVML reader to the exporter and `gpuwatch status`.

Immutable records in SI units (watts, joules, °C, hertz, bytes, seconds, ratios 0-1): frozen
dataclasses, and for those built every poll, ``@record`` (frozen to mypy, see gpuwatch/records.py).
``None`` always means "this GPU or driver does not report it"; it is never a zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gpuwatch.records import Efficiency, SourceLedger, ThrottleSummary, Verdict, record

UNKNOWN_VERDICT = Verdict("unknown", ("not polled yet",), {})


@dataclass(frozen=True, slots=True)
class GpuIdentity:
    """What a GPU is, read once when the reader opens it."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    serial: str | None = None
    vbios_version: str | None = None
    power_limit_default_watts: float | None = None
    power_limit_min_watts: float | None = None
    power_limit_max_watts: float | None = None
    # shutdown, slowdown, max_operating, memory_max, target in °C (nvmlDeviceGetTemperatureThreshold);
    # absent where not reported (Ada and Hopper on most drivers)
    temperature_thresholds_celsius: Mapping[str, float] = field(default_factory=dict)
    # shutdown, slowdown, max_operating, memory_max as offsets from the T.Limit point (field ids
    # 193-196, R535+): -8, -2, 0 on an H100; absent where not reported (Ampere and older)
    temperature_tlimit_celsius: Mapping[str, float] = field(default_factory=dict)
    max_clocks_hertz: Mapping[str, float] = field(default_factory=dict)
    memory_size_bytes: int | None = None
    bar1_size_bytes: int | None = None
    ecc_enabled: bool | None = None
    pcie_max_generation: int | None = None
    pcie_max_width: int | None = None


@record
class GpuReading:
    """One poll of one GPU."""

    timestamp: float
    power_watts: float | None = None
    power_instant_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None  # the driver's counter, since driver load
    temperature_celsius: float | None = None
    memory_temperature_celsius: float | None = None
    temperature_margin_celsius: float | None = None
    fan_speed_ratio: float | None = None
    performance_state: int | None = None
    clocks_hertz: Mapping[str, float] = field(default_factory=dict)
    utilization_ratio: Mapping[str, float] = field(default_factory=dict)
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_reserved_bytes: int | None = None
    bar1_used_bytes: int | None = None
    clock_event_reasons: frozenset[str] | None = None
    violation_seconds: Mapping[str, float] = field(default_factory=dict)
    ecc_errors: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (type, scope) -> count
    retired_pages: Mapping[str, int] = field(default_factory=dict)
    retired_pages_pending: bool | None = None
    remapped_rows: Mapping[str, int] = field(default_factory=dict)
    row_remap_pending: bool | None = None
    row_remap_failure: bool | None = None
    pcie_link_generation: int | None = None
    pcie_link_width: int | None = None
    pcie_replay_errors: int | None = None
    pcie_transmit_bytes: int | None = None
    pcie_receive_bytes: int | None = None
    # GPM (Hopper and newer), over the interval since the previous poll's sample (gpuwatch/nvml/gpm.py):
    # sm_active, sm_occupancy, tensor_active, dram_active, fp16_active, fp32_active, fp64_active;
    # empty on cards without GPM, on the first poll and after a gap (the sample is reseeded)
    activity_ratio: Mapping[str, float] = field(default_factory=dict)
    # from GPM too: (link, direction) -> bytes/s, link pcie or nvlink, direction transmit or receive
    interconnect_bytes_per_second: Mapping[tuple[str, str], float] = field(default_factory=dict)
    mig_enabled: bool | None = None  # None: the card has no MIG mode (nvmlDeviceGetMigMode NotSupported)
    mig_instances: tuple[MigReading, ...] = ()  # with MIG enabled, each MIG device (gpuwatch/nvml/mig.py)
    # privilege-sensitive queries by name -> whether the service user may ask them (NoPermission: False)
    permitted_queries: Mapping[str, bool] = field(default_factory=dict)

    # NVLink (issue 17), read on the slow loop; empty on cards without NVLink (gpuwatch.nvml.nvlink)
    nvlink_active: Mapping[int, bool] = field(default_factory=dict)  # link -> active
    nvlink_bytes: Mapping[tuple[int, str], int] = field(default_factory=dict)  # (link, direction) -> bytes
    nvlink_errors: Mapping[tuple[int, str], int] = field(default_factory=dict)  # (link, type) -> count
    # what the driver asks before the GPU is trusted again (labels.RECOVERY_ACTIONS; R570+)
    recovery_action: str | None = None


@record
class MigReading:
    """One MIG device (a compute instance of a GPU instance) in one poll."""

    index: int  # the MIG device index under its parent (nvmlDeviceGetMigDeviceHandleByIndex)
    uuid: str  # MIG-…
    profile: str  # as nvidia-smi names it: 1g.18gb, or 1c.3g.71gb for a compute instance smaller than its GI
    gpu_instance_id: int
    compute_instance_id: int
    memory_size_bytes: int | None = None
    memory_used_bytes: int | None = None
    # GPM of its GPU instance (nvmlGpmMigSampleGet): sm_active, sm_occupancy, tensor_active, dram_active
    activity_ratio: Mapping[str, float] = field(default_factory=dict)
    processes: int | None = None  # compute processes on this MIG device; None when not listed


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A process holding GPU memory (from the slower process loop)."""

    pid: int
    name: str | None
    user: str | None
    used_memory_bytes: int | None
    # share of the GPU's SMs and memory bandwidth this process used since the last listing
    # (nvmlDeviceGetProcessUtilization); None where the driver gave no sample for it
    sm_ratio: float | None = None
    memory_ratio: float | None = None


@record
class GpuStatus:
    """A GPU as the latest poll left it."""

    identity: GpuIdentity
    up: bool
    # None when the GPU did not answer; while a read hangs (stale_since set), the last poll's that did
    reading: GpuReading | None = None
    error: str | None = None
    stale_since: float | None = None  # when the read that has not returned began; the values are older
    # degrees left before the max-operating point: the driver's margin, else max_operating - temperature
    temperature_margin_celsius: float | None = None
    # absolute thresholds in °C: the driver's, or derived from its T.Limit offsets (analysis/thermal.py)
    temperature_thresholds_celsius: Mapping[str, float] = field(default_factory=dict)
    temperature_reference: str | None = None  # absolute, tlimit, margin or none (analysis/thermal.py)
    energy_joules_total: float | None = None  # reset-safe: never decreases while gpuwatch runs
    energy_resets: int = 0  # times the driver's energy counter went back (driver reload, GPU reset)
    violation_seconds_total: Mapping[str, float] = field(default_factory=dict)  # reset-safe
    ecc_errors_total: Mapping[tuple[str, str], float] = field(default_factory=dict)  # reset-safe
    pcie_counters_total: Mapping[str, float] = field(default_factory=dict)  # replay_errors, *_bytes; reset-safe
    processes: tuple[GpuProcess, ...] = ()
    throttle: ThrottleSummary | None = None  # over the health window
    clocks_event_seconds: Mapping[str, float] = field(default_factory=dict)  # time each reason was active
    xid_errors: Mapping[int, int] = field(default_factory=dict)  # Xid -> count since gpuwatch started
    recent_xids: tuple[tuple[float, int], ...] = ()  # (timestamp, Xid), newest last
    verdict: Verdict = UNKNOWN_VERDICT
    # NVLink counters made reset-safe (issue 17): (link, direction) -> bytes, (link, type) -> errors
    nvlink_bytes_total: Mapping[tuple[int, str], float] = field(default_factory=dict)
    nvlink_errors_total: Mapping[tuple[int, str], float] = field(default_factory=dict)
    # what NVIDIA's Xid catalogue recommends for each Xid in xid_errors (analysis/xid_catalogue.py)
    xid_actions: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """A token source (an inference server's counters) as the latest poll left it."""

    name: str
    url: str
    up: bool  # its latest scrape gave token counts
    error: str | None = None  # why not, when not up
    preset: str | None = None  # recognised or configured; None before the first good scrape
    gpus: tuple[int, ...] = ()  # the GPUs serving it; empty while unknown
    gpus_from: str = "config"  # "config" or "auto"
    tokens_total: Mapping[str, float] = field(default_factory=dict)  # kind -> reset-safe count
    efficiency: Efficiency | None = None  # over the window; None until a window is complete
    last_scrape_timestamp: float | None = None
    scrape_duration_seconds: float | None = None
    # the energy ledger (analysis/ledger.py): None until its GPUs first gave energy while it was up
    ledger: SourceLedger | None = None
    # [cost]: price per million tokens over the efficiency window, by kind (generation, total)
    cost_per_million_tokens: Mapping[str, float] = field(default_factory=dict)
    currency: str | None = None  # of that price; None without a configured price
    # the models the server holds in memory, where it lists them (Ollama's /api/ps; presets: ollama)
    models: tuple[LoadedModel, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything gpuwatch knows after one poll; immutable, replaced whole by the next poll."""

    timestamp: float
    nvml_up: bool
    nvml_error: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpus: tuple[GpuStatus, ...] = ()
    poll_duration_seconds: float = 0.0
    polls_total: int = 0
    nvml_errors_total: Mapping[tuple[int, str], int] = field(default_factory=dict)  # (GPU index, query) -> count
    verdict: Verdict = UNKNOWN_VERDICT  # the host's: the worst GPU, or unknown without NVML
    # token sources, in configured order: never filled by the sampler, but merged in at render time
    # from the token tracker's own SourcesSnapshot (gpuwatch.runtime.MergedSnapshot)
    sources: tuple[SourceStatus, ...] = ()
    # pods holding the GPUs and their processes on a Kubernetes node: merged in at render time, from
    # gpuwatch.k8s.pods (None where pod attribution does not run)
    pods: PodsSnapshot | None = None
    # whether the kernel log's Xid lines can be read (gpuwatch.xidlog); None when no log is read
    xid_log_readable: bool | None = None


@dataclass(frozen=True, slots=True)
class SourcesSnapshot:
    """The token tracker's view after taking in one GPU snapshot; replaced whole, like a Snapshot.

    Energy is that of the GPU poll at ``gpu_timestamp``; token counts are those scraped after the
    poll before it (a scrape starts when a poll wakes it), so tokens lag energy by one poll. The
    efficiency window lines the two series up by their own timestamps, so the lag costs no accuracy.
    """

    gpu_timestamp: float  # of the GPU snapshot whose energy this took in
    sources: tuple[SourceStatus, ...] = ()


# -- pod attribution (gpuwatch/k8s/) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class PodRef:
    """A container of a pod, as the kubelet names it."""

    namespace: str
    pod: str
    container: str


@dataclass(frozen=True, slots=True)
class ProcessPod:
    """What a GPU process's cgroup says (container id, pod UID), and the pod its GPU is allocated to."""

    pid: int
    gpu_uuid: str
    pod: PodRef | None = None  # the GPU's only owner by the kubelet's PodResources API
    container_id: str | None = None  # from /proc/PID/cgroup
    pod_uid: str | None = None


@dataclass(frozen=True, slots=True)
class PodsSnapshot:
    """Pod attribution after one refresh (gpuwatch/k8s/pods.py); replaced whole, like a Snapshot."""

    timestamp: float
    gpus: Mapping[str, tuple[PodRef, ...]] = field(default_factory=dict)  # GPU (or MIG) UUID -> owners
    processes: tuple[ProcessPod, ...] = ()
    host_pid_namespace: bool | None = None  # None: not known; False: NVML's PIDs are not this /proc's
    pod_resources_up: bool | None = None  # None: no PodResources socket (or no grpcio)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model an inference server holds in memory, as it lists it (Ollama's ``/api/ps``)."""

    name: str
    size_bytes: int  # all of its memory, VRAM and system memory
    vram_bytes: int  # the part in GPU memory
    context_length: int | None = None  # the context allocated, where the server says
