"""Reads every GPU through pynvml: identity once, readings every poll, processes on a slower loop.

Policy, per shared/research/nvml.md §4.4:

* NVML is initialised once (:meth:`NvmlReader.open`) and shut down once; never per poll.
* Each query that answers NotSupported / NoPermission / FunctionNotFound / Deprecated /
  ArgumentVersionMismatch is recorded as unsupported for that GPU, logged once at INFO, and not
  asked again. Its value is ``None`` and never exported.
* Versioned symbols are tried newest first and the working one is kept
  (``nvmlDeviceGetTemperatureV`` → ``nvmlDeviceGetTemperature``, ``…ClocksEventReasons`` →
  ``…ClocksThrottleReasons``, memory info v2 → v1, processes ``_v3`` → ``_v2``).
* Every value with a field id is declared once in :data:`FIELDS`, named by the
  :class:`GpuReading` attribute it fills, and read in one ``nvmlDeviceGetFieldValues`` call per
  GPU and loop; the ids are probed once and each element's own return code is checked.
* A fast poll makes at most seven NVML calls per GPU: the field batch, temperature, temperature
  margin (R570+; six calls on older drivers), SM clock, utilization, clock event reasons and memory info (plus a direct call for each field an
  old driver lacks). Values that change slowly or cost more (fan, P-state, the graphics, video and
  memory clocks, encoder and decoder utilisation, BAR1 use, PCIe link generation and width; in the
  second field batch the power cap, the violation, PCIe traffic and replay counters, remapped rows,
  aggregate ECC counts and retired pages) are read only when the caller asks for a slow read (the
  sampler's process loop) and carried between reads (research/nvml.md §7; see :data:`FIELDS` for
  why each field is where it is).
* A query that has answered once and later answers NotSupported (a driver in trouble) is not
  written off: that poll's value is ``None`` and the error is counted, like any other error.
* ``GpuIsLost``, ``ResetRequired`` and ``IrqIssue`` raise :class:`GpuLost` for that GPU only; a
  lost GPU costs no calls until it is probed again, by UUID through a fresh handle, on a backoff
  (1 s doubling to 60 s): after a reset it is opened anew and read again.
  ``Unknown`` fails that GPU's poll; other errors cost one value for one poll and are counted.
* ``Uninitialized``, ``DriverNotLoaded`` and ``LibRmVersionMismatch`` from any call mean the
  session is gone (the driver was unloaded or reloaded) and raise :class:`NvmlSessionLost`: the
  caller closes this reader and opens a new one.
* A query is named by its NVML function, with what it asks for after ``:`` where one function
  answers several (``nvmlDeviceGetClockInfo:sm``, ``nvmlDeviceGetFieldValues:power_watts``): in
  the log, in the set of queries a GPU does not answer, and in :meth:`NvmlReader.error_counts`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from typing import Any, TypeVar

import psutil
import pynvml

from gpuwatch.analysis.backoff import Backoff
from gpuwatch.labels import RECOVERY_ACTIONS, utf8_text
from gpuwatch.model import GpuIdentity, GpuProcess, GpuReading, MigReading
from gpuwatch.nvml import fields, gpm, mig, nvlink, prepared
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


# -- values read by field id ----------------------------------------------------------------------
#
# Each value NVML reports by field id is one declaration in FIELDS below, named by the GpuReading
# attribute it fills. The reader asks every declared field once per GPU when it opens it, reads
# those that answered in one nvmlDeviceGetFieldValues batch per loop (fast or slow), reads the rest
# through their direct call where they have one, converts each to SI units and hands the lot to
# GpuReading by name. Adding a value: one declaration here, its GpuReading attribute, and one
# collector line in gpuwatch/exporter/.


def from_milli(value: float) -> float:
    """mW → W, mJ → J."""
    return value / 1e3


def from_nano(value: float) -> float:
    """ns → s."""
    return value / 1e9


Label = str | tuple[str, ...]


def recovery_action_name(value: float) -> str:
    """nvmlGpuRecoveryAction_t -> its name in :data:`gpuwatch.labels.RECOVERY_ACTIONS` (``unknown``
    for a code newer than this gpuwatch)."""
    code = int(value)
    return RECOVERY_ACTIONS[code] if 0 <= code < len(RECOVERY_ACTIONS) else "unknown"


@dataclass(frozen=True, slots=True)
class Direct:
    """The direct NVML call for a driver without a field: ``function(handle, *args)``, and of the
    struct it returns, ``member`` where one is named. ``function`` is pynvml's wrapper, which bears
    the NVML function's name."""

    function: Callable[..., Any]
    args: tuple[int, ...] = ()
    member: str | None = None

    def bind(self, handle: Any) -> Callable[[], Any]:
        """The call for one GPU, with no arguments left."""
        call = partial(self.function, handle, *self.args)
        if self.member is None:
            return call
        member = attrgetter(self.member)
        return lambda: member(call())


@dataclass(frozen=True, slots=True)
class Field:
    """One value NVML reports by field id (``nvmlDeviceGetFieldValues``).

    ``name`` is the :class:`GpuReading` attribute it fills; ``unit`` turns NVML's number into that
    attribute's (mW → W, ns → s, a count, a flag); for an attribute that maps labels to values,
    ``label`` is this value's key in it. ``direct`` is the call for drivers that lack the field;
    ``slow`` reads it on the slow loop (see the module doc).
    """

    name: str
    field_id: int
    unit: Callable[[float], Any]
    direct: Direct | None = None
    label: Label | None = None
    slow: bool = False

    @property
    def key(self) -> str:
        """``power_watts``; for a labelled value ``ecc_errors:corrected:volatile`` (logs, error queries)."""
        if self.label is None:
            return self.name
        return ":".join((self.name, *((self.label,) if isinstance(self.label, str) else self.label)))

    @property
    def direct_query(self) -> str:
        """The direct call's query name: the NVML function, and for a labelled value its label."""
        assert self.direct is not None
        function = self.direct.function.__name__
        return function + self.key.removeprefix(self.name)

    def put(self, values: dict[str, Any], raw: float) -> None:
        """Convert ``raw`` and file it under this value's attribute (and label) in ``values``."""
        label = self.label
        if label is None:
            values[self.name] = self.unit(raw)
        elif (mapping := values.get(self.name)) is not None:
            mapping[label] = self.unit(raw)
        else:
            values[self.name] = {label: self.unit(raw)}


_ECC = pynvml.nvmlDeviceGetTotalEccErrors
_CORRECTED, _UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
_VOLATILE, _AGGREGATE = pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC


def _violation(policy: int) -> Direct:
    return Direct(pynvml.nvmlDeviceGetViolationStatus, (policy,), "violationTime")


# Every poll: what the poll's own judgements and rates need now (energy and power for tokens per
# joule, volatile ECC and the remap flags for the verdict). The slow loop: counters only ever read
# as rates over minutes (violations, PCIe traffic and replays), counts that move a few times in a
# GPU's life (remapped rows, aggregate ECC, retired pages) and the power cap, which moves when
# someone sets it. Each is still in every reading, as of the last slow read (research/nvml.md §7).
# The nvidia-smi equivalent follows each where it has one (`--query-gpu=` name or `-q` line).
# fmt: off
FIELDS: tuple[Field, ...] = (
    # mJ since the driver loaded
    Field("energy_joules", pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, from_milli,
          Direct(pynvml.nvmlDeviceGetTotalEnergyConsumption)),
    # power.draw.average: the 1 s average nvmlDeviceGetPowerUsage returns on Ampere and later (not
    # GA100); older parts lack the field and keep the direct call, which reports their instant reading.
    Field("power_watts", pynvml.NVML_FI_DEV_POWER_AVERAGE, from_milli, Direct(pynvml.nvmlDeviceGetPowerUsage)),
    Field("power_instant_watts", pynvml.NVML_FI_DEV_POWER_INSTANT, from_milli),  # power.draw.instant
    Field("power_limit_watts", pynvml.NVML_FI_DEV_POWER_CURRENT_LIMIT, from_milli,  # enforced.power.limit
          Direct(pynvml.nvmlDeviceGetEnforcedPowerLimit), slow=True),
    Field("memory_temperature_celsius", pynvml.NVML_FI_DEV_MEMORY_TEMP, float),  # temperature.memory (HBM)
    Field("pcie_replay_errors", pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER, int,  # `-q` "Replays Since Reset"
          Direct(pynvml.nvmlDeviceGetPcieReplayCounter), slow=True),
    Field("pcie_transmit_bytes", pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, int, slow=True),
    Field("pcie_receive_bytes", pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES, int, slow=True),
    Field("retired_pages_pending", pynvml.NVML_FI_DEV_RETIRED_PENDING, bool, slow=True),  # retired_pages.pending
    Field("row_remap_pending", pynvml.NVML_FI_DEV_REMAPPED_PENDING, bool),  # `-q -d ROW_REMAPPER` "Pending"
    Field("row_remap_failure", pynvml.NVML_FI_DEV_REMAPPED_FAILURE, bool),  # … "Remapping Failure Occurred"
    # Time below target clocks per policy, ns since driver load. Ids 74-79 are stable across driver
    # branches; the newer clock-event counters (251-253 or 269-271) were renumbered, so they are not
    # used (shared/research/nvml.md §3.5). nvidia-smi `-q -d PERFORMANCE` shows the reasons, not these.
    Field("violation_seconds", pynvml.NVML_FI_DEV_PERF_POLICY_POWER, from_nano,
          _violation(pynvml.NVML_PERF_POLICY_POWER), label="power", slow=True),
    Field("violation_seconds", pynvml.NVML_FI_DEV_PERF_POLICY_THERMAL, from_nano,
          _violation(pynvml.NVML_PERF_POLICY_THERMAL), label="thermal", slow=True),
    Field("violation_seconds", pynvml.NVML_FI_DEV_PERF_POLICY_SYNC_BOOST, from_nano,
          _violation(pynvml.NVML_PERF_POLICY_SYNC_BOOST), label="sync_boost", slow=True),
    Field("violation_seconds", pynvml.NVML_FI_DEV_PERF_POLICY_BOARD_LIMIT, from_nano,
          _violation(pynvml.NVML_PERF_POLICY_BOARD_LIMIT), label="board_limit", slow=True),
    Field("violation_seconds", pynvml.NVML_FI_DEV_PERF_POLICY_LOW_UTILIZATION, from_nano,
          _violation(pynvml.NVML_PERF_POLICY_LOW_UTILIZATION), label="low_utilization", slow=True),
    Field("violation_seconds", pynvml.NVML_FI_DEV_PERF_POLICY_RELIABILITY, from_nano,
          _violation(pynvml.NVML_PERF_POLICY_RELIABILITY), label="reliability", slow=True),
    # ecc.errors.{corrected,uncorrected}.{volatile,aggregate}.total. Volatile counts every poll (an
    # uncorrectable error is critical now); aggregates, which only restate them across driver loads,
    # on the slow loop (research/nvml.md §7).
    Field("ecc_errors", pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL, int,
          Direct(_ECC, (_CORRECTED, _VOLATILE)), label=("corrected", "volatile")),
    Field("ecc_errors", pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL, int,
          Direct(_ECC, (_UNCORRECTED, _VOLATILE)), label=("uncorrected", "volatile")),
    Field("ecc_errors", pynvml.NVML_FI_DEV_ECC_SBE_AGG_TOTAL, int,
          Direct(_ECC, (_CORRECTED, _AGGREGATE)), label=("corrected", "aggregate"), slow=True),
    Field("ecc_errors", pynvml.NVML_FI_DEV_ECC_DBE_AGG_TOTAL, int,
          Direct(_ECC, (_UNCORRECTED, _AGGREGATE)), label=("uncorrected", "aggregate"), slow=True),
    # retired_pages.single_bit_ecc.count, retired_pages.double_bit.count (pre-Ampere)
    Field("retired_pages", pynvml.NVML_FI_DEV_RETIRED_SBE, int, label="multiple_single_bit", slow=True),
    Field("retired_pages", pynvml.NVML_FI_DEV_RETIRED_DBE, int, label="double_bit", slow=True),
    # `-q -d ROW_REMAPPER` "Correctable Error", "Uncorrectable Error" (Ampere and later)
    Field("remapped_rows", pynvml.NVML_FI_DEV_REMAPPED_COR, int, label="correctable", slow=True),
    Field("remapped_rows", pynvml.NVML_FI_DEV_REMAPPED_UNC, int, label="uncorrectable", slow=True),
    # `-q` "GPU Recovery Action" (R570+; 590 and 595 captures show "None"): every poll, since a
    # driver that asks for a reset decides the verdict now; one more entry of the fast batch.
    Field("recovery_action", pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION, recovery_action_name),
)
# fmt: on


def check_fields(declared: tuple[Field, ...]) -> None:
    """Raise TypeError unless ``declared`` fits :class:`GpuReading`: each names one of its attributes,
    labelled exactly when that attribute maps labels to values; no field id or key twice."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(GpuReading)}
    for f in declared:
        kind = kinds.get(f.name)
        if kind is None:
            raise TypeError(f"field {f.key}: GpuReading has no attribute {f.name!r}")
        if (f.label is not None) != kind.startswith("Mapping["):
            raise TypeError(f"field {f.key}: a label goes with a mapping attribute and only there ({kind})")
    for what, seen in (("field id", [f.field_id for f in declared]), ("key", [f.key for f in declared])):
        if len(set(seen)) != len(seen):
            raise TypeError(f"a {what} is declared twice: {[k for k, n in Counter[object](seen).items() if n > 1]}")


check_fields(FIELDS)  # at import: a declaration that does not fit fails here, not in a poll
# Labelled attributes with values on both loops (ECC): a fast read and the slow values it carries
# each have a mapping for these, joined into one.
_BOTH_LOOPS = tuple({f.name for f in FIELDS if f.label is not None and not f.slow} & {f.name for f in FIELDS if f.slow})
_FIELD_VALUES = "nvmlDeviceGetFieldValues"


def _no_handle() -> Any:
    """What a query of a GPU that was never opened answers (it is reported lost until it opens)."""
    raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)


def _memory_v1(memory: Any) -> tuple[int, int, int, None]:
    return memory.total, memory.used, memory.free, None


_NO_MEMORY = (None, None, None, None)


# Versioned queries, newest first (module doc): name -> (NVML function, builder) per variant, each
# builder turning a handle into a call with no arguments. A device builds its calls once, when it
# is opened. The function's name is the variant's query name (errors, written-off queries).
_VARIANTS: dict[str, tuple[tuple[str, Callable[[Any], Callable[[], Any]]], ...]] = {
    "temperature": (
        ("nvmlDeviceGetTemperatureV", prepared.temperature),
        (
            "nvmlDeviceGetTemperature",
            lambda h: partial(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
        ),
    ),
    "clock_event_reasons": (
        ("nvmlDeviceGetCurrentClocksEventReasons", lambda h: partial(pynvml.nvmlDeviceGetCurrentClocksEventReasons, h)),
        (
            "nvmlDeviceGetCurrentClocksThrottleReasons",
            lambda h: partial(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, h),
        ),
    ),
    # (total, used, free, reserved) in bytes; v1 has no reserved
    "memory_info": (
        ("nvmlDeviceGetMemoryInfo_v2", prepared.memory_info),
        ("nvmlDeviceGetMemoryInfo", lambda h: lambda: _memory_v1(pynvml.nvmlDeviceGetMemoryInfo(h))),
    ),
    "processes:compute": (
        (
            "nvmlDeviceGetComputeRunningProcesses_v3",
            lambda h: partial(pynvml.nvmlDeviceGetComputeRunningProcesses_v3, h),
        ),
        (
            "nvmlDeviceGetComputeRunningProcesses_v2",
            lambda h: partial(pynvml.nvmlDeviceGetComputeRunningProcesses_v2, h),
        ),
    ),
    "processes:graphics": (
        (
            "nvmlDeviceGetGraphicsRunningProcesses_v3",
            lambda h: partial(pynvml.nvmlDeviceGetGraphicsRunningProcesses_v3, h),
        ),
        (
            "nvmlDeviceGetGraphicsRunningProcesses_v2",
            lambda h: partial(pynvml.nvmlDeviceGetGraphicsRunningProcesses_v2, h),
        ),
    ),
}


# The SM clock is read every poll (throttling shows there first; a reading lists it first). The
# graphics and video clocks follow it, and the memory clock moves only with the P-state, so those
# three are read on the slow loop: (label, query name, NVML clock type).
_SLOW_CLOCKS = tuple(
    (label, f"nvmlDeviceGetClockInfo:{label}", code) for label, code in fields.CLOCKS.items() if label != "sm"
)


@dataclass(slots=True)
class _FieldSet:
    """The field values read together: one batch, plus direct calls where the driver lacks a field."""

    batched: list[Field] = field(default_factory=list)  # in the batch's order
    direct: list[tuple[Field, str, Callable[[], Any]]] = field(default_factory=list)  # (field, query, call)
    request: FieldRequest | None = None


@dataclass(frozen=True, slots=True)
class _SlowValues:
    """Values read on the slow loop and carried into every reading until the next slow read."""

    field_values: dict[str, Any] = field(default_factory=dict)  # attribute -> value, from the slow field set
    fan: int | None = None
    clocks_hertz: dict[str, float] = field(default_factory=dict)
    utilization_ratio: dict[str, float] = field(default_factory=dict)
    bar1_used_bytes: int | None = None
    pcie_link_generation: int | None = None
    pcie_link_width: int | None = None
    performance_state: int | None = None
    nvlink: nvlink.NvLinkValues | None = None


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
    # name -> (query name, call) newest first, see _VARIANTS; built once the handle is known
    variants: dict[str, tuple[tuple[str, Callable[[], Any]], ...]] = field(default_factory=dict)
    utilization: Callable[[], tuple[int, int]] = _no_handle  # (gpu, memory) in %, prepared with the handle
    # GPM, MIG, privileges, per-process utilization (gpuwatch/nvml/gpm.py, mig.py)
    gpm_stream: gpm.GpmStream | None = None  # on GPUs with GPM, outside MIG mode
    mig_enabled: bool | None = None
    mig_devices: list[mig.MigDevice] = field(default_factory=list)
    mig_gpm: dict[int, gpm.GpmStream] = field(default_factory=dict)  # GPU instance id -> its samples
    gpm_supported: bool = False  # nvmlGpmQueryDeviceSupport said so (for GPU instances made later too)
    mig_listed: bool = False  # the slow read has listed the MIG devices once
    mig_processes: dict[int, int] = field(default_factory=dict)  # MIG device index -> processes (slow loop)
    denied: set[str] = field(default_factory=set)  # queries that answered NoPermission
    process_samples_since_us: int = 0  # the newest per-process utilization sample seen (fed back to NVML)
    nvlink: nvlink.NvLinkPlan | None = None  # None: no NVLink (or none of its fields answer)

    def __post_init__(self) -> None:
        if self.handle is not None:
            self.variants = {
                name: tuple((query, build(self.handle)) for query, build in variants)
                for name, variants in _VARIANTS.items()
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
        self._lock = threading.Lock()  # guards _errors, counted from any reading thread
        self._errors: Counter[tuple[int, str]] = Counter()  # (GPU index, query name) -> errors
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
            for d in self._devices:
                _close_gpm(d)
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
            self._probe_mig_and_gpm(device)
            self._probe_nvlink(device)
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
        _close_gpm(d)
        self._devices[d.index] = fresh
        return fresh

    def _identity(self, d: _Device, uuid: str, name: str, pci_bus_id: str) -> GpuIdentity:
        h = d.handle
        constraints = self._call(d, pynvml.nvmlDeviceGetPowerManagementLimitConstraints, h)
        default_limit = self._q(
            d, "nvmlDeviceGetPowerManagementDefaultLimit", pynvml.nvmlDeviceGetPowerManagementDefaultLimit, h
        )
        thresholds = {}
        for label, code in fields.TEMPERATURE_THRESHOLDS.items():
            value = self._q(
                d, f"nvmlDeviceGetTemperatureThreshold:{label}", pynvml.nvmlDeviceGetTemperatureThreshold, h, code
            )
            if value is not None:
                thresholds[label] = float(value)
        tlimit = {}
        request = FieldRequest(list(fields.TEMPERATURE_TLIMIT_FIELDS.values()))
        answers = self._q(d, "nvmlDeviceGetFieldValues:temperature_tlimit_celsius", request.fetch, h)
        for label, value in zip(fields.TEMPERATURE_TLIMIT_FIELDS, answers or (), strict=False):
            if value is not None:  # each entry answers for itself: NotSupported on Ampere, memory_max on GDDR
                tlimit[label] = value
        max_clocks = {}
        for label, code in fields.CLOCKS.items():
            value = self._q(d, f"nvmlDeviceGetMaxClockInfo:{label}", pynvml.nvmlDeviceGetMaxClockInfo, h, code)
            if value:
                max_clocks[label] = value * MHZ
        total, _, _, _ = self._first(d, "memory_info") or _NO_MEMORY
        bar1 = self._call(d, pynvml.nvmlDeviceGetBAR1MemoryInfo, h)
        ecc = self._call(d, pynvml.nvmlDeviceGetEccMode, h)
        return GpuIdentity(
            index=d.index,
            uuid=uuid,
            name=name,
            pci_bus_id=pci_bus_id,
            serial=self._call(d, pynvml.nvmlDeviceGetSerial, h),
            vbios_version=self._call(d, pynvml.nvmlDeviceGetVbiosVersion, h),
            power_limit_default_watts=None if default_limit is None else default_limit / 1000.0,
            power_limit_min_watts=None if constraints is None else constraints[0] / 1000.0,
            power_limit_max_watts=None if constraints is None else constraints[1] / 1000.0,
            temperature_thresholds_celsius=thresholds,
            temperature_tlimit_celsius=tlimit,
            max_clocks_hertz=max_clocks,
            memory_size_bytes=total,
            bar1_size_bytes=None if bar1 is None else int(bar1.bar1Total),
            ecc_enabled=None if ecc is None else bool(ecc[0]),
            pcie_max_generation=self._call(d, pynvml.nvmlDeviceGetMaxPcieLinkGeneration, h),
            pcie_max_width=self._call(d, pynvml.nvmlDeviceGetMaxPcieLinkWidth, h),
        )

    def _probe_fields(self, d: _Device) -> None:
        """Ask every declared field once; keep those that answered, and a working direct call for the rest."""
        try:
            values = pynvml.nvmlDeviceGetFieldValues(d.handle, [f.field_id for f in FIELDS])
            answered = {v.fieldId for v in values if v.nvmlReturn == pynvml.NVML_SUCCESS}
        except _UNSUPPORTED:
            answered = set()  # a driver without nvmlDeviceGetFieldValues: direct calls only
        except _DEVICE_FATAL as exc:
            raise GpuLost(_describe(exc)) from exc
        except _SESSION_FATAL as exc:
            raise NvmlSessionLost(_describe(exc)) from exc
        except pynvml.NVMLError as exc:
            raise PollFailed(f"{_FIELD_VALUES}: {_describe(exc)}") from exc
        missing = []
        for f in FIELDS:
            fs = d.slow_fields if f.slow else d.fast_fields
            if f.field_id in answered:
                fs.batched.append(f)
                continue
            if f.direct is not None:
                query, call = f.direct_query, f.direct.bind(d.handle)
                if self._q(d, query, call) is not None:
                    fs.direct.append((f, query, call))
                    continue
            missing.append(f.key)
        for fs in (d.fast_fields, d.slow_fields):
            fs.request = FieldRequest([f.field_id for f in fs.batched]) if fs.batched else None
        if missing:
            log.info("GPU %d: not reported by this GPU/driver: %s", d.index, ", ".join(sorted(missing)))

    def _probe_nvlink(self, d: _Device) -> None:
        """The NVLink plan: the link count, then every per-link entry asked once (gpuwatch.nvml.nvlink)."""
        count_request = FieldRequest([nvlink.LINK_COUNT_FIELD])
        answer = self._q(d, f"{_FIELD_VALUES}:nvlink_link_count", count_request.fetch, d.handle)
        links = int(answer[0] or 0) if answer else 0
        if links <= 0:
            return
        candidates = nvlink.entries(links)
        probe = FieldRequest([e.field_id for e in candidates], [e.scope_id for e in candidates])
        raw = self._q(d, f"{_FIELD_VALUES}:nvlink", probe.fetch, d.handle)
        d.nvlink = None if raw is None else nvlink.probe_entries(candidates, raw)
        if d.nvlink is not None:
            log.info("GPU %d: %d NVLink links, %d per-link values", d.index, links, len(d.nvlink.entries))

    def _read_nvlink(self, d: _Device) -> nvlink.NvLinkValues | None:
        """The NVLink batch (slow loop); None without NVLink or when the batch failed."""
        plan = d.nvlink
        if plan is None:
            return None
        raw = self._q(d, f"{_FIELD_VALUES}:nvlink", plan.request.fetch, d.handle)
        return None if raw is None else plan.decode(raw)

    # -- one query --------------------------------------------------------------------------------

    def _q(self, d: _Device, query: str, fn: Callable[..., T], *args: Any) -> T | None:
        """Call one NVML getter for one GPU, translating errors by the policy in the module doc.

        ``query`` names the call in logs, in :meth:`error_counts` and in the set of calls this GPU
        does not answer: the NVML function, then ``:`` and what it is asked for where one function
        answers several (``nvmlDeviceGetClockInfo:sm``, ``nvmlDeviceGetTotalEccErrors:corrected:volatile``).
        """
        if query in d.unsupported:
            return None
        try:
            value = fn(*args)
        except _UNSUPPORTED as exc:
            if query in d.answered:  # it worked before: a passing fault, not a missing feature
                self._count_error(d, query, exc)
                return None
            d.unsupported.add(query)
            if isinstance(exc, pynvml.NVMLError_NoPermission):
                d.denied.add(query)
                log.warning(
                    "GPU %d: %s needs privileges this user lacks (NoPermission); not asking again "
                    "(gpuwatch_gpu_query_permitted shows it; see the README on privileges)",
                    d.index,
                    query,
                )
                return None
            log.info("GPU %d: %s not available (%s); not asking again", d.index, query, _describe(exc))
            return None
        except _DEVICE_FATAL as exc:
            raise GpuLost(_describe(exc)) from exc
        except _SESSION_FATAL as exc:
            raise NvmlSessionLost(_describe(exc)) from exc
        except pynvml.NVMLError_Unknown as exc:
            self._count(d.index, query)
            raise PollFailed(f"{query}: {_describe(exc)}") from exc
        except pynvml.NVMLError as exc:
            self._count_error(d, query, exc)
            return None
        d.answered.add(query)
        return value

    def _call(self, d: _Device, fn: Callable[..., T], *args: Any) -> T | None:
        """:meth:`_q` for a pynvml wrapper, named by its NVML function (pynvml's wrappers bear their
        function's name)."""
        return self._q(d, fn.__name__, fn, *args)

    def error_counts(self) -> dict[tuple[int, str], int]:
        """NVML errors other than NotSupported since this reader opened, by (GPU index, query name).

        A query name is the NVML function (``nvmlDeviceGetMarginTemperature``), then ``:`` and what
        it was asked for where one function answers several: a clock, threshold, policy or ECC
        counter by gpuwatch's label (``nvmlDeviceGetClockInfo:sm``), or, for one entry of a field
        batch, the reading attribute it fills (``nvmlDeviceGetFieldValues:power_watts``,
        ``nvmlDeviceGetFieldValues:ecc_errors:corrected:volatile``). ``nvmlDeviceGetFieldValues``
        alone is the batch call itself. A copy, safe while other threads read GPUs.
        """
        with self._lock:
            return dict(self._errors)

    def _count(self, index: int, query: str) -> None:
        with self._lock:
            self._errors[index, query] += 1

    def _count_error(self, d: _Device, query: str, exc: pynvml.NVMLError) -> None:
        self._count(d.index, query)
        log.warning("GPU %d: %s failed: %s", d.index, query, _describe(exc))

    def _first(self, d: _Device, name: str) -> Any:
        """Try the versioned variants of ``name`` newest first; the first the driver has is kept."""
        for query, call in d.variants[name]:
            if query in d.unsupported:
                continue
            value = self._q(d, query, call)
            if value is not None or query not in d.unsupported:
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
            if slow and d.mig_enabled is not None and self._mig_flipped(d):
                d = self._devices[index]
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
        values = _merged(self._field_values(d, d.fast_fields), d.slow.field_values)
        temperature = self._first(d, "temperature")
        margin = self._call(d, pynvml.nvmlDeviceGetMarginTemperature, h)
        sm = self._q(d, "nvmlDeviceGetClockInfo:sm", pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)
        clocks = d.slow.clocks_hertz if sm is None else {"sm": sm * MHZ, **d.slow.clocks_hertz}
        rates = self._q(d, "nvmlDeviceGetUtilizationRates", d.utilization)
        utilization = (
            d.slow.utilization_ratio
            if rates is None
            else {"gpu": rates[0] / 100.0, "memory": rates[1] / 100.0, **d.slow.utilization_ratio}
        )
        reasons = self._first(d, "clock_event_reasons")
        _, used, free, reserved = self._first(d, "memory_info") or _NO_MEMORY
        fan = d.slow.fan
        busy = (
            gpm.EMPTY
            if d.gpm_stream is None
            else self._q(d, "nvmlGpmSampleGet", d.gpm_stream.poll, self._clock()) or gpm.EMPTY
        )
        links = d.slow.nvlink
        return GpuReading(
            timestamp=self._clock(),
            temperature_celsius=None if temperature is None else float(temperature),
            temperature_margin_celsius=None if margin is None else float(margin),
            fan_speed_ratio=None if fan is None else fan / 100,
            performance_state=d.slow.performance_state,
            clocks_hertz=clocks,
            utilization_ratio=utilization,
            memory_used_bytes=used,
            memory_free_bytes=free,
            memory_reserved_bytes=reserved,
            bar1_used_bytes=d.slow.bar1_used_bytes,
            clock_event_reasons=None if reasons is None else fields.decode_reasons(reasons),
            pcie_link_generation=d.slow.pcie_link_generation,
            pcie_link_width=d.slow.pcie_link_width,
            activity_ratio=busy.ratios,
            interconnect_bytes_per_second=busy.rates,
            mig_enabled=d.mig_enabled,
            mig_instances=self._read_mig(d) if d.mig_enabled else (),
            permitted_queries=_permitted(d),
            nvlink_active=links.active if links else {},
            nvlink_bytes=links.bytes if links else {},
            nvlink_errors=links.errors if links else {},
            **values,  # every declared field this GPU reported, by attribute (FIELDS)
        )

    # -- GPM and MIG (gpuwatch/nvml/gpm.py, mig.py) ---------------------------------------------

    def _probe_mig_and_gpm(self, d: _Device) -> None:
        """At open: MIG mode, and GPM where the GPU has it. The MIG devices (and their GPU
        instances' GPM samples) are listed by the slow read, which a GPU just opened always gets.

        Under MIG the parent's own GPM sample is not taken: busyness is per GPU instance."""
        h = d.handle
        d.mig_enabled = self._q(d, "nvmlDeviceGetMigMode", mig.mig_enabled, h)
        if not gpm.AVAILABLE or not self._q(d, "nvmlGpmQueryDeviceSupport", gpm.supported, h):
            return
        d.gpm_supported = True
        if not d.mig_enabled:
            d.gpm_stream = gpm.GpmStream(partial(pynvml.nvmlGpmSampleGet, h))

    def _mig_flipped(self, d: _Device) -> bool:
        """On the slow loop: whether MIG mode changed (it takes a GPU reset); then the GPU is opened
        anew, so its capabilities, MIG devices and GPM are probed again."""
        now = self._q(d, "nvmlDeviceGetMigMode", mig.mig_enabled, d.handle)
        if now is None or now == d.mig_enabled:
            return False
        log.warning("GPU %d: MIG mode is now %s; opening the GPU anew", d.index, "enabled" if now else "disabled")
        fresh = self._open_device(d.index, d.identity.uuid)
        if fresh.lost is not None:
            return False
        _close_gpm(d)
        self._devices[d.index] = fresh
        return True

    def _read_mig(self, d: _Device) -> tuple[MigReading, ...]:
        """Every poll: each MIG device's memory in use and its GPU instance's GPM ratios."""
        now = self._clock()
        busy: dict[int, gpm.GpmMetrics] = {}
        for gi, stream in d.mig_gpm.items():
            busy[gi] = self._q(d, f"nvmlGpmMigSampleGet:{gi}", stream.poll, now) or gpm.EMPTY
        out = []
        for m in d.mig_devices:
            used = self._q(d, f"nvmlDeviceGetMemoryInfo:mig{m.index}", mig.memory_used_bytes, m.handle)
            out.append(
                MigReading(
                    index=m.index,
                    uuid=m.uuid,
                    profile=m.profile,
                    gpu_instance_id=m.gpu_instance_id,
                    compute_instance_id=m.compute_instance_id,
                    memory_size_bytes=m.memory_size_bytes,
                    memory_used_bytes=used,
                    activity_ratio=busy.get(m.gpu_instance_id, gpm.EMPTY).ratios,
                    processes=d.mig_processes.get(m.index),
                )
            )
        return tuple(out)

    def _read_mig_slow(self, d: _Device) -> None:
        """On the slow loop: the MIG devices listed again (instances are made and destroyed without
        a mode change or a reset: mig-manager, ``nvidia-smi mig -cgi/-dgi``), and compute processes
        per MIG device (listed through its own handle)."""
        if d.mig_enabled:
            listed = self._q(d, "nvmlDeviceGetMigDeviceHandleByIndex", mig.enumerate_devices, d.handle)
            changed = listed is not None and [m.uuid for m in listed] != [m.uuid for m in d.mig_devices]
            if listed is not None and (changed or not d.mig_listed):
                log.info(
                    "GPU %d: MIG %s %d MIG device(s): %s",
                    d.index,
                    "devices are now" if d.mig_listed else "enabled,",
                    len(listed),
                    ", ".join(m.profile for m in listed) or "none",
                )
                d.mig_devices, d.mig_listed = listed, True
                if d.gpm_supported:
                    _follow_gpu_instances(d)
        counts = {}
        for m in d.mig_devices:
            count = self._q(d, f"nvmlDeviceGetComputeRunningProcesses:mig{m.index}", mig.process_count, m.handle)
            if count is not None:
                counts[m.index] = count
        d.mig_processes = counts

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
        for engine, query, fn in (
            ("encoder", "nvmlDeviceGetEncoderUtilization", pynvml.nvmlDeviceGetEncoderUtilization),
            ("decoder", "nvmlDeviceGetDecoderUtilization", pynvml.nvmlDeviceGetDecoderUtilization),
        ):
            sample = self._q(d, query, fn, h)
            if sample is not None:
                utilization[engine] = sample[0] / 100.0
        bar1 = self._call(d, pynvml.nvmlDeviceGetBAR1MemoryInfo, h)
        pstate = self._call(d, pynvml.nvmlDeviceGetPerformanceState, h)
        self._read_mig_slow(d)
        return _SlowValues(
            field_values=self._field_values(d, d.slow_fields),
            fan=self._call(d, pynvml.nvmlDeviceGetFanSpeed, h),
            clocks_hertz=self._slow_clocks(d),
            utilization_ratio=utilization,
            bar1_used_bytes=None if bar1 is None else int(bar1.bar1Used),
            pcie_link_generation=self._call(d, pynvml.nvmlDeviceGetCurrPcieLinkGeneration, h),
            pcie_link_width=self._call(d, pynvml.nvmlDeviceGetCurrPcieLinkWidth, h),
            performance_state=None if pstate is None or pstate == pynvml.NVML_PSTATE_UNKNOWN else int(pstate),
            nvlink=self._read_nvlink(d),
        )

    def _field_values(self, d: _Device, fs: _FieldSet) -> dict[str, Any]:
        """One field set, converted and filed by attribute: its batch, then direct calls for the
        fields this driver lacks. Nothing changes the dict or its mappings once it is returned."""
        values: dict[str, Any] = {}
        batch = None if fs.request is None else self._batch(d, fs.request)
        if batch is not None:
            for f, raw in zip(fs.batched, batch, strict=True):
                if raw is not None:
                    f.put(values, raw)
                else:  # this entry's own return code failed: that value, this read
                    self._count(d.index, f"{_FIELD_VALUES}:{f.key}")
        for f, query, call in fs.direct:
            if (raw := self._q(d, query, call)) is not None:
                f.put(values, raw)
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
            self._count(d.index, _FIELD_VALUES)
            raise PollFailed(f"{_FIELD_VALUES}: {_describe(exc)}") from exc
        except pynvml.NVMLError as exc:
            self._count_error(d, _FIELD_VALUES, exc)
            return None

    # -- slower loop ------------------------------------------------------------------------------

    def processes(self, index: int) -> tuple[GpuProcess, ...]:
        """Processes holding memory on one GPU (compute and graphics), with name and user.

        NVML: nvmlDeviceGetComputeRunningProcesses_v3 / _v2 and the graphics twin (ms-scale calls,
        hence the slower loop). Names (the executable's, never the command line's) and users come from
        ``/proc`` and psutil, once per process while it stays in the listing; a pid outside our PID
        namespace falls back to nvmlSystemGetProcessName. Both are valid UTF-8, whatever bytes the
        process chose for its name (undecodable bytes as ``\\xNN``).
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
        shares = self._process_shares(d) if found else {}
        out = []
        for pid, proc in sorted(found.items()):
            name, user = d.described[pid] = known.get(pid) or _name_and_user(pid)
            sm, memory = shares.get(pid, (None, None))
            out.append(
                GpuProcess(
                    pid=pid,
                    name=name,
                    user=user,
                    used_memory_bytes=proc.usedGpuMemory,
                    sm_ratio=sm,
                    memory_ratio=memory,
                )
            )
        return tuple(out)

    def _process_shares(self, d: _Device) -> dict[int, tuple[float, float]]:
        """pid -> (SM, memory) utilization share from the newest sample since the last listing.

        The last sample's timestamp is fed back: without it the driver averages over a long window
        of its own (nvtop PR #91, research/nvml.md §2.9)."""
        samples = self._q(d, "nvmlDeviceGetProcessUtilization", _process_samples, d.handle, d.process_samples_since_us)
        shares: dict[int, tuple[float, float]] = {}
        newest: dict[int, int] = {}
        for sample in samples or ():
            stamp = int(sample.timeStamp)
            if stamp >= newest.get(sample.pid, -1):
                newest[sample.pid] = stamp
                shares[sample.pid] = (min(1.0, sample.smUtil / 100.0), min(1.0, sample.memUtil / 100.0))
        if newest:
            d.process_samples_since_us = max(newest.values())
        return shares


def _name_and_user(pid: int) -> tuple[str | None, str | None]:
    """From ``/proc`` and psutil; a pid outside our PID namespace falls back to
    nvmlSystemGetProcessName (no user). Both as valid UTF-8 (:func:`gpuwatch.labels.utf8_text`)."""
    try:
        name = _executable_name(pid)
        user = psutil.Process(pid).username()
    except (OSError, psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, KeyError):
        return nvml_process_name(pid), None
    return name, utf8_text(user)


_COMM_BYTES = 15  # TASK_COMM_LEN - 1: the kernel cuts a longer name short


def _executable_name(pid: int) -> str:
    """The name the kernel keeps for a process (``comm``: the executable's file name, or what it
    set with ``prctl(PR_SET_NAME)``), completed from ``/proc/PID/exe`` when the kernel cut it at 15
    bytes and the executable's file name begins with it.

    Never from the command line: psutil's ``name()`` takes ``argv[0]`` for a 15-byte ``comm``, and
    ``argv`` is whatever the process wrote there (``setproctitle``, ``--api-key=...``), which must
    not land in a label. Raises OSError when the process is gone or hidden from us.
    """
    with open(f"/proc/{pid}/comm", "rb") as f:
        comm = f.read().removesuffix(b"\n")
    if len(comm) == _COMM_BYTES:
        try:  # readable for our own user's processes (or with CAP_SYS_PTRACE)
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe".encode()).removesuffix(b" (deleted)"))
        except OSError:
            exe = b""
        if exe.startswith(comm):
            comm = exe
    return utf8_text(comm)


def nvml_process_name(pid: int) -> str | None:
    """nvmlSystemGetProcessName, as valid UTF-8. pynvml decodes the driver's bytes as strict UTF-8,
    so a name that is not raises UnicodeDecodeError, which still holds the bytes."""
    try:
        return utf8_text(pynvml.nvmlSystemGetProcessName(pid))
    except UnicodeDecodeError as exc:
        return utf8_text(exc.object)
    except pynvml.NVMLError:
        return None


# Queries a user without privileges may be refused (NoPermission): on a MIG-enabled GPU the parent's
# memory and process lists, and per-process utilization. gpuwatch_gpu_query_permitted shows each
# that answered (1) or was refused (0); any other query refused shows as 0 too.
PRIVILEGE_SENSITIVE = frozenset(
    {
        "nvmlDeviceGetMemoryInfo_v2",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v2",
        "nvmlDeviceGetProcessUtilization",
    }
)


def _permitted(d: _Device) -> dict[str, bool]:
    allowed = {q: True for q in PRIVILEGE_SENSITIVE & d.answered}
    return allowed | dict.fromkeys(d.denied, False)


def _follow_gpu_instances(d: _Device) -> None:
    """One GPM sample stream per GPU instance of the current MIG devices: new instances get one,
    destroyed ones have theirs freed."""
    instances = {m.gpu_instance_id for m in d.mig_devices}
    for gi in set(d.mig_gpm) - instances:
        d.mig_gpm.pop(gi).close()
    for gi in sorted(instances - set(d.mig_gpm)):
        d.mig_gpm[gi] = gpm.GpmStream(partial(pynvml.nvmlGpmMigSampleGet, d.handle, gi), mig=True)


def _close_gpm(d: _Device) -> None:
    """Free a device's GPM samples (when NVML closes, or the device is opened anew)."""
    for stream in (d.gpm_stream, *d.mig_gpm.values()):
        if stream is not None:
            stream.close()


def _process_samples(handle: Any, since_us: int) -> list[Any]:
    """nvmlDeviceGetProcessUtilization: samples newer than ``since_us`` (NotFound means none are)."""
    try:
        return list(pynvml.nvmlDeviceGetProcessUtilization(handle, since_us))
    except pynvml.NVMLError_NotFound:
        return []


def _describe(exc: pynvml.NVMLError) -> str:
    # str(NVMLError) for codes outside pynvml's own table calls into the library; avoid that.
    return f"{type(exc).__name__.removeprefix('NVMLError_')} (code {exc.value})"


def _merged(fast: dict[str, Any], slow: dict[str, Any]) -> dict[str, Any]:
    """A fast read's field values with those carried from the last slow read. A labelled attribute
    read on both loops (ECC) gets one mapping with both; the rest is shared, not copied."""
    if not slow:
        return fast
    merged = fast | slow
    for name in _BOTH_LOOPS:
        mine = fast.get(name)
        if mine is not None and (theirs := slow.get(name)) is not None:
            merged[name] = mine | theirs
    return merged
