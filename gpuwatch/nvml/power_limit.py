"""Reading and setting GPUs' enforced power limits: the only writes gpuwatch makes to the driver
(for `gpuwatch tune power-limit`).

* ``nvmlDeviceGetPowerManagementLimit`` (mW): the limit in force, nvidia-smi's "Current Power Limit".
* ``nvmlDeviceGetPowerManagementLimitConstraints`` (mW): "Min Power Limit" / "Max Power Limit".
* ``nvmlDeviceSetPowerManagementLimit`` (mW): ``nvidia-smi -i N -pl W``. It needs root or
  CAP_SYS_ADMIN (NVML answers NO_PERMISSION otherwise), answers INVALID_ARGUMENT outside the
  constraints, and the limit lasts until the driver reloads (nvml.h).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import pynvml


class PowerLimitError(Exception):
    """A power limit could not be read or set; the message says which GPU and why."""


@dataclass(frozen=True, slots=True)
class PowerLimits:
    """One GPU's power limit in force and the range the driver accepts, in watts."""

    current_watts: float
    min_watts: float
    max_watts: float


class PowerLimitControl:
    """An NVML session for reading and setting power limits by GPU index (close it when done)."""

    def __init__(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise PowerLimitError(f"cannot open NVML: {exc}") from exc
        self._open = True

    def _handle(self, index: int) -> Any:
        try:
            return pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError as exc:
            raise PowerLimitError(f"GPU {index}: {exc}") from exc

    def limits(self, index: int) -> PowerLimits:
        """The limit in force on GPU ``index`` and its constraints."""
        handle = self._handle(index)
        try:
            current = pynvml.nvmlDeviceGetPowerManagementLimit(handle)
            low, high = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
        except pynvml.NVMLError as exc:
            raise PowerLimitError(f"GPU {index}: cannot read its power limit: {exc}") from exc
        return PowerLimits(current / 1000.0, low / 1000.0, high / 1000.0)

    def set(self, index: int, watts: float) -> None:
        """Enforce ``watts`` on GPU ``index``."""
        handle = self._handle(index)
        try:
            pynvml.nvmlDeviceSetPowerManagementLimit(handle, round(watts * 1000))
        except pynvml.NVMLError_NoPermission as exc:
            raise PowerLimitError(
                f"GPU {index}: cannot set its power limit to {watts:g} W: {exc} (needs root or CAP_SYS_ADMIN)"
            ) from exc
        except pynvml.NVMLError as exc:
            raise PowerLimitError(f"GPU {index}: cannot set its power limit to {watts:g} W: {exc}") from exc

    def close(self) -> None:
        if self._open:
            self._open = False
            with contextlib.suppress(pynvml.NVMLError):  # the driver went away: nothing left to release
                pynvml.nvmlShutdown()
