"""Simulated NVLink: per-link state, data counters driven by tensor-parallel servers, error counters.

Which cards have NVLink, and how many links, is the profile's (``nvlink_links``: 18 on H100/H200
SXM, 12 on A100 SXM, per the captures' ``nvidia-smi nvlink -s``); the rest answer NOT_SUPPORTED.

Traffic: a server whose GPU list spans several NVLink GPUs runs tensor parallel, and every token
it processes (prompt or generated) costs two all-reduces of the hidden state per layer. A ring
all-reduce of ``S`` bytes over ``tp`` GPUs sends (and receives) ``2 (tp - 1) / tp * S`` bytes per
GPU. The model's shape is not in the scenario, so a 70B-class dense model stands for all (80
layers, hidden size 8192, bf16): 2.6 MB of all-reduce per token. On an HGX board each GPU's links
all go to the NVSwitches, which spread the traffic evenly over them. The traffic is derived from the
servers' GPU lists alone, so any scenario with a multi-GPU server on NVLink parts shows it.

Errors: the ``nvlink_errors`` fault makes ``count`` CRC errors a second on its ``link`` for its
duration, each one replayed (a degrading link or cable: CRC and replay counters rise together); a
link that keeps failing also retrains now and then (one recovery per 100 CRC errors). Counters
count since driver load, as the driver's do.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuwatch.sim import abi
from gpuwatch.sim.inference import SimInferenceServer
from gpuwatch.sim.physics import STEP_S, SimGpu

LAYERS, HIDDEN, BYTES_PER_VALUE = 80, 8192, 2
ALL_REDUCE_BYTES_PER_TOKEN = 2 * LAYERS * HIDDEN * BYTES_PER_VALUE
LINK_SPEED_MB_PER_S = 26562  # `nvidia-smi nvlink -s`: 26.562 GB/s per link (H100, H200)
RECOVERY_PER_CRC_ERRORS = 100


@dataclass(slots=True)
class LinkCounters:
    """One link's counters since driver load."""

    transmit_bytes: float = 0.0
    receive_bytes: float = 0.0
    crc: float = 0.0  # DL CRC errors; the flit CRC counter (links 0-11) counts the same errors
    replay: float = 0.0
    recovery: float = 0.0


class NvLinkFabric:
    """Every GPU's links, stepped with the simulated driver."""

    def __init__(self, gpus: list[SimGpu], servers: list[SimInferenceServer]) -> None:
        self.gpus = gpus
        self.links = [[LinkCounters() for _ in range(g.profile.nvlink_links)] for g in gpus]
        # The servers that run tensor parallel over NVLink: several GPUs, each with links.
        self.tensor_parallel = [
            s for s in servers if len(s.gpus) > 1 and all(g.profile.nvlink_links > 0 for g in s.gpus)
        ]

    def step(self, time_s: float) -> None:
        """One physics step ending at ``time_s`` (after the GPUs and servers have stepped)."""
        for server in self.tensor_parallel:
            if not server.running(time_s):
                continue
            decode, prefill = server.rates()
            tp = len(server.gpus)
            per_gpu = (decode + prefill) * ALL_REDUCE_BYTES_PER_TOKEN * 2 * (tp - 1) / tp * STEP_S
            for gpu in server.gpus:
                links = self.links[gpu.index]
                share = per_gpu / len(links)
                for link in links:
                    link.transmit_bytes += share
                    link.receive_bytes += share
        for gpu in self.gpus:
            fault = gpu.fault_active("nvlink_errors")
            if fault is None or not 0 <= fault.link < len(self.links[gpu.index]):
                continue
            link = self.links[gpu.index][fault.link]
            errors = fault.count * STEP_S
            link.crc += errors
            link.replay += errors
            link.recovery += errors / RECOVERY_PER_CRC_ERRORS

    def data_bytes(self, index: int) -> tuple[float, float]:
        """A GPU's data bytes sent and received over all its links since driver load."""
        links = self.links[index]
        return sum(link.transmit_bytes for link in links), sum(link.receive_bytes for link in links)

    def driver_reloaded(self) -> None:
        """Counts since driver load start again from zero."""
        self.links = [[LinkCounters() for _ in links] for links in self.links]

    def field(self, gpu: SimGpu, field_id: int, scope_id: int) -> tuple[int, float] | None:
        """(value type, value) of a per-link field for ``gpu``, or None where the card answers
        NOT_SUPPORTED (no NVLink, a link it does not have, a field not modelled)."""
        links = self.links[gpu.index]
        ull, uint = abi.VALUE_UNSIGNED_LONG_LONG, abi.VALUE_UNSIGNED_INT
        if field_id in abi.FI_NVLINK_CRC_FLIT_IDS:  # the link is in the id, not the scope
            index = abi.FI_NVLINK_CRC_FLIT_IDS.index(field_id)
            return (ull, int(links[index].crc)) if index < len(links) else None
        if field_id in abi.FI_NVLINK_CRC_DATA_IDS:
            index = abi.FI_NVLINK_CRC_DATA_IDS.index(field_id)
            return (ull, 0) if index < len(links) else None
        if not 0 <= scope_id < len(links):
            return None
        link = links[scope_id]
        if field_id == abi.FI_NVLINK_GET_STATE:
            return uint, 1  # every link of a healthy HGX board is active
        if field_id == abi.FI_NVLINK_GET_SPEED:
            return uint, LINK_SPEED_MB_PER_S
        counter = _COUNTERS.get(field_id)
        return None if counter is None else (ull, int(getattr(link, counter)) // _UNIT.get(field_id, 1))


# Per-link counters by field id: the LinkCounters attribute, and the unit the driver counts in (KiB)
_COUNTERS = {
    abi.FI_NVLINK_THROUGHPUT_DATA_TX: "transmit_bytes",
    abi.FI_NVLINK_THROUGHPUT_DATA_RX: "receive_bytes",
    abi.FI_NVLINK_ERROR_DL_REPLAY: "replay",
    abi.FI_NVLINK_ERROR_DL_RECOVERY: "recovery",
    abi.FI_NVLINK_ERROR_DL_CRC: "crc",
}
_UNIT = {abi.FI_NVLINK_THROUGHPUT_DATA_TX: 1024, abi.FI_NVLINK_THROUGHPUT_DATA_RX: 1024}

PER_LINK_FIELDS = frozenset(
    {
        *abi.FI_NVLINK_CRC_FLIT_IDS,
        *abi.FI_NVLINK_CRC_DATA_IDS,
        abi.FI_NVLINK_GET_STATE,
        abi.FI_NVLINK_GET_SPEED,
        abi.FI_NVLINK_THROUGHPUT_DATA_TX,
        abi.FI_NVLINK_THROUGHPUT_DATA_RX,
        abi.FI_NVLINK_ERROR_DL_REPLAY,
        abi.FI_NVLINK_ERROR_DL_RECOVERY,
        abi.FI_NVLINK_ERROR_DL_CRC,
    }
)
