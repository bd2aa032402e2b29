"""What to do about an Xid: a short recommended action per class, from NVIDIA's Xid catalogue.

NVIDIA's catalogue for Ampere and newer (docs.nvidia.com/deploy/xid-errors, "Analyzing Xid Errors
with the Xid Catalog") gives each Xid a resolution bucket for the immediate action: restart the
application, reset the GPU, reboot the node, check the mechanicals (power, cooling, seating), or
none. This keeps the Xids an inference host meets in practice, grouped by that bucket, in words an
operator acts on; the rest point at the catalogue. Pure data and one lookup: no NVML, no clock.
"""

from __future__ import annotations

# Each class: (its name, the recommended action).
APPLICATION = ("application", "an application error: restart the application and check its code or CUDA version")
RESET = ("reset", "reset the GPU (drain it, then nvidia-smi -r); reboot if the reset fails")
REBOOT = ("reboot", "reboot the node; check the GPU's power, cooling and seating if it recurs")
POWER = ("power", "check the GPU's power cables and cooling")
RESET_LATER = ("reset_later", "reset the GPU when convenient (drain it first)")
FOLLOW_RECOVERY = ("recovery_action", "do what the driver's recovery action asks (gpuwatch_gpu_recovery_action)")
INFORMATIONAL = ("informational", "no action: the driver handled it; watch for repeats")
UNKNOWN = ("unknown", "look the Xid up in NVIDIA's Xid catalogue")

XID_CLASSES: dict[int, tuple[str, str]] = {
    8: APPLICATION,  # GPU stopped processing (a channel idle timeout)
    13: APPLICATION,  # graphics engine exception (out-of-range access, illegal instruction)
    31: APPLICATION,  # GPU memory page fault (MMU)
    32: APPLICATION,  # invalid or corrupted push buffer stream (PBDMA)
    43: APPLICATION,  # GPU stopped processing: the channel was reset after a fault
    45: INFORMATIONAL,  # preemptive cleanup: a process ended and its channels were removed
    48: RESET,  # double-bit ECC error
    54: POWER,  # auxiliary power is not connected to the board
    61: RESET,  # internal micro-controller breakpoint/warning
    62: RESET,  # internal micro-controller halt
    63: RESET_LATER,  # a page retirement or row remap was recorded
    64: RESET,  # a page retirement or row remap failed
    68: APPLICATION,  # video processor exception
    69: APPLICATION,  # graphics engine class error
    74: RESET,  # NVLink error (a reset retrains the links)
    79: REBOOT,  # the GPU has fallen off the bus
    92: RESET_LATER,  # high single-bit ECC error rate
    94: APPLICATION,  # contained ECC error: the affected application was stopped, the GPU serves on
    95: RESET,  # uncontained ECC error
    109: APPLICATION,  # context switch timeout
    119: RESET,  # GSP RPC timeout
    120: RESET,  # GSP error
    121: RESET,  # C2C link error
    154: FOLLOW_RECOVERY,  # the GPU recovery action changed (R570+)
}


def xid_class(xid: int) -> str:
    """The class of ``xid`` (``application``, ``reset``, ``reboot``, …; ``unknown`` if not listed)."""
    return XID_CLASSES.get(xid, UNKNOWN)[0]


def recommended_action(xid: int) -> str:
    """A short recommended action for ``xid``."""
    return XID_CLASSES.get(xid, UNKNOWN)[1]
