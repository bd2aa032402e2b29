"""The simulated driver's GPU recovery action (field NVML_FI_DEV_GET_GPU_RECOVERY_ACTION, R570+).

An R570+ driver asks for a GPU reset once the GPU's memory took an uncorrectable error or holds a
row remap that only a reset applies (the H100/H200 path after Xid 48/63/94/95), and logs Xid 154
("GPU recovery action changed") when it does. A reset, or a driver reload, clears both, and with
them the request. Every other state asks for nothing (the captures' "GPU Recovery Action: None").
"""

from __future__ import annotations

from gpuwatch.sim import abi
from gpuwatch.sim.physics import SimGpu

# nvidia-smi's words for each code, as the kernel line of Xid 154 names them
NAMES = {abi.RECOVERY_ACTION_NONE: "None", abi.RECOVERY_ACTION_GPU_RESET: "GPU Reset Required"}


def recovery_action(gpu: SimGpu) -> int:
    """The recovery action ``gpu``'s driver asks for now."""
    s = gpu.state
    if s.ecc_volatile[1] > 0 or s.remap_pending:
        return abi.RECOVERY_ACTION_GPU_RESET
    return abi.RECOVERY_ACTION_NONE
