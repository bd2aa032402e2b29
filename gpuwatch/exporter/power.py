"""Power draw, the enforced cap and its range, and the energy counter."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.model import Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "power draw, the enforced power limit and its range, and the reset-safe energy counter"


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for status in snapshot.gpus:
        g, r = status.identity, status.reading
        if r is None:
            continue
        f.gpu_gauge(
            "gpuwatch_gpu_power_watts",
            "Board power draw: a 1 s average on Ampere and newer except GA100 (field NVML_FI_DEV_POWER_AVERAGE), "
            "else nvmlDeviceGetPowerUsage (an instant reading on GA100 and older).",
            g,
            r.power_watts,
        )
        f.gpu_gauge(
            "gpuwatch_gpu_power_instant_watts",
            "Instantaneous board power draw (NVML field NVML_FI_DEV_POWER_INSTANT).",
            g,
            r.power_instant_watts,
        )
        f.gpu_gauge(
            "gpuwatch_gpu_power_limit_watts",
            "Power limit the driver enforces after all limiters (NVML_FI_DEV_POWER_CURRENT_LIMIT or "
            "nvmlDeviceGetEnforcedPowerLimit, read every --process-interval).",
            g,
            r.power_limit_watts,
        )
        f.gpu_gauge(
            "gpuwatch_gpu_power_default_limit_watts",
            "Boot default power limit (nvmlDeviceGetPowerManagementDefaultLimit).",
            g,
            g.power_limit_default_watts,
        )
        f.gpu_gauge(
            "gpuwatch_gpu_power_min_limit_watts",
            "Lowest settable power limit (nvmlDeviceGetPowerManagementLimitConstraints).",
            g,
            g.power_limit_min_watts,
        )
        f.gpu_gauge(
            "gpuwatch_gpu_power_max_limit_watts",
            "Highest settable power limit (nvmlDeviceGetPowerManagementLimitConstraints).",
            g,
            g.power_limit_max_watts,
        )
        f.gpu_counter(
            "gpuwatch_gpu_energy_joules",
            "Energy used since the driver loaded (nvmlDeviceGetTotalEnergyConsumption), carried across "
            "counter resets while gpuwatch runs.",
            g,
            status.energy_joules_total,
        )
    return f
