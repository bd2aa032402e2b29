"""The simulated host's kernel log: the NVRM Xid lines a real driver writes, in a file.

Each Xid the simulated driver raises is written as the kernel prints it (``dmesg`` form, seconds
since boot; the simulated host booted :data:`BOOT_S` before the scenario's second 0, so lines a
test writes before then are the log's past)::

    [  100.000000] NVRM: Xid (PCI:0000:3b:00): 79, pid=0, name=, GPU has fallen off the bus.

Every Xid event NVML delivers is also logged here (a real driver logs them all); Xid 79 is logged
here only (NVML shows the GPU lost and delivers no event; DCGM issue 162), and so is Xid 154, the
recovery action changing (R570+). gpuwatch's kernel-log reader (``--xid-log PATH``) reads the file;
under ``--xid-log auto`` the log is kept in memory (:data:`IN_MEMORY`), so that a simulated host
leaves nothing on disk, even when it is killed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TextIO

from gpuwatch.sim import abi, recovery
from gpuwatch.sim.physics import SimGpu

log = logging.getLogger(__name__)

IN_MEMORY = ":memory:"  # a path that names no file: the log is kept in this process
MAX_MEMORY_BYTES = 1 << 20  # an in-memory log stops growing here (a simulated day logs a few lines)
BOOT_S = 60.0  # the simulated host booted (and loaded its driver) a minute before the scenario starts

# What the driver prints after the Xid number, for the Xids the simulator raises.
_MESSAGES = {
    48: "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer.",
    63: "Row Remapper: New row marked for remapping, reset gpu to activate.",
    64: "Row Remapper: Failed to remap a row.",
    79: "GPU has fallen off the bus.",
}


class SimKernelLog:
    """Writes each GPU's new Xids to ``path`` as simulated time advances."""

    def __init__(self, path: str, gpus: list[SimGpu], driver_branch: int, clock: Callable[[], float]) -> None:
        """``clock``: the scenario's simulated seconds."""
        self.path = path
        self._clock = clock
        self._gpus = gpus
        self._recovery = driver_branch >= 570  # the recovery action and Xid 154 came with R570
        self._cursors = [len(g.event_log) for g in gpus]
        self._lost = [g.state.lost for g in gpus]
        self._actions = [recovery.recovery_action(g) for g in gpus]
        self._file: TextIO | None = None
        self._memory: bytearray | None = None
        if path == IN_MEMORY:
            self._memory = bytearray()
            return
        try:
            self._file = open(path, "a", encoding="ascii")  # noqa: SIM115 (held while the host lives)
        except OSError as exc:  # the reader then finds the log unreadable, as on a host without access
            log.warning("simulated kernel log %s cannot be written (%s); no Xid lines will be logged", path, exc)

    def since_boot(self) -> float:
        """Seconds since the simulated host booted: the time the log's lines are stamped in."""
        return BOOT_S + self._clock()

    def scan(self, time_s: float) -> None:
        """Log what happened on each GPU in the step that ended at ``time_s``."""
        if self._file is None and self._memory is None:
            return
        for gpu in self._gpus:
            i = gpu.index
            events = gpu.event_log
            while self._cursors[i] < len(events):
                event_type, data = events[self._cursors[i]]
                self._cursors[i] += 1
                if event_type & abi.EVENT_XID_CRITICAL:
                    self._write(time_s, gpu, data, _MESSAGES.get(data, "Graphics Exception"))
            if gpu.state.lost and not self._lost[i]:
                self._write(time_s, gpu, 79, _MESSAGES[79], pid="0", name="")
            self._lost[i] = gpu.state.lost
            if self._recovery:
                action = recovery.recovery_action(gpu)
                if action != self._actions[i]:
                    before, self._actions[i] = self._actions[i], action
                    change = (
                        f"GPU recovery action changed from 0x{before:x} ({recovery.NAMES.get(before, 'Unknown')}) "
                        f"to 0x{action:x} ({recovery.NAMES.get(action, 'Unknown')})"
                    )
                    self._write(time_s, gpu, 154, change, pid="'<unknown>'", name="'<unknown>'")
        if self._file is not None:
            self._file.flush()

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of an in-memory log from ``offset`` (empty for a file's)."""
        return b"" if self._memory is None else bytes(self._memory[offset : offset + size])

    def _write(
        self, time_s: float, gpu: SimGpu, xid: int, message: str, pid: str = "4194304", name: str = "python3"
    ) -> None:
        domain = int(gpu.pci_bus_id.split(":", 1)[0], 16)
        where = f"PCI:{domain:04x}:{gpu.pci_bus:02x}:00"
        line = f"[{BOOT_S + time_s:12.6f}] NVRM: Xid ({where}): {xid}, pid={pid}, name={name}, {message}\n"
        if self._memory is not None:
            if len(self._memory) + len(line) <= MAX_MEMORY_BYTES:
                self._memory += line.encode("ascii", "replace")
        elif self._file is not None:
            self._file.write(line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
