"""Clocks against their maxima, the P-state, why clocks are held down, and for how long."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.labels import CLOCK_EVENT_REASONS
from gpuwatch.model import Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "clocks against their maxima, the P-state, the active clock event reasons and violation time"


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for status in snapshot.gpus:
        g, r = status.identity, status.reading
        if r is None:
            continue
        for clock, hertz in r.clocks_hertz.items():
            f.gpu_gauge(
                "gpuwatch_gpu_clock_hertz",
                "Current clock (nvmlDeviceGetClockInfo): sm every poll; graphics, video and memory every --process-interval.",
                g,
                hertz,
                clock=clock,
            )
        for clock, hertz in g.max_clocks_hertz.items():
            f.gpu_gauge(
                "gpuwatch_gpu_clock_max_hertz",
                "Maximum clock (nvmlDeviceGetMaxClockInfo).",
                g,
                hertz,
                clock=clock,
            )
        f.gpu_gauge(
            "gpuwatch_gpu_performance_state",
            "Performance state, 0 (P0, fastest) to 15 (nvmlDeviceGetPerformanceState, read every --process-interval).",
            g,
            r.performance_state,
        )
        if r.clock_event_reasons is not None:
            for reason in CLOCK_EVENT_REASONS:
                f.gpu_gauge(
                    "gpuwatch_gpu_clocks_event_active",
                    "1 while this reason holds clocks down, sampled at the last poll "
                    "(nvmlDeviceGetCurrentClocksEventReasons).",
                    g,
                    int(reason in r.clock_event_reasons),
                    reason=reason,
                )
        for policy, seconds in status.violation_seconds_total.items():
            f.gpu_counter(
                "gpuwatch_gpu_violation_seconds",
                "Time clocks were held below target by this policy (NVML_FI_DEV_PERF_POLICY_* field values, ns, "
                "read every --process-interval), carried across driver resets.",
                g,
                seconds,
                policy=policy,
            )
    return f
