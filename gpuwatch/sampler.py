"""The poll: read every GPU through the NVML session, derive each GPU's status, publish a Snapshot.

Readers of :attr:`Sampler.latest` and subscribers never call NVML, so a hung driver call never
delays a scrape. The parts: :mod:`gpuwatch.session` (open, backoff, reopen, Xid events),
:mod:`gpuwatch.loop` (threads, hung reads), :mod:`gpuwatch.derive` (a GPU's status from its reading
and history). Time is injected: tests step :meth:`Sampler.poll_once` on a manual clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

from gpuwatch.analysis.health import HealthThresholds, host_verdict
from gpuwatch.derive import Failed, GpuHistory, Hung, Outcome, Read, derive, history_key
from gpuwatch.loop import Clock, LoopSupervisor
from gpuwatch.model import GpuIdentity, GpuStatus, Snapshot
from gpuwatch.nvml import GpuLost, NvmlReader, NvmlSessionLost, PollFailed
from gpuwatch.session import NvmlSession
from gpuwatch.xidlog import KERNEL_ONLY_XIDS, XidLog, pci_location

log = logging.getLogger(__name__)

Subscriber = Callable[[Snapshot], None]


class Sampler:
    """Polls every GPU and publishes one :class:`Snapshot` per poll to its subscribers.

    Threading contract: :meth:`subscribe` before :meth:`start`; :meth:`configure` from any thread
    (a float each, picked up by the next poll or wait); everything else belongs to the poll loop.
    Subscribers run on the poll thread, in order, after :attr:`latest` is set: keep them short.
    """

    def __init__(
        self,
        reader_factory: Callable[[], NvmlReader],
        clock: Clock,
        poll_interval_s: float = 1.0,
        process_interval_s: float = 10.0,
        health: HealthThresholds | None = None,
        event_thread: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        kernel_log: XidLog | None = None,
    ) -> None:
        self._clock = clock
        # Xids from the kernel log; pumped here each poll unless it reads on a thread of its own
        self._kernel_log = kernel_log
        self._pump_kernel_log = not event_thread
        self._session = NvmlSession(reader_factory, event_thread)
        self.loop = LoopSupervisor(self.poll_once, clock, poll_interval_s, monotonic)
        self._process_interval_s = process_interval_s
        self.health = health or HealthThresholds()
        self._history: dict[str, GpuHistory] = {}
        self._next_processes_at = float("-inf")
        self._polls = 0
        self._subscribers: list[Subscriber] = []
        self.latest = Snapshot(timestamp=clock.time(), nvml_up=False, nvml_error=self._session.error)
        self.ready = threading.Event()  # set after the first poll, whatever its outcome
        self.list_processes = True  # off: the slow loop skips the process listing (no collector wants it)

    @property
    def poll_interval_s(self) -> float:
        return self.loop.poll_interval_s

    def configure(self, poll_interval_s: float, process_interval_s: float) -> None:
        """New intervals (SIGHUP): the poll interval applies to the wait already under way."""
        self._process_interval_s = process_interval_s
        self.loop.poll_interval_s = poll_interval_s

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def poll_once(self) -> Snapshot:
        """Poll every GPU once, publish and return the snapshot.

        Raises :class:`gpuwatch.stalls.PollSuperseded` when this poll was left behind in a hung read.
        """
        generation = self.loop.stalls.generation
        wall_started = time.perf_counter()
        reader = self._session.open(self._clock.time())
        gpus: tuple[GpuStatus, ...] = ()
        if reader is not None:
            try:
                gpus = self._poll_gpus(reader, generation)
            except NvmlSessionLost as exc:
                self._session.drop(exc)
                reader = None
        self._polls += 1
        error = self._session.error
        self.latest = snapshot = Snapshot(
            timestamp=self._clock.time(),
            nvml_up=reader is not None,
            nvml_error=error,
            driver_version=reader.driver_version if reader else None,
            cuda_driver_version=reader.cuda_driver_version if reader else None,
            gpus=gpus,
            poll_duration_seconds=time.perf_counter() - wall_started,
            polls_total=self._polls,
            nvml_errors_total=self._session.error_counts(),
            verdict=host_verdict(reader is not None, error, [g.verdict for g in gpus]),
            xid_log_readable=None if self._kernel_log is None else self._kernel_log.readable,
        )
        self.ready.set()
        for subscriber in self._subscribers:
            subscriber(snapshot)
        return snapshot

    def _history_of(self, identity: GpuIdentity) -> GpuHistory:
        key = history_key(identity)
        history = self._history.get(key)
        if history is None:
            history = self._history[key] = GpuHistory.start(self.health, self.poll_interval_s)
        return history

    def _poll_gpus(self, reader: NvmlReader, generation: int) -> tuple[GpuStatus, ...]:
        for event in self._session.take_events():
            if event.gpu_index < reader.gpu_count:
                self._history_of(reader.identity(event.gpu_index)).record_xid(event.timestamp, event.xid)
        if self._kernel_log is not None:
            self._take_kernel_xids(reader, self._kernel_log)
        started = self._clock.time()
        slow = started >= self._next_processes_at
        if slow:
            self._next_processes_at = started + self._process_interval_s
        statuses = []
        for index in range(reader.gpu_count):
            stuck_since = self.loop.stalls.stuck_since(index)
            if stuck_since is not None:
                outcome: Outcome = Hung(stuck_since)
            else:
                outcome = self.loop.watched(generation, index, partial(_read, reader, index, slow, self.list_processes))
            identity = reader.identity(index)
            statuses.append(derive(self._history_of(identity), identity, outcome, self._clock.time(), self.health))
        return tuple(statuses)

    def _take_kernel_xids(self, reader: NvmlReader, kernel_log: XidLog) -> None:
        """Count the kernel log's Xids once (gpuwatch.xidlog): those logged before NVML's event set
        was registered (the backfill since boot, and any while NVML was down), then only those NVML
        does not deliver as events (all of them, where NVML events are not watched)."""
        if self._pump_kernel_log:
            kernel_log.pump()
        found = kernel_log.take()
        if not found:
            return
        by_location = {pci_location(identity.pci_bus_id): identity for identity in reader.identities}
        since = self._session.events_since
        for line in found:
            if since is not None and line.timestamp >= since and line.xid not in KERNEL_ONLY_XIDS:
                continue  # NVML delivered this one as an event too
            identity = by_location.get(line.pci)
            if identity is not None:
                self._history_of(identity).record_xid(line.timestamp, line.xid)
            else:
                log.debug("kernel log: Xid %d for PCI %s, not a GPU NVML lists", line.xid, line.pci)

    def start(self) -> None:
        """Poll in background threads until :meth:`stop`."""
        self.loop.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop polling. A read hung in a driver call is left behind (its thread is a daemon), and
        NVML is then not shut down under it."""
        if self.loop.stop(timeout_s):
            self._session.close()


def _read(reader: NvmlReader, index: int, slow: bool, list_processes: bool = True) -> Outcome:
    """Every NVML call for one GPU in one poll (the process listing only when asked for: an empty
    list then, so none listed before lingers)."""
    try:
        reading = reader.read(index, slow=slow)
        return Read(reading, (reader.processes(index) if list_processes else ()) if slow else None)
    except GpuLost as exc:
        return Failed(str(exc))
    except PollFailed as exc:
        log.warning("GPU %d: poll failed: %s", index, exc)
        return Failed(str(exc))
