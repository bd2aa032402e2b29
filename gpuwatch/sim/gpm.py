"""Simulated GPM: counters that follow each GPU's (and MIG instance's) work, sampled as NVML samples them.

GPM on a real Hopper counts, per cycle, how many SMs were busy, how many warps were resident,
which pipes issued and how much DRAM bandwidth was used; two samples give averages over the time
between them. Here each simulated step adds each ratio times the step's length to a running
integral, and a sample copies the integrals and the simulated time; ``nvmlGpmMetricsGet`` divides
the differences by the time between two samples, exactly as averages over the window.

The ratios come from the share of the time the GPU did real work (:attr:`SimGpu.sm_active` of
``physics.py``: its load, less the time a tensor-parallel member waits at a collective, where
NCCL's waiting kernel keeps nvidia-smi's GPU-Util up but does little) times what a kernel of its
kind keeps busy while it runs (:data:`WORK`). So a decode GPU at 100 % utilization shows SM active
well below it and DRAM high, prefill and dense compute show the tensor pipes busy, an idle GPU
zeros, and the partner of a slowed tensor-parallel member shows SM active falling while its
utilization stays up. The per-kind figures are a model, not a measurement: decode
reads every weight once per token (memory-bound, few SMs busy for long), prefill and matmul are
compute-bound (dcgm-exporter users report SM active 30-40 % for busy decode servers; see the README).

GPM exists on Hopper and newer (``nvmlGpmQueryDeviceSupport``); NVLink byte rates only where the
card has NVLink, traffic flowing while a server spans several GPUs (its tensor-parallel
all-reduces). On a MIG-enabled GPU the parent's own sample is NotSupported [inferred: per-instance
samples are what DCGM reads under MIG]; ``nvmlGpmMigSampleGet`` samples one GPU instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpuwatch.sim import abi

if TYPE_CHECKING:
    from gpuwatch.sim.mig import SimMig
    from gpuwatch.sim.nvlink import NvLinkFabric
    from gpuwatch.sim.physics import SimGpu
    from gpuwatch.sim.scenario import Scenario

MIB = 1024 * 1024

# While a kernel runs (per unit of utilization): SM active, SM occupancy, tensor, DRAM, FP16, FP32, FP64.
_RATIOS = (
    abi.GPM_SM_UTIL,
    abi.GPM_SM_OCCUPANCY,
    abi.GPM_ANY_TENSOR_UTIL,
    abi.GPM_DRAM_BW_UTIL,
    abi.GPM_FP16_UTIL,
    abi.GPM_FP32_UTIL,
    abi.GPM_FP64_UTIL,
)
WORK: dict[str, tuple[float, ...]] = {
    "decode": (0.38, 0.20, 0.12, 0.82, 0.04, 0.08, 0.0),
    "prefill": (0.90, 0.45, 0.72, 0.38, 0.06, 0.12, 0.0),
    "compute": (0.96, 0.55, 0.88, 0.30, 0.03, 0.10, 0.0),
}
# Bytes/s at full utilization: PCIe as physics.py's counters grow (NVLink comes from sim/nvlink.py's counters).
_PCIE_TX, _PCIE_RX, _PCIE_IDLE = 1.5e9, 0.6e9, 50e3
_RATES = (
    abi.GPM_PCIE_TX_PER_SEC,
    abi.GPM_PCIE_RX_PER_SEC,
    abi.GPM_NVLINK_TOTAL_TX_PER_SEC,
    abi.GPM_NVLINK_TOTAL_RX_PER_SEC,
)
_MIG_METRICS = frozenset(_RATIOS[:4])  # per instance: SM active, occupancy, tensor, DRAM

Key = tuple[int, int]  # (GPU index, GPU instance id; -1 for the whole GPU)


@dataclass(frozen=True, slots=True)
class Sample:
    """What a sample buffer holds: whose counters, when, and their integrals then."""

    key: Key
    time_s: float
    integrals: dict[int, float]


class SimGpm:
    """Running integrals per GPU and per MIG instance, and the sample buffers callers allocate."""

    def __init__(self, gpus: list[SimGpu], scenario: Scenario, mig: SimMig, nvlink: NvLinkFabric) -> None:
        self._gpus = gpus
        self._mig = mig
        self._nvlink = nvlink
        served: dict[int, int] = {}
        for server in scenario.servers:
            for i in server.gpus:
                served[i] = len(server.gpus)
        self.workload = {g.index: g.spec.workload or ("decode" if g.index in served else "compute") for g in gpus}
        self._integrals: dict[Key, dict[int, float]] = {}
        self.time_s = 0.0
        self.samples: dict[int, Sample | None] = {}  # buffer id -> its latest sample
        self._made = 0

    @staticmethod
    def supported(gpu: SimGpu) -> bool:
        return gpu.profile.architecture >= abi.ARCH_HOPPER

    def step(self, dt: float, time_s: float) -> None:
        """Add one step of every supported GPU's (and MIG instance's) activity."""
        self.time_s = time_s
        for gpu in self._gpus:
            if not self.supported(gpu) or gpu.state.lost:
                continue
            if self._mig.enabled(gpu):
                # GPM counts per GPU instance: once for each, however many compute instances split it
                instances = {m.gpu_instance_id: m.spec for m in self._mig.of(gpu)}
                for gi, spec in instances.items():
                    self._add((gpu.index, gi), spec.workload, spec.load, dt, gpu=None)
                continue
            self._add((gpu.index, -1), self.workload[gpu.index], gpu.sm_active, dt, gpu)

    def _add(self, key: Key, kind: str, utilization: float, dt: float, gpu: SimGpu | None) -> None:
        sums = self._integrals.setdefault(key, dict.fromkeys(_RATIOS + _RATES, 0.0))
        for metric, per_unit in zip(_RATIOS, WORK[kind], strict=True):
            sums[metric] += per_unit * utilization * dt
        if gpu is None:
            return
        busy = utilization > 0
        sums[abi.GPM_PCIE_TX_PER_SEC] += (_PCIE_TX * gpu.load if busy else _PCIE_IDLE) * dt
        sums[abi.GPM_PCIE_RX_PER_SEC] += (_PCIE_RX * gpu.load if busy else _PCIE_IDLE) * dt
        # NVLink: the bytes the links' own counters have moved (sim/nvlink.py), so GPM's all-link rate
        # and gpuwatch_gpu_nvlink_bytes_total tell one story, as on a real card
        tx, rx = self._nvlink.data_bytes(gpu.index)
        sums[abi.GPM_NVLINK_TOTAL_TX_PER_SEC], sums[abi.GPM_NVLINK_TOTAL_RX_PER_SEC] = tx, rx

    # -- samples ----------------------------------------------------------------------------------

    def alloc(self) -> int:
        self._made += 1
        self.samples[self._made] = None
        return self._made

    def free(self, buffer: int) -> bool:
        return self.samples.pop(buffer, False) is not False

    def take(self, buffer: int, key: Key) -> bool:
        """Fill a buffer with the integrals of ``key`` now; False for an unknown buffer."""
        if buffer not in self.samples:
            return False
        sums = self._integrals.setdefault(key, dict.fromkeys(_RATIOS + _RATES, 0.0))
        self.samples[buffer] = Sample(key, self.time_s, dict(sums))
        return True

    def metric(self, first: Sample, second: Sample, metric_id: int) -> float | None:
        """One metric over the window between two samples of the same GPU (instance); None: not
        supported there (a rate on a MIG instance, NVLink without links, an id not simulated)."""
        gpu = self._gpus[first.key[0]]
        mig = first.key[1] >= 0
        if metric_id not in first.integrals or (mig and metric_id not in _MIG_METRICS):
            return None
        if (
            metric_id in (abi.GPM_NVLINK_TOTAL_TX_PER_SEC, abi.GPM_NVLINK_TOTAL_RX_PER_SEC)
            and gpu.profile.nvlink_links == 0
        ):
            return None
        window = second.time_s - first.time_s
        delta = second.integrals[metric_id] - first.integrals[metric_id]
        if metric_id in _RATES:
            return max(0.0, delta) / window / MIB  # the link counters restart with the driver
        return min(100.0, 100.0 * delta / window)
