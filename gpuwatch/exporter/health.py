"""Health verdicts: per GPU, per check, and for the host."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.labels import EXIT_CODES, HEALTH_STATES, RECOVERY_ACTIONS
from gpuwatch.model import Snapshot

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "health verdicts per GPU, per check and for the host"


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for state in HEALTH_STATES:
        f.gauge(
            "gpuwatch_health",
            "1 for the host's verdict (the worst of its GPUs; unknown without NVML), else 0.",
            int(snapshot.verdict.state == state),
            state=state,
        )
    for status in snapshot.gpus:
        g, verdict = status.identity, status.verdict
        for state in HEALTH_STATES:
            f.gpu_gauge(
                "gpuwatch_gpu_health",
                "1 for the GPU's verdict (ok, warning, critical, unknown), else 0; `gpuwatch status` says why.",
                g,
                int(verdict.state == state),
                state=state,
            )
        for check, check_state in sorted(verdict.checks.items()):
            f.gpu_gauge(
                "gpuwatch_gpu_health_check",
                "State of each health check as its Nagios code: 0 ok, 1 warning, 2 critical, 3 unknown; "
                "a check that does not apply to a GPU is absent.",
                g,
                EXIT_CODES[check_state],
                check=check,
            )
        action = None if status.reading is None else status.reading.recovery_action
        if action is not None:
            for name in RECOVERY_ACTIONS:
                f.gpu_gauge(
                    "gpuwatch_gpu_recovery_action",
                    "1 for the recovery action the driver asks for (NVML_FI_DEV_GET_GPU_RECOVERY_ACTION, R570+; "
                    "none, reset, reboot, drain_p2p, ...), else 0; absent on older drivers.",
                    g,
                    int(action == name),
                    action=name,
                )
    return f
