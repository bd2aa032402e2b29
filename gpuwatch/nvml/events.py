"""XID events: one NVML event set for every GPU, waited on by a thread of its own.

NVML: nvmlEventSetCreate, nvmlDeviceGetSupportedEventTypes, nvmlDeviceRegisterEvents,
nvmlEventSetWait_v2 (raises Timeout when nothing arrived; releases the GIL while it blocks),
nvmlEventSetFree. ``eventData`` is the Xid number (999 when the driver does not know it).
NVML cannot deliver some Xids (79, 119, 120: the GPU or its GSP is gone; DCGM issue #162), so a
lost GPU is also caught by the poll itself.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pynvml

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class XidEvent:
    """One Xid reported for one GPU."""

    gpu_index: int
    xid: int
    timestamp: float


def _address(handle: Any) -> int:
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


class XidWatcher:
    """Collects Xid events; :meth:`pump` waits for them, :meth:`drain` hands them over."""

    def __init__(self, devices: Sequence[tuple[int, Any]], clock: Callable[[], float]) -> None:
        """Register every device that supports Xid events; raises NVMLError if no set can be made."""
        self._clock = clock
        self._set = pynvml.nvmlEventSetCreate()
        self._index_by_handle: dict[int, int] = {}
        for index, handle in devices:
            try:
                supported = pynvml.nvmlDeviceGetSupportedEventTypes(handle)
                if supported & pynvml.nvmlEventTypeXidCriticalError:
                    pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, self._set)
                    self._index_by_handle[_address(handle)] = index
                else:
                    log.info("GPU %d: Xid events not supported", index)
            except pynvml.NVMLError as exc:
                log.info("GPU %d: cannot register for Xid events: %s", index, type(exc).__name__)
        self._pending: list[XidEvent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def watching(self) -> bool:
        return bool(self._index_by_handle)

    def pump(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for events, then take every event already queued."""
        wait_ms = timeout_ms
        while self._index_by_handle:
            try:
                data = pynvml.nvmlEventSetWait_v2(self._set, wait_ms)
            except pynvml.NVMLError_Timeout:
                return
            except pynvml.NVMLError as exc:
                log.warning("Xid event wait failed: %s; stopped watching", type(exc).__name__)
                self._index_by_handle.clear()
                return
            index = self._index_by_handle.get(_address(data.device))
            if index is not None and data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                event = XidEvent(index, int(data.eventData), self._clock())
                log.warning("GPU %d: Xid %d", index, event.xid)
                with self._lock:
                    self._pending.append(event)
            wait_ms = 0

    def drain(self) -> list[XidEvent]:
        """Events seen since the last drain, oldest first."""
        with self._lock:
            events, self._pending = self._pending, []
        return events

    def start(self, timeout_ms: int = 1000) -> None:
        """Pump in a background thread until :meth:`close`."""
        self._thread = threading.Thread(target=self._run, args=(timeout_ms,), name="gpuwatch-xid", daemon=True)
        self._thread.start()

    def _run(self, timeout_ms: int) -> None:
        while not self._stop.is_set() and self._index_by_handle:
            self.pump(timeout_ms)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        try:
            pynvml.nvmlEventSetFree(self._set)
        except pynvml.NVMLError as exc:
            log.debug("nvmlEventSetFree: %s", type(exc).__name__)
