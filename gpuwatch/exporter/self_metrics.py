"""gpuwatch's own state: build, NVML, and the poll loop."""

from __future__ import annotations

import platform

from gpuwatch import __version__
from gpuwatch.exporter.families import Families
from gpuwatch.model import Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "gpuwatch's own state: build, NVML up, polls, NVML errors (always exported)"


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    f.gauge(
        "gpuwatch_build_info",
        "gpuwatch build information; always 1.",
        1,
        version=__version__,
        python_version=platform.python_version(),
    )
    f.gauge(
        "gpuwatch_nvml_up",
        "1 when NVML is initialised and answering, 0 while gpuwatch retries it.",
        int(snapshot.nvml_up),
    )
    f.gauge(
        "gpuwatch_last_poll_timestamp_seconds",
        "When the last poll finished (Unix time); alert when it falls behind.",
        snapshot.timestamp if snapshot.polls_total else None,
    )
    f.gauge("gpuwatch_poll_duration_seconds", "Wall time the last poll took.", snapshot.poll_duration_seconds)
    f.counter("gpuwatch_polls", "Polls since gpuwatch started.", snapshot.polls_total)
    for (gpu, query), count in sorted(snapshot.nvml_errors_total.items()):
        f.counter(
            "gpuwatch_nvml_errors",
            "NVML queries that failed with an error other than NotSupported (or with NotSupported after "
            "answering before), by GPU index and query: the NVML function, then after ':' what it was asked "
            "for where one function answers several (nvmlDeviceGetClockInfo:sm; "
            "nvmlDeviceGetFieldValues:power_watts is one value of the field batch).",
            count,
            gpu=str(gpu),
            query=query,
        )
    return f
