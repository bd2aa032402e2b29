"""Simulated MIG: a GPU's instances, their handles, memory and processes, as the driver shows them.

What the h200-mig capture (shared/data/captures/h200-mig__590.48.01.txt, driver 590.48.01) shows,
and this simulates: with MIG enabled the parent answers utilization N/A (NotSupported); each MIG
device has a ``MIG-…`` UUID, a GPU instance id and a compute instance id (3g → GI 2, 2g → GI 3,
1g → GI 9 and 10), its own memory total (3g 71424 MiB, 2g 33280 MiB, 1g 16384 MiB), about 9-22 MiB
used while idle, and SM counts of 16 per slice of compute. Profile names come from the driver's
GPU instance profile info ("MIG 3g.71gb"). The 60 SMs of a 3g instance are NVIDIA's MIG user guide
figure for the Hopper 3g profile (the capture splits its 3g into 1c + 2c: 16 + 32).

As an unprivileged user NVML refuses a MIG-enabled GPU's parent-level memory and process queries
(NoPermission; shared/research/real-cards.md): :meth:`SimMig.parent_denied`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gpuwatch.sim.profiles import MIB

if TYPE_CHECKING:
    from gpuwatch.sim.physics import SimGpu
    from gpuwatch.sim.scenario import MigSpec, SimProcess

# profile -> (GPU instance slices, memory MiB, SMs, GPU instance ids in the order the driver places them)
SLICES, MEMORY_MIB, SMS, GI_IDS = 0, 1, 2, 3
MigProfile = tuple[int, int, int, tuple[int, ...]]
MIG_PROFILES: dict[str, dict[str, MigProfile]] = {
    "h200": {
        "1g.18gb": (1, 16384, 16, (9, 10, 11, 12, 13, 14, 7)),
        "2g.35gb": (2, 33280, 32, (3, 4, 5)),
        "3g.71gb": (3, 71424, 60, (2, 1)),
    },
}
MAX_MIG_DEVICES = 7  # nvmlDeviceGetMaxMigDeviceCount with MIG enabled (seven 1g instances at most)
_IDLE_USED_MIB = {1: 9, 2: 17, 3: 22}  # per GI slices, the h200-mig capture's idle instances


@dataclass(slots=True)
class SimMigInstance:
    """One MIG device: a compute instance of a GPU instance (all of it, unless the GI is split).

    The compute instances of one GPU instance share its memory: each shows the GI's total and
    use (the capture's 1c.3g.71gb and 2c.3g.71gb both show 22 of 71424 MiB)."""

    index: int
    spec: MigSpec
    uuid: str
    gpu_instance_id: int
    slices: int
    memory_mib: int
    sms: int
    processes: list[SimProcess] = field(default_factory=list)
    compute_instance_id: int = 0
    compute_slices: int = 0  # 0: the whole GPU instance
    gi_processes: list[SimProcess] = field(default_factory=list)  # of every compute instance of the GI

    @property
    def profile_name(self) -> str:
        return "MIG " + self.spec.profile

    def used_memory_bytes(self) -> int:
        return _IDLE_USED_MIB[min(self.slices, 3)] * MIB + sum(p.used_memory_bytes for p in self.gi_processes)


class SimMig:
    """The MIG instances of every simulated GPU (none on a GPU whose scenario lists no ``[[gpu.mig]]``)."""

    def __init__(self, gpus: list[SimGpu], seed: int) -> None:
        self.instances: dict[int, list[SimMigInstance]] = {}
        rng = random.Random(seed * 31337)
        for gpu in gpus:
            if not gpu.spec.mig:
                continue
            table = MIG_PROFILES[gpu.profile.key]
            used: dict[str, int] = {}
            found: list[SimMigInstance] = []
            for spec in gpu.spec.mig:
                slices, memory_mib, sms, gi_ids = table[spec.profile]
                gi = gi_ids[used.get(spec.profile, 0)]
                used[spec.profile] = used.get(spec.profile, 0) + 1
                # one compute instance over the GI, or those the scenario splits it into (the first
                # runs the GI's processes); 16 SMs per compute slice, as the capture's 1c and 2c show
                for ci, compute_slices in enumerate(spec.compute_instances or (0,)):
                    uuid = "MIG-" + "-".join(f"{rng.getrandbits(b):0{b // 4}x}" for b in (32, 16, 16, 16, 48))
                    procs = list(spec.processes) if ci == 0 else []
                    found.append(
                        SimMigInstance(
                            len(found),
                            spec,
                            uuid,
                            gi,
                            slices,
                            memory_mib,
                            16 * compute_slices if compute_slices else sms,
                            procs,
                            compute_instance_id=ci,
                            compute_slices=compute_slices,
                            gi_processes=list(spec.processes),
                        )
                    )
                # the parent lists them too (to a privileged caller), and they hold its memory
                gpu.processes.extend(spec.processes)
            self.instances[gpu.index] = found

    def enabled(self, gpu: SimGpu) -> bool:
        if gpu.index not in self.instances:
            return False
        later = any(f.kind == "mig_enable" for f in gpu.spec.faults)
        return not later or gpu.fault_active("mig_enable") is not None

    def of(self, gpu: SimGpu) -> list[SimMigInstance]:
        return self.instances.get(gpu.index, []) if self.enabled(gpu) else []

    def by_gpu_instance(self, gpu: SimGpu, gpu_instance_id: int) -> SimMigInstance | None:
        return next((m for m in self.of(gpu) if m.gpu_instance_id == gpu_instance_id), None)

    def parent_denied(self, gpu: SimGpu, privileged: bool) -> bool:
        """Whether a parent-level memory or process query of this GPU answers NoPermission."""
        return self.enabled(gpu) and not privileged
