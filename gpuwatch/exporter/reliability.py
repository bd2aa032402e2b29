"""ECC mode and error counts, retired pages, row remapping."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.model import Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "ECC mode and error counts, retired pages, row remapping, Xid errors"


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    if snapshot.xid_log_readable is not None:
        f.gauge(
            "gpuwatch_xid_log_readable",
            "1 when gpuwatch can read the kernel log's Xid lines (--xid-log), 0 when it cannot (see the log).",
            int(snapshot.xid_log_readable),
        )
    for status in snapshot.gpus:
        g, r = status.identity, status.reading
        for xid, count in sorted(status.xid_errors.items()):
            f.gpu_counter(
                "gpuwatch_gpu_xid_errors",
                "Xid errors by code since gpuwatch started: NVML events (nvmlEventSetWait_v2) and, with --xid-log, "
                "kernel-log lines (counted once: all those logged before NVML's event set was registered, then those "
                "NVML does not deliver).",
                g,
                count,
                xid=str(xid),
            )
        if r is None:
            continue
        if g.ecc_enabled is not None:
            f.gpu_gauge(
                "gpuwatch_gpu_ecc_enabled",
                "1 when ECC is on (nvmlDeviceGetEccMode, current).",
                g,
                int(g.ecc_enabled),
            )
        for (kind, scope), total in status.ecc_errors_total.items():
            f.gpu_counter(
                "gpuwatch_gpu_ecc_errors",
                "ECC errors (NVML_FI_DEV_ECC_*_TOTAL): volatile counts restart at driver load and are read every "
                "poll; aggregate counts persist for the board's life and are read every --process-interval. "
                "Carried across driver reloads and GPU resets while gpuwatch runs.",
                g,
                total,
                type=kind,
                scope=scope,
            )
        for cause, pages in r.retired_pages.items():
            f.gpu_gauge(
                "gpuwatch_gpu_retired_pages",
                "Retired memory pages by cause (NVML_FI_DEV_RETIRED_*, read every --process-interval).",
                g,
                pages,
                cause=cause,
            )
        f.gpu_gauge(
            "gpuwatch_gpu_retired_pages_pending",
            "1 when a page retirement waits for a GPU reset (NVML_FI_DEV_RETIRED_PENDING, read every --process-interval).",
            g,
            _bit(r.retired_pages_pending),
        )
        for kind, rows in r.remapped_rows.items():
            f.gpu_gauge(
                "gpuwatch_gpu_remapped_rows",
                "Memory rows remapped (NVML_FI_DEV_REMAPPED_COR/UNC, read every --process-interval; the pending "
                "and failure flags every poll).",
                g,
                rows,
                type=kind,
            )
        f.gpu_gauge(
            "gpuwatch_gpu_row_remap_pending",
            "1 when a row remap waits for a GPU reset (NVML_FI_DEV_REMAPPED_PENDING).",
            g,
            _bit(r.row_remap_pending),
        )
        f.gpu_gauge(
            "gpuwatch_gpu_row_remap_failure",
            "1 when a row remap failed: the board is out of spare rows (NVML_FI_DEV_REMAPPED_FAILURE).",
            g,
            _bit(r.row_remap_failure),
        )
    return f


def _bit(flag: bool | None) -> int | None:
    return None if flag is None else int(flag)
