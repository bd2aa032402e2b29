"""Reads every GPU through pynvml: identity once, readings every poll, processes on a slower loop.

Policy, per shared/research/nvml.md §4.4:

* NVML is initialised once (:meth:`NvmlReader.open`) and shut down once; never per poll.
* Each query that answers NotSupported / NoPermission / FunctionNotFound / Deprecated /
  ArgumentVersionMismatch is recorded as unsupported for that GPU, logged once at INFO, and not
  asked again. Its value is ``None`` and never exported.
* Versioned symbols are tried newest first and the working one is kept
  (``nvmlDeviceGetTemperatureV`` → ``nvmlDeviceGetTemperature``, ``…ClocksEventReasons`` →
  ``…ClocksThrottleReasons``, memory info v2 → v1, processes ``_v3`` → ``_v2``).
* Every value with a field id is read in one ``nvmlDeviceGetFieldValues`` call per GPU and loop;
  the ids are probed once and each element's own return code is checked.
* A fast poll makes seven NVML calls per GPU: the field batch, temperature, temperature margin,
  SM clock, utilization, clock event reasons and memory info (plus a direct call for each field an
  old driver lacks). Values that change slowly or cost more (fan, P-state, the graphics, video and
  memory clocks, encoder and decoder utilisation, BAR1 use, PCIe link generation and width; in the
  second field batch the power cap, the violation, PCIe traffic and replay counters, remapped rows,
  aggregate ECC counts and retired pages) are read only when the caller asks for a slow read (the
  sampler's process loop) and carried between reads (research/nvml.md §7; see ``_data`` for why
  each field is where it is).
* A query that has answered once and later answers NotSupported (a driver in trouble) is not
  written off: that poll's value is ``None`` and the error is counted, like any other error.
* ``GpuIsLost``, ``ResetRequired`` and ``IrqIssue`` raise :class:`GpuLost` for that GPU only; a
  lost GPU costs no calls until it is probed again, by UUID through a fresh handle, on a backoff
  (1 s doubling to 60 s): after a reset it is opened anew and read again.
  ``Unknown`` fails that GPU's poll; other errors cost one value for one poll and are counted.
* ``Uninitialized``, ``DriverNotLoaded`` and ``LibRmVersionMismatch`` from any call mean the
  session is gone (the driver was unloaded or reloaded) and raise :class:`NvmlSessionLost`: the
  caller closes this reader and opens a new one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any, TypeVar

import psutil
import pynvml

from gpuwatch.analysis.backoff import Backoff
from gpuwatch.model import GpuIdentity, GpuProcess, GpuReading
from gpuwatch.nvml import fields, prepared
from gpuwatch.nvml.events import XidWatcher
from gpuwatch.nvml.prepared import FieldRequest

log = logging.getLogger(__name__)

T = TypeVar("T")
MHZ = 1e6

_UNSUPPORTED = (
    pynvml.NVMLError_NotSupported,
    pynvml.NVMLError_NoPermission,
    pynvml.NVMLError_FunctionNotFound,
    pynvml.NVMLError_Deprecated,
    pynvml.NVMLError_ArgumentVersionMismatch,
    pynvml.NVMLLibraryMismatchError,
)
_DEVICE_FATAL = (pynvml.NVMLError_GpuIsLost, pynvml.NVMLError_ResetRequired, pynvml.NVMLError_IrqIssue)
_SESSION_FATAL = (
    pynvml.NVMLError_Uninitialized,
    pynvml.NVMLError_DriverNotLoaded,
    pynvml.NVMLError_LibRmVersionMismatch,
)

_HINTS = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "libnvidia-ml.so.1 is not installed or not on the loader path; "
    "install the NVIDIA driver, or try `gpuwatch serve --simulate` to run on simulated GPUs",
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "the NVIDIA kernel module is not loaded (see `dmesg`, `modprobe nvidia`)",
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: "the driver library and kernel module differ in version; "
    "reload the nvidia module or reboot after a driver upgrade",
    pynvml.NVML_ERROR_NO_PERMISSION: "no permission to open /dev/nvidia*; run as a user in the video group",
}


class NvmlUnavailable(Exception):
    """NVML could not be initialised; the message says why and what to do."""


class GpuLost(Exception):
    """This GPU stopped answering (fallen off the bus, needs a reset, …)."""


class PollFailed(Exception):
    """This GPU failed this poll (NVML said Unknown); try again next poll."""


class NvmlSessionLost(Exception):
    """NVML stopped answering for every GPU (the driver was unloaded or reloaded): open it again."""


@dataclass(frozen=True, slots=True)
class _Datum:
    """A value with a field id, and optionally a direct call for drivers without the field."""

    key: str
    field_id: int
    fallback: Callable[[Any], int] | None = None
    slow: bool = False  # read on the slow loop (counts that move rarely and matter over hours)

    @property
    def grouping(self) -> tuple[str, Any]:
        """``("ecc", ("corrected", "volatile"))`` for ``ecc:corrected:volatile``; ``("", key)`` for a scalar."""
        group, sep, label = self.key.partition(":")
        if not sep:
            return "", self.key
        return group, tuple(label.split(":")) if group == "ecc" else label


def _violation_getter(policy: int) -> Callable[[Any], int]:
    def get(handle: Any) -> int:
        return int(pynvml.nvmlDeviceGetViolationStatus(handle, policy).violationTime)

    return get


def _ecc_getter(error_type: int, counter_type: int) -> Callable[[Any], int]:
    def get(handle: Any) -> int:
        return int(pynvml.nvmlDeviceGetTotalEccErrors(handle, error_type, counter_type))

    return get


def _data() -> list[_Datum]:
    # Every poll: what the poll's own judgements and rates need now (energy and power for tokens
    # per joule, volatile ECC and remap flags for the verdict). The slow loop: counters that are
    # only ever read as rates over minutes (violations, PCIe traffic and replays), counts that move
    # a few times in a GPU's life (remapped rows, aggregate ECC, retired pages) and the power cap,
    # which moves when someone sets it. Each is still in every reading, as of the last slow read.
    data = [
        _Datum(
            "energy_mj",
            pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
            pynvml.nvmlDeviceGetTotalEnergyConsumption,
        ),
        # The 1 s average nvmlDeviceGetPowerUsage returns on Ampere and later (not GA100); older
        # parts lack the field and keep the direct call, which reports their instant reading.
        _Datum("power_mw", pynvml.NVML_FI_DEV_POWER_AVERAGE, pynvml.nvmlDeviceGetPowerUsage),
        _Datum("power_instant_mw", pynvml.NVML_FI_DEV_POWER_INSTANT),
        _Datum(
            "power_limit_mw",
            pynvml.NVML_FI_DEV_POWER_CURRENT_LIMIT,
            pynvml.nvmlDeviceGetEnforcedPowerLimit,
            slow=True,
        ),
        _Datum("memory_temperature", pynvml.NVML_FI_DEV_MEMORY_TEMP),
        _Datum(
            "pcie_replay",
            pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER,
            pynvml.nvmlDeviceGetPcieReplayCounter,
            slow=True,
        ),
        _Datum("pcie_tx_bytes", pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, slow=True),
        _Datum("pcie_rx_bytes", pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES, slow=True),
        _Datum("retired_pending", pynvml.NVML_FI_DEV_RETIRED_PENDING, slow=True),
        _Datum("remap_pending", pynvml.NVML_FI_DEV_REMAPPED_PENDING),
        _Datum("remap_failure", pynvml.NVML_FI_DEV_REMAPPED_FAILURE),
    ]
    for policy, fid in fields.VIOLATION_FIELDS.items():
        getter = _violation_getter(fields.VIOLATION_POLICIES[policy])
        data.append(_Datum(f"violation:{policy}", fid, getter, slow=True))
    for key, fid in fields.ECC_FIELDS.items():
        # Volatile counts every poll (an uncorrectable error is critical now); aggregates, which
        # only restate them across driver loads, on the slow loop (research/nvml.md §7).
        getter = _ecc_getter(*fields.ECC_ARGUMENTS[key])
        data.append(_Datum(f"ecc:{key[0]}:{key[1]}", fid, getter, slow=key[1] == "aggregate"))
    for cause, fid in fields.RETIRED_PAGE_FIELDS.items():
        data.append(_Datum(f"retired:{cause}", fid, slow=True))
    for kind, fid in fields.REMAPPED_ROW_FIELDS.items():
        data.append(_Datum(f"remapped:{kind}", fid, slow=True))
    return data


_DATA = _data()
# group -> how a raw value becomes the exported one (violation counters are in ns).
_GROUP_SCALE: dict[str, Callable[[float], float | int]] = {
    "violation": lambda ns: ns / 1e9,
    "ecc": int,
    "retired": int,
    "remapped": int,
}
# key -> (group, label, scale): how a poll sorts a field value, without parsing its key.
_SORTING = {datum.key: (group, label, _GROUP_SCALE.get(group)) for datum in _DATA for group, label in [datum.grouping]}
_EMPTY: Mapping[Any, Any] = MappingProxyType({})  # a group no field of this GPU reports


def _no_handle() -> Any:
    """What a query of a GPU that was never opened answers (it is reported lost until it opens)."""
    raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)


def _memory_v1(memory: Any) -> tuple[int, int, int, None]:
    return memory.total, memory.used, memory.free, None


_NO_MEMORY = (None, None, None, None)


# Versioned queries, newest first (module doc): name -> one builder per variant, each turning a
# handle into a call with no arguments. A device builds its calls once, when it is opened.
_VARIANTS: dict[str, tuple[Callable[[Any], Callable[[], Any]], ...]] = {
    "temperature": (
        prepared.temperature,
        lambda h: partial(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
    ),
    "clock_event_reasons": (
        lambda h: partial(pynvml.nvmlDeviceGetCurrentClocksEventReasons, h),
        lambda h: partial(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, h),
    ),
    # (total, used, free, reserved) in bytes; v1 has no reserved
    "memory_info": (
        prepared.memory_info,
        lambda h: lambda: _memory_v1(pynvml.nvmlDeviceGetMemoryInfo(h)),
    ),
    "processes:compute": (
        lambda h: partial(pynvml.nvmlDeviceGetComputeRunningProcesses_v3, h),
        lambda h: partial(pynvml.nvmlDeviceGetComputeRunningProcesses_v2, h),
    ),
    "processes:graphics": (
        lambda h: partial(pynvml.nvmlDeviceGetGraphicsRunningProcesses_v3, h),
        lambda h: partial(pynvml.nvmlDeviceGetGraphicsRunningProcesses_v2, h),
    ),
}


# The SM clock is read every poll (throttling shows there first; a reading lists it first). The
# graphics and video clocks follow it, and the memory clock moves only with the P-state, so those
# three are read on the slow loop: (label, query key, NVML clock type).
_SLOW_CLOCKS = tuple((label, f"clock:{label}", code) for label, code in fields.CLOCKS.items() if label != "sm")


@dataclass(slots=True)
class _FieldSet:
    """The field values read together: one batch, plus direct calls where the driver lacks a field."""

    data: list[_Datum] = field(default_factory=list)
    fallbacks: list[_Datum] = field(default_factory=list)
    request: FieldRequest | None = None
    keys: tuple[str, ...] = ()  # of data, in the batch's order


@dataclass(slots=True)
class _Values:
    """Field values sorted for a reading: scalars by key, grouped ones by group and label, scaled.
    Only groups with a value have a dict. Neither dict changes once read."""

    scalars: dict[str, float] = field(default_factory=dict)
    groups: dict[str, dict[Any, Any]] = field(default_factory=dict)

    def put(self, key: str, value: float) -> None:
        group, label, scale = _SORTING[key]
        if scale is None:
            self.scalars[label] = value
        elif (of := self.groups.get(group)) is not None:
            of[label] = scale(value)
        else:
            self.groups[group] = {label: scale(value)}

    def merged(self, carried: _Values) -> _Values:
        """These values with those carried from the last slow read. Where one side has none of a
        kind, the other's dict is shared rather than copied."""
        mine, theirs = self.scalars, carried.scalars
        scalars = mine | theirs if mine and theirs else mine or theirs
        groups = carried.groups
        if self.groups:
            groups = dict(groups)
            for group, mine_of in self.groups.items():
                theirs_of = groups.get(group)
                groups[group] = mine_of | theirs_of if theirs_of else mine_of
        return _Values(scalars, groups)


@dataclass(frozen=True, slots=True)
class _SlowValues:
    """Values read on the slow loop and carried into every reading until the next slow read."""

    values: _Values = field(default_factory=_Values)  # from the slow field set
    fan: int | None = None
    clocks_hertz: dict[str, float] = field(default_factory=dict)
    utilization_ratio: dict[str, float] = field(default_factory=dict)
    bar1_used_bytes: int | None = None
    pcie_link_generation: int | None = None
    pcie_link_width: int | None = None
    performance_state: int | None = None


@dataclass(slots=True)
class _Device:
    index: int
    handle: Any
    identity: GpuIdentity
    unsupported: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)  # queries that have answered once: never written off
    fast_fields: _FieldSet = field(default_factory=_FieldSet)
    slow_fields: _FieldSet = field(default_factory=_FieldSet)
    lost: str | None = None
    probe: Backoff = field(default_factory=Backoff)  # when to look for a lost GPU again
    slow: _SlowValues = field(default_factory=_SlowValues)
    slow_read: bool = False  # whether ``slow`` holds a slow read yet
    # pid -> (name, user) of the processes in the last listing: a process keeps its name and user
    # while it holds memory, so each is looked up once, not on every slow read
    described: dict[int, tuple[str | None, str | None]] = field(default_factory=dict)
    # name -> (variant key, call) newest first, see _VARIANTS; built once the handle is known
    variants: dict[str, tuple[tuple[str, Callable[[], Any]], ...]] = field(default_factory=dict)
    utilization: Callable[[], tuple[int, int]] = _no_handle  # (gpu, memory) in %, prepared with the handle

    def __post_init__(self) -> None:
        if self.handle is not None:
            self.variants = {
                name: tuple((f"{name}#{i}", build(self.handle)) for i, build in enumerate(builders))
                for name, builders in _VARIANTS.items()
            }
            self.utilization = prepared.utilization(self.handle)


class NvmlReader:
    """Owns the NVML session and every call made through it.

    One GPU is read by one thread at a time; different GPUs may be read by different threads (the
    sampler leaves a hung read behind and reads the other GPUs on a fresh thread).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._devices: list[_Device] = []
        self._open = False
        self._lock = threading.Lock()  # guards errors, counted from any reading thread
        self.errors: Counter[str] = Counter()
        self.driver_version: str | None = None
        self.cuda_driver_version: str | None = None

    # -- session ----------------------------------------------------------------------------------

    def open(self) -> None:
        """Initialise NVML and read every GPU's identity; raises :class:`NvmlUnavailable`."""
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            hint = _HINTS.get(exc.value, "")
            raise NvmlUnavailable(f"NVML init failed: {_describe(exc)}" + (f"; {hint}" if hint else "")) from exc
        self._open = True
        try:
            self.driver_version = pynvml.nvmlSystemGetDriverVersion()
            cuda = self._system(pynvml.nvmlSystemGetCudaDriverVersion_v2)
            if cuda is not None:
                self.cuda_driver_version = f"{cuda // 1000}.{cuda % 1000 // 10}"
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            self.close()
            raise NvmlUnavailable(f"NVML answered init but not the device count: {_describe(exc)}") from exc
        try:
            self._devices = [self._open_device(i) for i in range(count)]
        except NvmlSessionLost as exc:
            self.close()
            raise NvmlUnavailable(f"NVML stopped answering while opening the GPUs: {exc}") from exc
        for d in self._devices:
            if d.lost is not None:
                d.probe = d.probe.failed(self._clock())
                log.error("GPU %d: cannot open: %s; reporting it as down and trying again later", d.index, d.lost)
        log.info(
            "NVML up: driver %s, CUDA %s, %d GPU(s)",
            self.driver_version,
            self.cuda_driver_version,
            len(self._devices),
        )

    def close(self) -> None:
        """Shut NVML down once (pynvml refcounts init and shutdown)."""
        if self._open:
            self._open = False
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as exc:
                log.debug("nvmlShutdown: %s", _describe(exc))

    def open_events(self) -> XidWatcher | None:
        """An Xid watcher over every GPU that answered at start; None where NVML has no events."""
        devices = [(d.index, d.handle) for d in self._devices if d.lost is None]
        try:
            watcher = XidWatcher(devices, self._clock)
        except pynvml.NVMLError as exc:
            log.info("Xid events unavailable: %s", _describe(exc))
            return None
        return watcher if watcher.watching else None

    @property
    def identities(self) -> list[GpuIdentity]:
        return [d.identity for d in self._devices]

    @property
    def gpu_count(self) -> int:
        return len(self._devices)

    def identity(self, index: int) -> GpuIdentity:
        """One GPU's identity; read anew when a lost GPU comes back."""
        return self._devices[index].identity

    def lost_reason(self, index: int) -> str | None:
        return self._devices[index].lost

    def _system(self, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except _UNSUPPORTED:
            return None

    # -- identity ---------------------------------------------------------------------------------

    def _open_device(self, index: int, uuid: str = "") -> _Device:
        """Open one GPU: by index at start; by UUID when a lost GPU is probed again."""
        try:
            if uuid:
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            else:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            pci_bus_id = pynvml.nvmlDeviceGetPciInfo(handle).busId
        except _SESSION_FATAL as exc:
            raise NvmlSessionLost(_describe(exc)) from exc
        except pynvml.NVMLError as exc:
            device = _Device(index, None, GpuIdentity(index=index, uuid=uuid, name="", pci_bus_id=""))
            device.lost = _describe(exc)
            return device
        device = _Device(index, handle, GpuIdentity(index=index, uuid=uuid, name=name, pci_bus_id=pci_bus_id))
        try:
            device.identity = self._identity(device, uuid, name, pci_bus_id)
            self._probe_fields(device)
        except (GpuLost, PollFailed) as exc:
            device.lost = str(exc)
        return device

    def _reprobe(self, d: _Device) -> _Device:
        """A lost GPU, once its backoff is due: open it again through a fresh handle, or raise GpuLost."""
        now = self._clock()
        if not d.probe.due(now):
            raise GpuLost(d.lost)
        fresh = self._open_device(d.index, d.identity.uuid)
        if fresh.lost is not None:
            d.probe = d.probe.failed(now)
            raise GpuLost(d.lost)
        log.warning(
            "GPU %d (%s): answering again (it was lost: %s); identity and capabilities read anew",
            d.index,
            fresh.identity.uuid,
            d.lost,
        )
        self._devices[d.index] = fresh
        return fresh

    def _identity(self, d: _Device, uuid: str, name: str, pci_bus_id: str) -> GpuIdentity:
        h = d.handle
        constraints = self._q(d, "power_constraints", pynvml.nvmlDeviceGetPowerManagementLimitConstraints, h)
        default_limit = self._q(d, "power_default_limit", pynvml.nvmlDeviceGetPowerManagementDefaultLimit, h)
        thresholds = {}
        for label, code in fields.TEMPERATURE_THRESHOLDS.items():
            value = self._q(d, f"threshold:{label}", pynvml.nvmlDeviceGetTemperatureThreshold, h, code)
            if value is not None:
                thresholds[label] = float(value)
        max_clocks = {}
        for label, code in fields.CLOCKS.items():
            value = self._q(d, f"max_clock:{label}", pynvml.nvmlDeviceGetMaxClockInfo, h, code)
            if value:
                max_clocks[label] = value * MHZ
        total, _, _, _ = self._first(d, "memory_info") or _NO_MEMORY
        bar1 = self._q(d, "bar1", pynvml.nvmlDeviceGetBAR1MemoryInfo, h)
        ecc = self._q(d, "ecc_mode", pynvml.nvmlDeviceGetEccMode, h)
        return GpuIdentity(
            index=d.index,
            uuid=uuid,
            name=name,
            pci_bus_id=pci_bus_id,
            serial=self._q(d, "serial", pynvml.nvmlDeviceGetSerial, h),
            vbios_version=self._q(d, "vbios", pynvml.nvmlDeviceGetVbiosVersion, h),
            power_limit_default_watts=None if default_limit is None else default_limit / 1000.0,
            power_limit_min_watts=None if constraints is None else constraints[0] / 1000.0,
            power_limit_max_watts=None if constraints is None else constraints[1] / 1000.0,
            temperature_thresholds_celsius=thresholds,
            max_clocks_hertz=max_clocks,
            memory_size_bytes=total,
            bar1_size_bytes=None if bar1 is None else int(bar1.bar1Total),
            ecc_enabled=None if ecc is None else bool(ecc[0]),
            pcie_max_generation=self._q(d, "pcie_max_gen", pynvml.nvmlDeviceGetMaxPcieLinkGeneration, h),
            pcie_max_width=self._q(d, "pcie_max_width", pynvml.nvmlDeviceGetMaxPcieLinkWidth, h),
        )

    def _probe_fields(self, d: _Device) -> None:
        """Ask every field once; keep those that answered, and a working fallback for the rest."""
        try:
            values = pynvml.nvmlDeviceGetFieldValues(d.handle, [datum.field_id for datum in _DATA])
            answered = {v.fieldId for v in values if v.nvmlReturn == pynvml.NVML_SUCCESS}
        except _UNSUPPORTED:
            answered = set()  # a driver without nvmlDeviceGetFieldValues: fallbacks only
        except _DEVICE_FATAL as exc:
            raise GpuLost(_describe(exc)) from exc
        except _SESSION_FATAL as exc:
            raise NvmlSessionLost(_describe(exc)) from exc
        except pynvml.NVMLError as exc:
            raise PollFailed(f"field values: {_describe(exc)}") from exc
        for datum in _DATA:
            fs = d.slow_fields if datum.slow else d.fast_fields
            if datum.field_id in answered:
                fs.data.append(datum)
            elif datum.fallback is not None and self._q(d, datum.key, datum.fallback, d.handle) is not None:
                fs.fallbacks.append(datum)
            else:
                d.unsupported.add(datum.key)
        for fs in (d.fast_fields, d.slow_fields):
            fs.request = FieldRequest([datum.field_id for datum in fs.data]) if fs.data else None
            fs.keys = tuple(datum.key for datum in fs.data)
        missing = sorted(datum.key for datum in _DATA if datum.key in d.unsupported)
        if missing:
            log.info("GPU %d: not reported by this GPU/driver: %s", d.index, ", ".join(missing))

    # -- one query --------------------------------------------------------------------------------

    def _q(self, d: _Device, key: str, fn: Callable[..., T], *args: Any) -> T | None:
        """Call one NVML getter for one GPU, translating errors by the policy in the module doc."""
        if key in d.unsupported:
            return None
        try:
            value = fn(*args)
        except _UNSUPPORTED as exc:
            if key in d.answered:  # it worked before: a passing fault, not a missing feature
                self._count_error(d, key, exc)
                return None
            d.unsupported.add(key)
            log.info("GPU %d: %s not available (%s); not asking again", d.index, key, _describe(exc))
            return None
        except _DEVICE_FATAL as exc:
            raise GpuLost(_describe(exc)) from exc
        except _SESSION_FATAL as exc:
            raise NvmlSessionLost(_describe(exc)) from exc
        except pynvml.NVMLError_Unknown as exc:
            self._count(key)
            raise PollFailed(f"{key}: {_describe(exc)}") from exc
        except pynvml.NVMLError as exc:
            self._count_error(d, key, exc)
            return None
        d.answered.add(key)
        return value

    def error_counts(self) -> dict[str, int]:
        """A copy of :attr:`errors`, safe while other threads read GPUs."""
        with self._lock:
            return dict(self.errors)

    def _count(self, key: str) -> None:
        with self._lock:
            self.errors[key] += 1

    def _count_error(self, d: _Device, key: str, exc: pynvml.NVMLError) -> None:
        self._count(key)
        log.warning("GPU %d: %s failed: %s", d.index, key, _describe(exc))

    def _first(self, d: _Device, key: str) -> Any:
        """Try the versioned variants of ``key`` newest first; the first the driver has is kept."""
        for variant, call in d.variants[key]:
            if variant in d.unsupported:
                continue
            value = self._q(d, variant, call)
            if value is not None or variant not in d.unsupported:
                return value
        return None

    # -- every poll -------------------------------------------------------------------------------

    def read(self, index: int, slow: bool = True) -> GpuReading:
        """Read one GPU now. Raises :class:`GpuLost`, or :class:`PollFailed` for this poll only.

        With ``slow`` false only the fast values are read; the slow ones (see the module doc) are
        those of the last slow read.
        """
        d = self._devices[index]
        if d.lost is not None:
            d = self._reprobe(d)
        try:
            if slow or not d.slow_read:  # a GPU just opened (or found again) has nothing to carry yet
                d.slow = self._read_slow(d)
                d.slow_read = True
            return self._read(d)
        except GpuLost as exc:
            d.lost = str(exc)
            d.probe = Backoff().failed(self._clock())
            log.error("GPU %d (%s): lost: %s; looking for it again on a backoff", d.index, d.identity.uuid, exc)
            raise

    def _read(self, d: _Device) -> GpuReading:
        h = d.handle
        values = self._field_values(d, d.fast_fields).merged(d.slow.values)
        scalars, groups = values.scalars, values.groups

        temperature = self._first(d, "temperature")
        margin = self._q(d, "temperature_margin", pynvml.nvmlDeviceGetMarginTemperature, h)
        sm = self._q(d, "clock:sm", pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)
        clocks = d.slow.clocks_hertz if sm is None else {"sm": sm * MHZ, **d.slow.clocks_hertz}
        rates = self._q(d, "utilization", d.utilization)
        utilization = (
            d.slow.utilization_ratio
            if rates is None
            else {"gpu": rates[0] / 100.0, "memory": rates[1] / 100.0, **d.slow.utilization_ratio}
        )
        reasons = self._first(d, "clock_event_reasons")
        _, used, free, reserved = self._first(d, "memory_info") or _NO_MEMORY

        get = scalars.get
        return GpuReading(
            timestamp=self._clock(),
            power_watts=_scaled(get("power_mw"), 1e3),
            power_instant_watts=_scaled(get("power_instant_mw"), 1e3),
            power_limit_watts=_scaled(get("power_limit_mw"), 1e3),
            energy_joules=_scaled(get("energy_mj"), 1e3),
            temperature_celsius=None if temperature is None else float(temperature),
            memory_temperature_celsius=get("memory_temperature"),
            temperature_margin_celsius=None if margin is None else float(margin),
            fan_speed_ratio=_scaled(d.slow.fan, 100),
            performance_state=d.slow.performance_state,
            clocks_hertz=clocks,
            utilization_ratio=utilization,
            memory_used_bytes=used,
            memory_free_bytes=free,
            memory_reserved_bytes=reserved,
            bar1_used_bytes=d.slow.bar1_used_bytes,
            clock_event_reasons=None if reasons is None else fields.decode_reasons(reasons),
            violation_seconds=groups.get("violation", _EMPTY),
            ecc_errors=groups.get("ecc", _EMPTY),
            retired_pages=groups.get("retired", _EMPTY),
            retired_pages_pending=_flag(get("retired_pending")),
            remapped_rows=groups.get("remapped", _EMPTY),
            row_remap_pending=_flag(get("remap_pending")),
            row_remap_failure=_flag(get("remap_failure")),
            pcie_link_generation=d.slow.pcie_link_generation,
            pcie_link_width=d.slow.pcie_link_width,
            pcie_replay_errors=_int(get("pcie_replay")),
            pcie_transmit_bytes=_int(get("pcie_tx_bytes")),
            pcie_receive_bytes=_int(get("pcie_rx_bytes")),
        )

    def _slow_clocks(self, d: _Device) -> dict[str, float]:
        clocks = {}
        for label, key, code in _SLOW_CLOCKS:
            value = self._q(d, key, pynvml.nvmlDeviceGetClockInfo, d.handle, code)
            if value is not None:
                clocks[label] = value * MHZ
        return clocks

    def _read_slow(self, d: _Device) -> _SlowValues:
        """The slow-loop values: fan, P-state, clocks but SM, encoder/decoder, BAR1, PCIe link."""
        h = d.handle
        utilization: dict[str, float] = {}
        for engine, fn in (
            ("encoder", pynvml.nvmlDeviceGetEncoderUtilization),
            ("decoder", pynvml.nvmlDeviceGetDecoderUtilization),
        ):
            sample = self._q(d, f"utilization:{engine}", fn, h)
            if sample is not None:
                utilization[engine] = sample[0] / 100.0
        bar1 = self._q(d, "bar1", pynvml.nvmlDeviceGetBAR1MemoryInfo, h)
        pstate = self._q(d, "pstate", pynvml.nvmlDeviceGetPerformanceState, h)
        return _SlowValues(
            values=self._field_values(d, d.slow_fields),
            fan=self._q(d, "fan", pynvml.nvmlDeviceGetFanSpeed, h),
            clocks_hertz=self._slow_clocks(d),
            utilization_ratio=utilization,
            bar1_used_bytes=None if bar1 is None else int(bar1.bar1Used),
            pcie_link_generation=self._q(d, "pcie_gen", pynvml.nvmlDeviceGetCurrPcieLinkGeneration, h),
            pcie_link_width=self._q(d, "pcie_width", pynvml.nvmlDeviceGetCurrPcieLinkWidth, h),
            performance_state=None if pstate is None or pstate == pynvml.NVML_PSTATE_UNKNOWN else int(pstate),
        )

    def _field_values(self, d: _Device, fs: _FieldSet) -> _Values:
        """One field set: its batch, then direct calls for the fields this driver lacks."""
        values = _Values()
        put = values.put
        batch = None if fs.request is None else self._batch(d, fs.request)
        if batch is not None:
            for key, value in zip(fs.keys, batch, strict=True):
                if value is not None:
                    put(key, value)
                else:
                    self._count(key)
        for datum in fs.fallbacks:
            if datum.fallback is not None and (value := self._q(d, datum.key, datum.fallback, d.handle)) is not None:
                put(datum.key, float(value))
        return values

    def _batch(self, d: _Device, request: FieldRequest) -> list[float | None] | None:
        """One nvmlDeviceGetFieldValues call for every probed field of a set; None if it failed."""
        try:
            return request.fetch(d.handle)
        except _DEVICE_FATAL as exc:
            raise GpuLost(_describe(exc)) from exc
        except _SESSION_FATAL as exc:
            raise NvmlSessionLost(_describe(exc)) from exc
        except pynvml.NVMLError_Unknown as exc:
            self._count("field_values")
            raise PollFailed(f"field values: {_describe(exc)}") from exc
        except pynvml.NVMLError as exc:
            self._count_error(d, "field_values", exc)
            return None

    # -- slower loop ------------------------------------------------------------------------------

    def processes(self, index: int) -> tuple[GpuProcess, ...]:
        """Processes holding memory on one GPU (compute and graphics), with name and user.

        NVML: nvmlDeviceGetComputeRunningProcesses_v3 / _v2 and the graphics twin (ms-scale calls,
        hence the slower loop). Names and users come from psutil, once per process while it stays
        in the listing; a pid outside our PID namespace falls back to nvmlSystemGetProcessName.
        """
        d = self._devices[index]
        if d.lost is not None:
            return ()
        found: dict[int, Any] = {}
        for kind in ("processes:compute", "processes:graphics"):
            procs = self._first(d, kind) or []
            for proc in procs:
                found.setdefault(proc.pid, proc)
        # Only the pids of this listing stay known: one that leaves and comes back is looked up again.
        known, d.described = d.described, {}
        out = []
        for pid, proc in sorted(found.items()):
            name, user = d.described[pid] = known.get(pid) or _name_and_user(pid)
            out.append(GpuProcess(pid=pid, name=name, user=user, used_memory_bytes=proc.usedGpuMemory))
        return tuple(out)


def _name_and_user(pid: int) -> tuple[str | None, str | None]:
    """From psutil; a pid outside our PID namespace falls back to nvmlSystemGetProcessName (no user)."""
    try:
        p = psutil.Process(pid)
        return p.name(), p.username()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, KeyError):
        try:
            return pynvml.nvmlSystemGetProcessName(pid), None
        except pynvml.NVMLError:
            return None, None


def _describe(exc: pynvml.NVMLError) -> str:
    # str(NVMLError) for codes outside pynvml's own table calls into the library; avoid that.
    return f"{type(exc).__name__.removeprefix('NVMLError_')} (code {exc.value})"


def _scaled(value: float | None, divisor: float) -> float | None:
    return None if value is None else value / divisor


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _flag(value: float | None) -> bool | None:
    return None if value is None else bool(value)
