"""PCIe link state, replays and traffic."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.model import Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "PCIe link generation and width, replays and traffic"


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for status in snapshot.gpus:
        g, r = status.identity, status.reading
        if r is None:
            continue
        f.gpu_gauge(
            "gpuwatch_gpu_pcie_link_generation",
            "Current PCIe link generation (nvmlDeviceGetCurrPcieLinkGeneration, read every --process-interval); "
            "idle GPUs downshift.",
            g,
            r.pcie_link_generation,
        )
        f.gpu_gauge(
            "gpuwatch_gpu_pcie_link_max_generation",
            "Maximum PCIe link generation (nvmlDeviceGetMaxPcieLinkGeneration).",
            g,
            g.pcie_max_generation,
        )
        f.gpu_gauge(
            "gpuwatch_gpu_pcie_link_width",
            "Current PCIe link width in lanes (nvmlDeviceGetCurrPcieLinkWidth, read every --process-interval).",
            g,
            r.pcie_link_width,
        )
        f.gpu_gauge(
            "gpuwatch_gpu_pcie_link_max_width",
            "Maximum PCIe link width in lanes (nvmlDeviceGetMaxPcieLinkWidth).",
            g,
            g.pcie_max_width,
        )
        totals = status.pcie_counters_total
        f.gpu_counter(
            "gpuwatch_gpu_pcie_replay_errors",
            "PCIe replays (NVML_FI_DEV_PCIE_REPLAY_COUNTER, read every --process-interval), carried across "
            "driver reloads while gpuwatch runs.",
            g,
            totals.get("replay_errors"),
        )
        f.gpu_counter(
            "gpuwatch_gpu_pcie_transmit_bytes",
            "Bytes sent over PCIe (NVML_FI_DEV_PCIE_COUNT_TX_BYTES, read every --process-interval), "
            "carried across driver reloads.",
            g,
            totals.get("transmit_bytes"),
        )
        f.gpu_counter(
            "gpuwatch_gpu_pcie_receive_bytes",
            "Bytes received over PCIe (NVML_FI_DEV_PCIE_COUNT_RX_BYTES, read every --process-interval), "
            "carried across driver reloads.",
            g,
            totals.get("receive_bytes"),
        )
    return f
