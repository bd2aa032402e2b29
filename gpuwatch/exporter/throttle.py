"""Why clocks are held down, over time: per-reason seconds, the window's classes, clock loss."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.labels import THROTTLE_CLASSES
from gpuwatch.model import Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "why clocks were held down over the health window (per-reason seconds, classes, clock loss)"


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for status in snapshot.gpus:
        g = status.identity
        for reason, seconds in sorted(status.clocks_event_seconds.items()):
            f.gpu_counter(
                "gpuwatch_gpu_clocks_event_seconds",
                "Time each clock event reason was active, from the per-poll reasons "
                "(nvmlDeviceGetCurrentClocksEventReasons), since gpuwatch started.",
                g,
                seconds,
                reason=reason,
            )
        throttle = status.throttle
        if throttle is None or throttle.dominant is None:
            continue
        window = f"over the last {throttle.window_seconds:.0f} s" if throttle.window_seconds else "at the last poll"
        for cls in THROTTLE_CLASSES:
            f.gpu_gauge(
                "gpuwatch_gpu_throttle_class",
                "1 for the class that held clocks down for most of the health window, else 0 "
                "(none, idle, power_cap, thermal, power_brake, hw_slowdown, clocks_setting, unknown).",
                g,
                int(cls == throttle.dominant),
                **{"class": cls},
            )
            f.gpu_gauge(
                "gpuwatch_gpu_throttle_ratio",
                "Fraction of the health window spent in each throttle class.",
                g,
                throttle.ratios[cls],
                **{"class": cls},
            )
        f.gpu_gauge(
            "gpuwatch_gpu_clock_loss_ratio",
            f"Mean of 1 - SM clock / max SM clock over the busy polls of the health window ({window} now).",
            g,
            throttle.clock_loss_ratio,
        )
    return f
