"""Label values shared by the analysis, the exporter and `gpuwatch status`: one list of each.

A leaf module (it imports nothing of gpuwatch), so every layer may use it. The metric series of an
enum are one per value, in these orders.
"""

from __future__ import annotations

# Health verdicts, and the exit code of each under the Nagios plugin convention (also Icinga,
# Sensu, Zabbix, cron).
HEALTH_STATES = ("ok", "warning", "critical", "unknown")
EXIT_CODES = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}

# What holds a GPU's clocks down over a window (gpuwatch.analysis.throttle decides).
THROTTLE_CLASSES = ("none", "idle", "power_cap", "thermal", "power_brake", "hw_slowdown", "clocks_setting", "unknown")

# Clock event reasons as gpuwatch names them (nvmlClocksEventReason* bits; gpuwatch.nvml.fields maps
# each to its bit). A bit outside these is reported as "other".
CLOCK_EVENT_REASONS = (
    "idle",
    "applications_clocks",
    "sw_power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal",
    "hw_thermal",
    "hw_power_brake",
    "display_clocks",
)
