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


def utf8_text(value: str | bytes) -> str:
    r"""``value`` as text that encodes to valid UTF-8, whatever bytes it came from.

    Names from outside (a process's ``comm``, which any local user sets to arbitrary bytes with
    an executable's file name or ``prctl(PR_SET_NAME)``; a user name; NVML's process name) may
    not be UTF-8. Each byte that does not decode is written as ``\xNN`` (Python's
    ``backslashreplace``): readable, and two different names stay different. Text that was
    decoded with ``surrogateescape`` (``os.fsdecode``, psutil, ``os.environ``) is first turned
    back into its bytes, so it reads the same way; any other lone surrogate becomes ``\uDXXX``.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no undecodable byte stands for
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


# The driver's GPU recovery action (field NVML_FI_DEV_GET_GPU_RECOVERY_ACTION, R570+), by its
# nvmlGpuRecoveryAction_t code: what the driver asks an operator to do before the GPU is trusted again.
RECOVERY_ACTIONS = (
    "none",
    "reset",
    "reboot",
    "drain_p2p",
    "drain_and_reset",
    "recover_imex_domain",
    "bus_reset",
    "system_reboot",
)
