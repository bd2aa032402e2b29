"""NVLink per link: state, data bytes and error counters (absent on cards without NVLink)."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.model import Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "NVLink per link: state, data bytes sent and received, CRC, replay and recovery errors"


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for status in snapshot.gpus:
        g, r = status.identity, status.reading
        if r is None:
            continue
        for link, active in sorted(r.nvlink_active.items()):
            f.gpu_gauge(
                "gpuwatch_gpu_nvlink_up",
                "1 when the NVLink link is active, 0 when inactive (NVML_FI_DEV_NVLINK_GET_STATE per link, "
                "read every --process-interval).",
                g,
                int(active),
                link=str(link),
            )
        for (link, direction), total in sorted(status.nvlink_bytes_total.items()):
            f.gpu_counter(
                "gpuwatch_gpu_nvlink_bytes",
                "Data bytes over the NVLink link by direction (NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX/RX per link, "
                "payload without protocol overhead, read every --process-interval), carried across driver reloads "
                "while gpuwatch runs.",
                g,
                total,
                link=str(link),
                direction=direction,
            )
        for (link, kind), total in sorted(status.nvlink_errors_total.items()):
            f.gpu_counter(
                "gpuwatch_gpu_nvlink_errors",
                "NVLink link errors by type: crc, replay, recovery (NVML_FI_DEV_NVLINK_ERROR_DL_* per link), "
                "crc_flit and crc_data (NVML_FI_DEV_NVLINK_CRC_*_ERROR_COUNT_Ln, links 0-11); read every "
                "--process-interval, carried across driver reloads while gpuwatch runs.",
                g,
                total,
                link=str(link),
                type=kind,
            )
    return f
