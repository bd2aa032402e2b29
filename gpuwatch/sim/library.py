"""A simulated ``libnvidia-ml.so``: NVML's C entry points, implemented over simulated GPUs.

pynvml loads the driver library into its module global ``nvmlLib`` and looks each C symbol up
there by name. An instance of :class:`SimulatedNvmlLibrary` stands in for that library: each
attribute is an entry point that takes the same ctypes arguments the C function would (scalars by
value, outputs ``byref``), writes its results through them and returns an ``nvmlReturn_t``. pynvml's
own wrappers, structs, version fallbacks and error classes therefore run unchanged on top of it.

Symbols not implemented here are missing, exactly as on an older driver: pynvml raises
``NVMLError_FunctionNotFound`` for them. So are those newer than the scenario's ``driver_version``
(a 550 host has no ``nvmlDeviceGetMarginTemperature``), and field ids newer than it answer
NOT_SUPPORTED. ``hidden_symbols`` removes more, to emulate old drivers.

Faults of the driver as a whole (the scenario's top-level ``[[fault]]``) act here: ``nvmlInit``
refused while the library or the kernel module is missing, or blocked; and a driver reload, after
which every open session answers ``UNINITIALIZED``, the old handles are invalid, and the counts
kept since driver load start again from zero.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from gpuwatch.sim import abi
from gpuwatch.sim.gpm import SimGpm
from gpuwatch.sim.inference import SimInferenceServer
from gpuwatch.sim.kernel_log import SimKernelLog
from gpuwatch.sim.mig import MAX_MIG_DEVICES, MIG_PROFILES, SimMig, SimMigInstance
from gpuwatch.sim.nvlink import PER_LINK_FIELDS, NvLinkFabric
from gpuwatch.sim.physics import STEP_S, SimGpu
from gpuwatch.sim.profiles import MIB
from gpuwatch.sim.recovery import recovery_action
from gpuwatch.sim.scenario import Fault, Scenario
from gpuwatch.sim.workloads import WorkloadProcesses

_HANDLE_BASE = 0x6A000
_HANDLE_STRIDE = 0x100
_GENERATION_STRIDE = 0x100000  # handles of each driver load differ, so a reload invalidates old ones
_EVENT_SET_BASE = 0x7E000

# The driver branch that first shipped an entry point (shared/research/nvml.md §0, from the go-nvml
# header history; gpustat for _v2 memory at 515). Entry points not listed are older than any
# driver a scenario may name.
_ENTRY_POINT_SINCE = {
    "nvmlDeviceGetComputeRunningProcesses_v3": 510,
    "nvmlDeviceGetGraphicsRunningProcesses_v3": 510,
    "nvmlDeviceGetMemoryInfo_v2": 515,
    "nvmlDeviceGetCurrentClocksEventReasons": 535,
    "nvmlDeviceGetSupportedClocksEventReasons": 535,
    "nvmlDeviceGetTemperatureV": 570,
    "nvmlDeviceGetMarginTemperature": 570,
}
# Likewise for field ids: power readings and limits and the T.Limit thresholds (185-196) came with
# R535, the PCIe byte counters (197, 198) with R555.
_FIELD_SINCE = {**dict.fromkeys(range(185, 197), 535), 197: 555, 198: 555}
# The GPU recovery action (230) came with R570: the 550 and 555 captures' `-q` have no "GPU Recovery
# Action" line, the 590 and 595 ones show it; nvidia-ml-py 12.570.86 is the first to name the field.
_FIELD_SINCE[230] = 570


class SimulatedNvmlError(Exception):
    """Raised inside an entry point; becomes that entry point's return code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _EntryPoint:
    """One C symbol: a callable that turns SimulatedNvmlError into a return code.

    pynvml sets ``restype`` on some symbols (``nvmlErrorString``), so this must accept attributes.
    """

    def __init__(self, name: str, impl: Callable[..., Any], counts: Counter[str]) -> None:
        self.__name__ = name
        self._impl = impl
        self._counts = counts
        self.restype: Any = None
        self.argtypes: Any = None

    def __call__(self, *args: Any) -> Any:
        self._counts[self.__name__] += 1
        try:
            result = self._impl(*args)
        except SimulatedNvmlError as exc:
            return exc.code
        return abi.SUCCESS if result is None else result


class SimulatedNvmlLibrary:
    """The simulated driver library for one scenario.

    ``clock`` returns simulated seconds since the scenario started; the library steps its GPUs up
    to that time on every call, so readings are a function of simulated time alone.
    """

    def __init__(
        self,
        scenario: Scenario,
        clock: Callable[[], float],
        hidden_symbols: Iterable[str] = (),
        sleep: Callable[[float], None] = time.sleep,
        kernel_log_path: str | None = None,
    ) -> None:
        self.scenario = scenario
        self.gpus = [SimGpu(i, spec, scenario.seed) for i, spec in enumerate(scenario.gpus)]
        self.servers = [SimInferenceServer(spec, [self.gpus[i] for i in spec.gpus]) for spec in scenario.servers]
        self.mig = SimMig(self.gpus, scenario.seed)  # before the workloads: MIG instances list processes
        # NVLink traffic from the tensor-parallel servers (issue 17); GPM's NVLink rate reads it
        self.nvlink = NvLinkFabric(self.gpus, self.servers)
        self.gpm = SimGpm(self.gpus, scenario, self.mig, self.nvlink)
        self.workloads = WorkloadProcesses(self.gpus, frozenset(server.pid for server in self.servers))
        self._clock = clock
        self._sleep = sleep
        self._hidden = frozenset(hidden_symbols)
        self._lock = threading.RLock()
        self._initialized = 0
        self._generation = 0  # driver loads so far; part of every handle
        self._pending_host_faults = sorted(scenario.faults, key=lambda f: f.at_s)
        self._time_s = 0.0
        # event set id -> {gpu index: [mask, cursor into that GPU's event log]}
        self._event_sets: dict[int, dict[int, list[int]]] = {}
        self._event_sets_made = 0
        self._event_cond = threading.Condition(self._lock)
        self.calls = 0
        self.calls_by_symbol: Counter[str] = Counter()  # every entry point called, by C symbol name
        # the kernel log's Xid lines (issue 17)
        self.kernel_log = (
            None if kernel_log_path is None else SimKernelLog(kernel_log_path, self.gpus, scenario.driver_branch, clock)
        )

    # -- the symbol table pynvml sees ------------------------------------------------------------

    def __getattr__(self, name: str) -> _EntryPoint:
        if not name.startswith("nvml") or name in self._hidden:
            raise AttributeError(name)
        if _ENTRY_POINT_SINCE.get(name, 0) > self.scenario.driver_branch:
            raise AttributeError(name)  # this driver predates the call
        impl = getattr(type(self), "_" + name, None)
        if impl is None:
            raise AttributeError(name)
        return _EntryPoint(name, impl.__get__(self), self.calls_by_symbol)

    # -- plumbing ---------------------------------------------------------------------------------

    def advance(self) -> None:
        """Step every GPU up to the clock's simulated time; a driver reload due by then happens."""
        with self._lock:
            now = self._clock()
            while self._time_s + STEP_S <= now:
                self._time_s += STEP_S
                for gpu in self.gpus:
                    gpu.step()
                for server in self.servers:
                    server.step(self._time_s)
                self.nvlink.step(self._time_s)
                self.gpm.step(STEP_S, self._time_s)
                if self.kernel_log is not None:
                    self.kernel_log.scan(self._time_s)
            while self._pending_host_faults and self._pending_host_faults[0].at_s <= self._time_s:
                fault = self._pending_host_faults.pop(0)
                if fault.kind == "driver_reload":
                    self._reload()

    @property
    def lock(self) -> threading.RLock:
        """Held while the simulated state changes; hold it to read GPUs and servers consistently."""
        return self._lock

    def _reload(self) -> None:
        """The kernel module goes away: sessions, handles and event sets die with it."""
        self._initialized = 0
        self._generation += 1
        self._event_sets.clear()
        for gpu in self.gpus:
            gpu.driver_reloaded()
        self.nvlink.driver_reloaded()
        self._event_cond.notify_all()

    def _host_fault(self, kind: str) -> Fault | None:
        return next((f for f in self.scenario.faults if f.kind == kind and f.active_at(self._time_s)), None)

    def _check_init(self) -> None:
        self.advance()
        if self._initialized <= 0:
            raise SimulatedNvmlError(abi.ERROR_UNINITIALIZED)

    def _handle(self, index: int) -> int:
        return _HANDLE_BASE + self._generation * _GENERATION_STRIDE + index * _HANDLE_STRIDE

    def _gpu(self, handle: Any) -> SimGpu:
        """Resolve a device handle, advance time, and apply the GPU's call faults.

        A handle from an earlier driver load is invalid."""
        self._check_init()
        address = ctypes.cast(handle, ctypes.c_void_p).value or 0
        index, rest = divmod(address - _HANDLE_BASE - self._generation * _GENERATION_STRIDE, _HANDLE_STRIDE)
        if rest or not 0 <= index < len(self.gpus):
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        self.calls += 1
        hang_s = gpu.hang_s()
        if hang_s:
            self._sleep(hang_s)
        if gpu.state.lost:
            raise SimulatedNvmlError(abi.ERROR_GPU_IS_LOST)
        code = gpu.failing_call()
        if code is not None:
            raise SimulatedNvmlError(code)
        return gpu

    # -- init, system -----------------------------------------------------------------------------

    def _nvmlInitWithFlags(self, flags: Any) -> None:
        self.advance()
        hang = self._host_fault("init_hang")
        if hang is not None:
            self._sleep(hang.hang_s)
            self.advance()
        with self._lock:
            if self._host_fault("library_missing") is not None:
                raise SimulatedNvmlError(abi.ERROR_LIBRARY_NOT_FOUND)
            if self._host_fault("driver_missing") is not None or self._host_fault("driver_reload") is not None:
                raise SimulatedNvmlError(abi.ERROR_DRIVER_NOT_LOADED)
            self._initialized += 1

    def _nvmlInit_v2(self) -> None:
        return self._nvmlInitWithFlags(0)

    def _nvmlShutdown(self) -> None:
        with self._lock:
            self._check_init()
            self._initialized -= 1

    def _nvmlErrorString(self, code: Any) -> bytes:
        return abi.ERROR_STRINGS.get(_val(code), b"Unknown Error")

    def _nvmlSystemGetDriverVersion(self, buf: Any, size: Any) -> None:
        self._check_init()
        _write_str(buf, self.scenario.driver_version)

    def _nvmlSystemGetNVMLVersion(self, buf: Any, size: Any) -> None:
        self._check_init()
        major = self.scenario.cuda_driver_version // 1000
        _write_str(buf, f"{major}.{self.scenario.driver_version}")

    def _nvmlSystemGetCudaDriverVersion(self, out: Any) -> None:
        self._check_init()
        _set(out, self.scenario.cuda_driver_version)

    def _nvmlSystemGetCudaDriverVersion_v2(self, out: Any) -> None:
        return self._nvmlSystemGetCudaDriverVersion(out)

    def _nvmlSystemGetProcessName(self, pid: Any, buf: Any, size: Any) -> None:
        self._check_init()
        self.workloads.ensure_started()
        for gpu in self.gpus:
            for proc in gpu.processes:
                if proc.pid == _val(pid):
                    _write_str(buf, proc.name)
                    return
        raise SimulatedNvmlError(abi.ERROR_NOT_FOUND)

    def _nvmlDeviceGetCount_v2(self, out: Any) -> None:
        self._check_init()
        _set(out, len(self.gpus))

    def _nvmlDeviceGetHandleByIndex_v2(self, index: Any, out: Any) -> None:
        self._check_init()
        i = _val(index)
        if not 0 <= i < len(self.gpus):
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        if self.gpus[i].state.lost:
            raise SimulatedNvmlError(abi.ERROR_GPU_IS_LOST)
        _write_pointer(out, self._handle(i))

    def _nvmlDeviceGetHandleByUUID(self, uuid: Any, out: Any) -> None:
        self._check_init()
        wanted = (uuid.value or b"").decode()
        gpu = next((g for g in self.gpus if g.uuid == wanted), None)
        if gpu is None:
            raise SimulatedNvmlError(abi.ERROR_NOT_FOUND)
        if gpu.state.lost:
            raise SimulatedNvmlError(abi.ERROR_GPU_IS_LOST)
        _write_pointer(out, self._handle(gpu.index))

    # -- identity ---------------------------------------------------------------------------------

    def _nvmlDeviceGetName(self, handle: Any, buf: Any, size: Any) -> None:
        _write_str(buf, self._gpu(handle).profile.name)

    def _nvmlDeviceGetUUID(self, handle: Any, buf: Any, size: Any) -> None:
        if (mig := self._mig_device(handle)) is not None:
            return _write_str(buf, mig[1].uuid)
        _write_str(buf, self._gpu(handle).uuid)

    def _nvmlDeviceGetSerial(self, handle: Any, buf: Any, size: Any) -> None:
        gpu = self._gpu(handle)
        _require(gpu.profile.serial)
        _write_str(buf, gpu.serial)

    def _nvmlDeviceGetVbiosVersion(self, handle: Any, buf: Any, size: Any) -> None:
        _write_str(buf, self._gpu(handle).profile.vbios_version)

    def _nvmlDeviceGetIndex(self, handle: Any, out: Any) -> None:
        _set(out, self._gpu(handle).index)

    def _nvmlDeviceGetBrand(self, handle: Any, out: Any) -> None:
        _set(out, self._gpu(handle).profile.brand)

    def _nvmlDeviceGetArchitecture(self, handle: Any, out: Any) -> None:
        _set(out, self._gpu(handle).profile.architecture)

    def _nvmlDeviceGetPciInfo_v3(self, handle: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        info = out._obj
        info.busId = gpu.pci_bus_id.encode()
        info.busIdLegacy = gpu.pci_bus_id[4:].encode()
        info.domain = 0
        info.bus = gpu.pci_bus
        info.device = 0
        info.pciDeviceId = gpu.profile.pci_device_id
        info.pciSubSystemId = gpu.profile.pci_subsystem_id

    # -- power ------------------------------------------------------------------------------------

    def _nvmlDeviceGetPowerUsage(self, handle: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        # GA100 and older report the instantaneous reading; newer parts a 1 s average (nvml.h).
        watts = gpu.state.power_avg_w if gpu.profile.power_average_field else gpu.state.power_w
        _set(out, round(watts * 1000))

    def _nvmlDeviceGetTotalEnergyConsumption(self, handle: Any, out: Any) -> None:
        _set(out, int(self._gpu(handle).state.energy_mj))

    def _nvmlDeviceGetEnforcedPowerLimit(self, handle: Any, out: Any) -> None:
        _set(out, round(self._gpu(handle).power_limit_w * 1000))

    def _nvmlDeviceGetPowerManagementLimit(self, handle: Any, out: Any) -> None:
        return self._nvmlDeviceGetEnforcedPowerLimit(handle, out)

    def _nvmlDeviceGetPowerManagementDefaultLimit(self, handle: Any, out: Any) -> None:
        _set(out, round(self._gpu(handle).profile.power_default_w * 1000))

    def _nvmlDeviceGetPowerManagementLimitConstraints(self, handle: Any, low: Any, high: Any) -> None:
        profile = self._gpu(handle).profile
        _set(low, round(profile.power_min_w * 1000))
        _set(high, round(profile.power_max_w * 1000))

    def _nvmlDeviceSetPowerManagementLimit(self, handle: Any, limit_mw: Any) -> None:
        """Set the enforced power limit (nvidia-smi -pl): root or CAP_SYS_ADMIN, within the
        constraints, kept until the driver reloads (nvml.h)."""
        gpu = self._gpu(handle)
        if not self.scenario.privileged:
            raise SimulatedNvmlError(abi.ERROR_NO_PERMISSION)
        watts = _val(limit_mw) / 1000.0
        if not gpu.profile.power_min_w <= watts <= gpu.profile.power_max_w:
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        gpu.power_limit_w = watts

    # -- thermal ----------------------------------------------------------------------------------

    def _nvmlDeviceGetTemperature(self, handle: Any, sensor: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        if _val(sensor) != abi.TEMPERATURE_GPU:
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        _set(out, round(gpu.state.temperature_c))

    def _nvmlDeviceGetTemperatureV(self, handle: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        struct = out._obj
        _check_version(struct, abi.TEMPERATURE_V1)
        if struct.sensorType != abi.TEMPERATURE_GPU:
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        struct.temperature = round(gpu.state.temperature_c)

    def _nvmlDeviceGetTemperatureThreshold(self, handle: Any, kind: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        t = gpu.profile.thresholds
        values = {
            abi.THRESHOLD_SHUTDOWN: t.shutdown,
            abi.THRESHOLD_SLOWDOWN: t.slowdown,
            abi.THRESHOLD_GPU_MAX: t.max_operating,
            abi.THRESHOLD_MEM_MAX: t.memory_max,
            abi.THRESHOLD_ACOUSTIC_CURR: t.target,
        }
        kind = _val(kind)
        value = values.get(kind)
        # Cards that answer in T.Limit terms still answer their acoustic target (RTX 4090: 84).
        _require(value is not None and (gpu.profile.thresholds_absolute or kind == abi.THRESHOLD_ACOUSTIC_CURR))
        _set(out, value)

    def _nvmlDeviceGetMarginTemperature(self, handle: Any, out: Any) -> None:
        """The T.Limit reading (nvidia-smi "GPU T.Limit Temp"); N/A on cards without T.Limit (A6000, A100)."""
        gpu = self._gpu(handle)
        _check_version(out._obj, abi.MARGIN_TEMPERATURE_V1)
        _require(gpu.profile.thresholds_tlimit)
        out._obj.marginTemperature = round(gpu.margin_c())

    def _nvmlDeviceGetFanSpeed(self, handle: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        _require(gpu.profile.fan)
        _set(out, gpu.state.fan_percent)

    # -- clocks, performance ----------------------------------------------------------------------

    def _nvmlDeviceGetClockInfo(self, handle: Any, kind: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        _set(out, gpu.state.clocks_mhz[_clock_index(kind)])

    def _nvmlDeviceGetMaxClockInfo(self, handle: Any, kind: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        _set(out, gpu.profile.max_clocks_mhz[_clock_index(kind)])

    def _nvmlDeviceGetPerformanceState(self, handle: Any, out: Any) -> None:
        _set(out, self._gpu(handle).state.pstate)

    def _nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any, out: Any) -> None:
        _set(out, self._gpu(handle).state.reasons)

    def _nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any, out: Any) -> None:
        return self._nvmlDeviceGetCurrentClocksEventReasons(handle, out)

    def _nvmlDeviceGetSupportedClocksEventReasons(self, handle: Any, out: Any) -> None:
        self._gpu(handle)
        _set(out, abi.REASONS_SUPPORTED)

    def _nvmlDeviceGetSupportedClocksThrottleReasons(self, handle: Any, out: Any) -> None:
        return self._nvmlDeviceGetSupportedClocksEventReasons(handle, out)

    def _nvmlDeviceGetViolationStatus(self, handle: Any, policy: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        ns = gpu.state.violation_ns.get(_val(policy))
        _require(ns is not None)
        out._obj.referenceTime = int(self._time_s * 1e6)
        out._obj.violationTime = int(ns or 0)

    # -- utilization, memory ----------------------------------------------------------------------

    def _nvmlDeviceGetUtilizationRates(self, handle: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        _require(not self.mig.enabled(gpu))  # the h200-mig capture: Utilization GPU N/A
        out._obj.gpu = gpu.state.utilization_gpu
        out._obj.memory = gpu.state.utilization_memory

    def _nvmlDeviceGetEncoderUtilization(self, handle: Any, util: Any, period: Any) -> None:
        _require(not self.mig.enabled(self._gpu(handle)))  # the h200-mig capture: Encoder, Decoder N/A
        _set(util, 0)
        _set(period, 167000)

    def _nvmlDeviceGetDecoderUtilization(self, handle: Any, util: Any, period: Any) -> None:
        return self._nvmlDeviceGetEncoderUtilization(handle, util, period)

    def _nvmlDeviceGetMemoryInfo(self, handle: Any, out: Any) -> None:
        if (mig := self._mig_device(handle)) is not None:
            return self._mig_memory(mig[1], out._obj)
        gpu = self._gpu(handle)
        self._parent_permitted(gpu)
        total = gpu.profile.memory_total_mib * MIB
        used = gpu.used_memory_bytes() + gpu.profile.memory_reserved_mib * MIB
        out._obj.total = total
        out._obj.used = used
        out._obj.free = total - used

    def _nvmlDeviceGetMemoryInfo_v2(self, handle: Any, out: Any) -> None:
        if (mig := self._mig_device(handle)) is not None:
            _check_version(out._obj, abi.MEMORY_V2)
            out._obj.reserved = 0
            return self._mig_memory(mig[1], out._obj)
        gpu = self._gpu(handle)
        _check_version(out._obj, abi.MEMORY_V2)
        self._parent_permitted(gpu)
        total = gpu.profile.memory_total_mib * MIB
        reserved = gpu.profile.memory_reserved_mib * MIB
        used = gpu.used_memory_bytes()
        out._obj.total = total
        out._obj.reserved = reserved
        out._obj.used = used
        out._obj.free = total - reserved - used

    def _nvmlDeviceGetBAR1MemoryInfo(self, handle: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        total = gpu.profile.bar1_total_mib * MIB
        used = (2 + 8 * len(gpu.processes)) * MIB
        out._obj.bar1Total = total
        out._obj.bar1Used = used
        out._obj.bar1Free = total - used

    # -- reliability ------------------------------------------------------------------------------

    def _nvmlDeviceGetEccMode(self, handle: Any, current: Any, pending: Any) -> None:
        gpu = self._gpu(handle)
        _require(gpu.profile.ecc is not None)
        _set(current, int(bool(gpu.profile.ecc)))
        _set(pending, int(bool(gpu.profile.ecc)))

    def _nvmlDeviceGetTotalEccErrors(self, handle: Any, error_type: Any, counter: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        _require(bool(gpu.profile.ecc))
        counts = gpu.state.ecc_volatile if _val(counter) == abi.VOLATILE_ECC else gpu.state.ecc_aggregate
        _set(out, counts[1 if _val(error_type) == abi.MEMORY_ERROR_UNCORRECTED else 0])

    def _nvmlDeviceGetRemappedRows(self, handle: Any, corr: Any, unc: Any, pending: Any, failure: Any) -> None:
        gpu = self._gpu(handle)
        _require(gpu.profile.row_remapping)
        _set(corr, gpu.state.remapped_rows[0])
        _set(unc, gpu.state.remapped_rows[1])
        _set(pending, gpu.state.remap_pending)
        _set(failure, gpu.state.remap_failure)

    # -- PCIe -------------------------------------------------------------------------------------

    def _nvmlDeviceGetCurrPcieLinkGeneration(self, handle: Any, out: Any) -> None:
        _set(out, self._gpu(handle).state.pcie_generation)

    def _nvmlDeviceGetMaxPcieLinkGeneration(self, handle: Any, out: Any) -> None:
        _set(out, self._gpu(handle).profile.pcie_max_generation)

    def _nvmlDeviceGetCurrPcieLinkWidth(self, handle: Any, out: Any) -> None:
        _set(out, self._gpu(handle).profile.pcie_max_width)

    def _nvmlDeviceGetMaxPcieLinkWidth(self, handle: Any, out: Any) -> None:
        _set(out, self._gpu(handle).profile.pcie_max_width)

    def _nvmlDeviceGetPcieReplayCounter(self, handle: Any, out: Any) -> None:
        self._gpu(handle)
        _set(out, 0)

    # -- processes --------------------------------------------------------------------------------

    def _nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any, count: Any, infos: Any) -> int:
        mig = self._mig_device(handle)
        gpu = self._gpu(handle) if mig is None else mig[0]
        if mig is None:
            self._parent_permitted(gpu)
        self.workloads.ensure_started()
        procs = gpu.processes if mig is None else self._mig_processes(mig[1])
        capacity = _val(count._obj)
        count._obj.value = len(procs)
        if not procs:
            return abi.SUCCESS
        if infos is None or capacity < len(procs):
            return abi.ERROR_INSUFFICIENT_SIZE
        for slot, proc in zip(infos, procs, strict=False):
            slot.pid = proc.pid
            slot.usedGpuMemory = proc.used_memory_bytes
            slot.gpuInstanceId = 0xFFFFFFFF
            slot.computeInstanceId = 0xFFFFFFFF
            if (owner := self._owner(gpu, proc.pid)) is not None:
                slot.gpuInstanceId, slot.computeInstanceId = owner.gpu_instance_id, owner.compute_instance_id
        return abi.SUCCESS

    def _nvmlDeviceGetComputeRunningProcesses_v2(self, handle: Any, count: Any, infos: Any) -> int:
        # R470-R510 drivers: the same 24-byte record as _v3 in pynvml 13.x.
        return self._nvmlDeviceGetComputeRunningProcesses_v3(handle, count, infos)

    def _nvmlDeviceGetGraphicsRunningProcesses_v3(self, handle: Any, count: Any, infos: Any) -> int:
        self._parent_permitted(self._gpu(handle))
        count._obj.value = 0
        return abi.SUCCESS

    # -- events -----------------------------------------------------------------------------------

    def _nvmlEventSetCreate(self, out: Any) -> None:
        with self._lock:
            self._check_init()
            set_id = self._event_sets_made  # never reused, so a set freed by a reload stays invalid
            self._event_sets_made += 1
            self._event_sets[set_id] = {}
        _write_pointer(out, _EVENT_SET_BASE + set_id * _HANDLE_STRIDE)

    def _event_set(self, event_set: Any) -> dict[int, list[int]]:
        address = ctypes.cast(event_set, ctypes.c_void_p).value or 0
        registered = self._event_sets.get((address - _EVENT_SET_BASE) // _HANDLE_STRIDE)
        if registered is None:
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        return registered

    def _nvmlDeviceGetSupportedEventTypes(self, handle: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        mask = abi.EVENT_XID_CRITICAL | abi.EVENT_PSTATE
        if gpu.profile.ecc:
            mask |= abi.EVENT_SINGLE_BIT_ECC | abi.EVENT_DOUBLE_BIT_ECC
        _set(out, mask)

    def _nvmlDeviceRegisterEvents(self, handle: Any, event_types: Any, event_set: Any) -> None:
        with self._lock:
            gpu = self._gpu(handle)
            self._event_set(event_set)[gpu.index] = [_val(event_types), len(gpu.event_log)]

    def _nvmlEventSetWait_v2(self, event_set: Any, data: Any, timeout_ms: Any) -> int:
        """Block up to ``timeout_ms`` of wall time for the next registered event, as NVML does."""
        deadline = time.monotonic() + _val(timeout_ms) / 1000.0
        with self._lock:
            while True:
                self._check_init()  # advances time; a driver reload ends the wait
                registered = self._event_set(event_set)
                for index, entry in registered.items():
                    mask, cursor = entry
                    log = self.gpus[index].event_log
                    while cursor < len(log):
                        event_type, event_data = log[cursor]
                        cursor += 1
                        entry[1] = cursor
                        if event_type & mask:
                            out = data._obj
                            out.device = ctypes.cast(self._handle(index), type(out.device))
                            out.eventType = event_type
                            out.eventData = event_data
                            out.gpuInstanceId = out.computeInstanceId = 0xFFFFFFFF
                            return abi.SUCCESS
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return abi.ERROR_TIMEOUT
                # Events only arise as simulated time advances; a quarter second of wall time is
                # soon enough to notice one, and keeps an idle waiter from spinning the simulator.
                self._event_cond.wait(min(remaining, 0.25))

    def _nvmlEventSetFree(self, event_set: Any) -> None:
        with self._lock:
            self._event_set(event_set).clear()

    # -- field values -----------------------------------------------------------------------------

    def _nvmlDeviceGetFieldValues(self, handle: Any, count: Any, values: Any) -> None:
        gpu = self._gpu(handle)
        stamp_us = int(self._time_s * 1e6)
        table = self._field_table(gpu)  # once per call, not per field: the batch is one driver call
        branch = self.scenario.driver_branch
        for entry in _plain_view(values._obj)[: _val(count)]:
            entry.timestamp = stamp_us
            entry.latencyUsec = 0
            try:
                if entry.fieldId in PER_LINK_FIELDS:
                    value_type, value = self._link_field(gpu, entry.fieldId, entry.scopeId)
                else:
                    value_type, value = _field(table, entry.fieldId, branch)
            except SimulatedNvmlError as exc:
                entry.nvmlReturn = exc.code
                continue
            entry.nvmlReturn = abi.SUCCESS
            entry.valueType = value_type
            if value_type == abi.VALUE_UNSIGNED_INT:
                entry.value.uiVal = int(value)
            elif value_type == abi.VALUE_SIGNED_INT:
                entry.value.siVal = int(value)
            else:
                entry.value.ullVal = int(value)

    def _link_field(self, gpu: SimGpu, field_id: int, scope_id: int) -> tuple[int, float]:
        """A per-link NVLink field (gpuwatch.sim.nvlink); NOT_SUPPORTED without the link."""
        answer = self.nvlink.field(gpu, field_id, scope_id)
        if answer is None:
            raise SimulatedNvmlError(abi.ERROR_NOT_SUPPORTED)
        return answer

    def _field_table(self, gpu: SimGpu) -> dict[int, tuple[bool, int, float]]:
        """Every field this GPU knows: id -> (supported, value type, value)."""
        s, p = gpu.state, gpu.profile
        uint, ull, sint = abi.VALUE_UNSIGNED_INT, abi.VALUE_UNSIGNED_LONG_LONG, abi.VALUE_SIGNED_INT
        ecc_on = bool(p.ecc)
        policies = {
            abi.FI_PERF_POLICY_POWER: abi.PERF_POLICY_POWER,
            abi.FI_PERF_POLICY_THERMAL: abi.PERF_POLICY_THERMAL,
            abi.FI_PERF_POLICY_SYNC_BOOST: abi.PERF_POLICY_SYNC_BOOST,
            abi.FI_PERF_POLICY_BOARD_LIMIT: abi.PERF_POLICY_BOARD_LIMIT,
            abi.FI_PERF_POLICY_LOW_UTILIZATION: abi.PERF_POLICY_LOW_UTILIZATION,
            abi.FI_PERF_POLICY_RELIABILITY: abi.PERF_POLICY_RELIABILITY,
        }
        t = p.thresholds
        table: dict[int, tuple[bool, int, float]] = {
            field_id: (True, ull, s.violation_ns[policy]) for field_id, policy in policies.items()
        }
        table |= {
            abi.FI_ECC_CURRENT: (p.ecc is not None, uint, int(ecc_on)),
            abi.FI_ECC_PENDING: (p.ecc is not None, uint, int(ecc_on)),
            abi.FI_ECC_SBE_VOL_TOTAL: (ecc_on, ull, s.ecc_volatile[0]),
            abi.FI_ECC_DBE_VOL_TOTAL: (ecc_on, ull, s.ecc_volatile[1]),
            abi.FI_ECC_SBE_AGG_TOTAL: (ecc_on, ull, s.ecc_aggregate[0]),
            abi.FI_ECC_DBE_AGG_TOTAL: (ecc_on, ull, s.ecc_aggregate[1]),
            abi.FI_MEMORY_TEMP: (p.memory_temperature, uint, round(gpu.memory_temperature_c())),
            abi.FI_TOTAL_ENERGY_CONSUMPTION: (True, ull, s.energy_mj),
            abi.FI_ENERGY: (True, ull, s.energy_mj),
            abi.FI_PCIE_REPLAY_COUNTER: (True, uint, 0),
            abi.FI_REMAPPED_COR: (p.row_remapping, uint, s.remapped_rows[0]),
            abi.FI_REMAPPED_UNC: (p.row_remapping, uint, s.remapped_rows[1]),
            abi.FI_REMAPPED_PENDING: (p.row_remapping, uint, s.remap_pending),
            abi.FI_REMAPPED_FAILURE: (p.row_remapping, uint, s.remap_failure),
            abi.FI_POWER_AVERAGE: (p.power_average_field, uint, round(s.power_avg_w * 1000)),
            abi.FI_POWER_INSTANT: (True, uint, round(s.power_w * 1000)),
            abi.FI_POWER_MIN_LIMIT: (True, uint, round(p.power_min_w * 1000)),
            abi.FI_POWER_MAX_LIMIT: (True, uint, round(p.power_max_w * 1000)),
            abi.FI_POWER_DEFAULT_LIMIT: (True, uint, round(p.power_default_w * 1000)),
            abi.FI_POWER_CURRENT_LIMIT: (True, uint, round(gpu.power_limit_w * 1000)),
            abi.FI_POWER_REQUESTED_LIMIT: (True, uint, round(gpu.power_limit_w * 1000)),
            # Relative to the T.Limit point, negative above it (L40S -5/-2, H100 -8/-2, RTX 4090 -7/-2).
            abi.FI_TEMPERATURE_SHUTDOWN_TLIMIT: (p.thresholds_tlimit, sint, t.max_operating - t.shutdown),
            abi.FI_TEMPERATURE_SLOWDOWN_TLIMIT: (p.thresholds_tlimit, sint, t.max_operating - t.slowdown),
            abi.FI_TEMPERATURE_GPU_MAX_TLIMIT: (p.thresholds_tlimit, sint, 0),
            abi.FI_TEMPERATURE_MEM_MAX_TLIMIT: (p.memory_tlimit, sint, 0),  # Hopper answers 0
            abi.FI_NVLINK_LINK_COUNT: (p.nvlink_links > 0, uint, p.nvlink_links),
            abi.FI_PCIE_COUNT_TX_BYTES: (True, ull, s.pcie_tx_bytes),
            abi.FI_PCIE_COUNT_RX_BYTES: (True, ull, s.pcie_rx_bytes),
        }
        table[abi.FI_GET_GPU_RECOVERY_ACTION] = (True, uint, recovery_action(gpu))  # gated at R570 (_FIELD_SINCE)
        return table

    # == Entry points third-party tools call (issue 14) ===========================================
    # gpustat and nvitop, run unmodified over the simulator (`gpuwatch sim-run`), call these. Each
    # answers as a real card of the GPU's model does: a value, or NOT_SUPPORTED where that card's
    # `nvidia-smi -q` says N/A (tests/data/captures, shared/data/captures).

    # Settings every capture shows at their defaults: persistence on, compute mode Default,
    # no display active. (One L40S host has persistence off: a setting, not a property.)

    def _nvmlDeviceGetPersistenceMode(self, handle: Any, out: Any) -> None:
        self._gpu(handle)
        _set(out, 1)

    def _nvmlDeviceGetComputeMode(self, handle: Any, out: Any) -> None:
        self._gpu(handle)
        _set(out, 0)  # NVML_COMPUTEMODE_DEFAULT

    def _nvmlDeviceGetDisplayActive(self, handle: Any, out: Any) -> None:
        self._gpu(handle)
        _set(out, 0)

    def _nvmlDeviceGetDisplayMode(self, handle: Any, out: Any) -> None:
        """R580 and later: deprecated (the L40S, H100 and H200 captures at 590/595 say so); before,
        Enabled on the Ampere captures (A6000, A100 at 550/555), Disabled on the RTX 4090's."""
        gpu = self._gpu(handle)
        if self.scenario.driver_branch >= 580:
            raise SimulatedNvmlError(abi.ERROR_DEPRECATED)
        _set(out, int(gpu.profile.architecture == abi.ARCH_AMPERE))

    def _nvmlDeviceGetDriverModel(self, handle: Any, current: Any, pending: Any) -> None:
        self._gpu(handle)
        raise SimulatedNvmlError(abi.ERROR_NOT_SUPPORTED)  # WDDM/TCC is Windows only: N/A on Linux

    def _nvmlDeviceGetDriverModel_v2(self, handle: Any, current: Any, pending: Any) -> None:
        return self._nvmlDeviceGetDriverModel(handle, current, pending)

    def _nvmlDeviceGetCudaComputeCapability(self, handle: Any, major: Any, minor: Any) -> None:
        gpu = self._gpu(handle)
        cc_major, cc_minor = _compute_capability(gpu.profile.name, gpu.profile.architecture)
        _set(major, cc_major)
        _set(minor, cc_minor)

    def _nvmlDeviceGetPowerState(self, handle: Any, out: Any) -> None:
        return self._nvmlDeviceGetPerformanceState(handle, out)  # the deprecated name of the same query

    # -- MIG: capable parts answer "disabled" (every capture but h200-mig); others NOT_SUPPORTED --

    def _nvmlDeviceGetMigMode(self, handle: Any, current: Any, pending: Any) -> None:
        gpu = self._gpu(handle)
        _require(_mig_capable(gpu.profile.name))
        _set(current, int(self.mig.enabled(gpu)))
        _set(pending, int(self.mig.enabled(gpu)))

    def _nvmlDeviceGetMaxMigDeviceCount(self, handle: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        # nvml.h: zero when MIG is not supported or not enabled
        _set(out, MAX_MIG_DEVICES if self.mig.enabled(gpu) else 0)

    def _nvmlDeviceIsMigDeviceHandle(self, handle: Any, out: Any) -> None:
        if self._mig_device(handle) is not None:
            return _set(out, 1)
        self._gpu(handle)
        _set(out, 0)

    def _nvmlDeviceGetConfComputeMemSizeInfo(self, handle: Any, out: Any) -> None:
        """Hopper and later have confidential computing; with it off, nothing is protected [inferred]."""
        gpu = self._gpu(handle)
        _require(gpu.profile.architecture >= abi.ARCH_HOPPER)
        out._obj.protectedMemSizeKib = 0
        out._obj.unprotectedMemSizeKib = gpu.profile.memory_total_mib * 1024

    # -- PCIe, NVLink, fans -----------------------------------------------------------------------

    def _nvmlDeviceGetPcieThroughput(self, handle: Any, counter: Any, out: Any) -> None:
        """KB/s over the driver's last 20 ms: the rates the simulated byte counters grow at under
        load; at idle the 50 KB/s of housekeeping the idle A6000 and RTX 4090 captures show."""
        gpu = self._gpu(handle)
        rate = {abi.PCIE_UTIL_TX_BYTES: _PCIE_TX_BYTES_PER_S, abi.PCIE_UTIL_RX_BYTES: _PCIE_RX_BYTES_PER_S}.get(
            _val(counter)
        )
        if rate is None:
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        busy = gpu.state.pstate == 0 and gpu.load > 0
        _set(out, round(rate * gpu.load / 1024) if busy else _PCIE_IDLE_KB_PER_S)

    def _nvmlDeviceGetNvLinkState(self, handle: Any, link: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        links = gpu.profile.nvlink_links
        _require(links > 0)
        if not 0 <= _val(link) < links:
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        _set(out, 1)

    def _nvmlDeviceGetNumFans(self, handle: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        _require(gpu.profile.fan)
        _set(out, 1)  # the A6000 and RTX 4090 captures report one fan speed

    def _nvmlDeviceGetFanSpeed_v2(self, handle: Any, fan: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        _require(gpu.profile.fan)
        if _val(fan) != 0:
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        _set(out, gpu.state.fan_percent)

    # -- processes: per-process utilization, the R550 detail list, MPS -------------------------

    def _nvmlDeviceGetProcessUtilization(self, handle: Any, samples: Any, count: Any, last_seen_us: Any) -> int:
        """One sample per listed process, the GPU's utilization shared by the memory each holds.

        Stamped with the wall clock in microseconds, as the driver stamps its samples (callers ask
        for samples newer than a wall-clock time); NOT_FOUND when none is newer than that."""
        gpu = self._gpu(handle)
        self._parent_permitted(gpu)
        _require(not self.mig.enabled(gpu))  # no GPU-wide utilization under MIG, nor per process [inferred]
        self.workloads.ensure_started()
        stamp_us = time.time_ns() // 1000
        procs = gpu.processes
        if not procs or _val(last_seen_us) >= stamp_us:
            return abi.ERROR_NOT_FOUND
        capacity = _val(count._obj)
        count._obj.value = len(procs)
        if samples is None or capacity < len(procs):
            return abi.ERROR_INSUFFICIENT_SIZE
        held = sum(p.used_memory_bytes for p in procs) or 1
        for slot, proc in zip(samples, procs, strict=False):
            share = proc.used_memory_bytes / held
            slot.pid = proc.pid
            slot.timeStamp = stamp_us
            slot.smUtil = round(gpu.state.utilization_gpu * share)
            slot.memUtil = round(gpu.state.utilization_memory * share)
            slot.encUtil = slot.decUtil = 0
        return abi.SUCCESS

    def _nvmlDeviceGetRunningProcessDetailList(self, handle: Any, out: Any) -> int:
        """R550's process list (nvitop picks its process struct by whether this symbol exists)."""
        gpu = self._gpu(handle)
        self.workloads.ensure_started()
        detail = out._obj
        procs = gpu.processes if detail.mode == abi.PROCESS_MODE_COMPUTE else []
        capacity = detail.numProcArrayEntries if detail.procArray else 0
        detail.numProcArrayEntries = len(procs)
        if not procs:
            return abi.SUCCESS
        if capacity < len(procs):
            return abi.ERROR_INSUFFICIENT_SIZE
        for i, proc in enumerate(procs):
            slot = detail.procArray[i]
            slot.pid = proc.pid
            slot.usedGpuMemory = proc.used_memory_bytes
            slot.gpuInstanceId = slot.computeInstanceId = 0xFFFFFFFF
            slot.usedGpuCcProtectedMemory = 0
        return abi.SUCCESS

    def _nvmlDeviceGetMPSComputeRunningProcesses_v3(self, handle: Any, count: Any, infos: Any) -> int:
        self._gpu(handle)
        count._obj.value = 0  # no MPS server runs on a simulated host
        return abi.SUCCESS

    def _nvmlDeviceGetGraphicsRunningProcesses_v2(self, handle: Any, count: Any, infos: Any) -> int:
        return self._nvmlDeviceGetGraphicsRunningProcesses_v3(handle, count, infos)

    def _nvmlDeviceGetHandleByPciBusId_v2(self, bus_id: Any, out: Any) -> None:
        self._check_init()
        wanted = (getattr(bus_id, "value", bus_id) or b"").decode().upper()
        gpu = next((g for g in self.gpus if wanted in (g.pci_bus_id, g.pci_bus_id[4:])), None)
        if gpu is None:
            raise SimulatedNvmlError(abi.ERROR_NOT_FOUND)
        if gpu.state.lost:
            raise SimulatedNvmlError(abi.ERROR_GPU_IS_LOST)
        _write_pointer(out, self._handle(gpu.index))

    # -- GPM (gpuwatch/sim/gpm.py) -------------------------------------------------------------------

    def _nvmlGpmQueryDeviceSupport(self, handle: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        _check_version(out._obj, abi.GPM_SUPPORT_VERSION)
        out._obj.isSupportedDevice = int(SimGpm.supported(gpu))

    def _nvmlGpmSampleAlloc(self, out: Any) -> None:
        self._check_init()
        _write_pointer(out, _GPM_SAMPLE_BASE + self.gpm.alloc() * _GPM_SAMPLE_STRIDE)

    def _gpm_buffer(self, sample: Any) -> int:
        address = ctypes.cast(sample, ctypes.c_void_p).value or 0
        buffer, rest = divmod(address - _GPM_SAMPLE_BASE, _GPM_SAMPLE_STRIDE)
        if rest or buffer not in self.gpm.samples:
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        return buffer

    def _nvmlGpmSampleFree(self, sample: Any) -> None:
        self._check_init()
        self.gpm.free(self._gpm_buffer(sample))

    def _nvmlGpmSampleGet(self, handle: Any, sample: Any) -> None:
        gpu = self._gpu(handle)
        _require(SimGpm.supported(gpu) and not self.mig.enabled(gpu))
        self.gpm.take(self._gpm_buffer(sample), (gpu.index, -1))

    def _nvmlGpmMigSampleGet(self, handle: Any, gpu_instance_id: Any, sample: Any) -> None:
        gpu = self._gpu(handle)
        _require(SimGpm.supported(gpu) and self.mig.enabled(gpu))
        if self.mig.by_gpu_instance(gpu, _val(gpu_instance_id)) is None:
            raise SimulatedNvmlError(abi.ERROR_NOT_FOUND)
        self.gpm.take(self._gpm_buffer(sample), (gpu.index, _val(gpu_instance_id)))

    def _nvmlGpmMetricsGet(self, request: Any) -> None:
        self._check_init()
        r = request._obj
        _check_version(r, abi.GPM_METRICS_GET_VERSION)
        first = self.gpm.samples.get(self._gpm_buffer(r.sample1))
        second = self.gpm.samples.get(self._gpm_buffer(r.sample2))
        if first is None or second is None or first.key != second.key or second.time_s <= first.time_s:
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        if r.numMetrics > len(r.metrics):
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        for i in range(r.numMetrics):
            metric = r.metrics[i]
            value = self.gpm.metric(first, second, metric.metricId)
            metric.nvmlReturn = abi.ERROR_NOT_SUPPORTED if value is None else abi.SUCCESS
            metric.value = 0.0 if value is None else value

    # -- MIG devices (gpuwatch/sim/mig.py) ----------------------------------------------------------

    def _mig_device(self, handle: Any) -> tuple[SimGpu, SimMigInstance] | None:
        """A MIG device handle's parent GPU and instance; None for any other handle."""
        address = ctypes.cast(handle, ctypes.c_void_p).value or 0
        offset = (address - _HANDLE_BASE - self._generation * _GENERATION_STRIDE) % _HANDLE_STRIDE
        if offset < _MIG_HANDLE_OFFSET:
            return None
        gpu = self._gpu(ctypes.c_void_p(address - offset))
        instances = self.mig.of(gpu)
        if offset - _MIG_HANDLE_OFFSET >= len(instances):
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        return gpu, instances[offset - _MIG_HANDLE_OFFSET]

    def _require_mig(self, handle: Any) -> SimMigInstance:
        mig = self._mig_device(handle)
        if mig is None:
            self._gpu(handle)
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        return mig[1]

    def _parent_permitted(self, gpu: SimGpu) -> None:
        if self.mig.parent_denied(gpu, self.scenario.privileged):
            raise SimulatedNvmlError(abi.ERROR_NO_PERMISSION)

    def _mig_memory(self, instance: SimMigInstance, memory: Any) -> None:
        total = instance.memory_mib * MIB
        used = instance.used_memory_bytes()
        memory.total, memory.used, memory.free = total, used, total - used

    def _mig_processes(self, instance: SimMigInstance) -> list[Any]:
        real = self.workloads.real_pids
        return [replace(p, pid=real.get(p.pid, p.pid)) for p in instance.processes]

    def _owner(self, gpu: SimGpu, pid: int) -> SimMigInstance | None:
        """The MIG instance a (live) pid runs in, on a MIG-enabled GPU."""
        for instance in self.mig.of(gpu):
            if any(p.pid == pid for p in self._mig_processes(instance)):
                return instance
        return None

    def _nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        _require(_mig_capable(gpu.profile.name))
        i = _val(index)
        if not self.mig.enabled(gpu) or not 0 <= i < MAX_MIG_DEVICES:
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        if i >= len(self.mig.of(gpu)):
            raise SimulatedNvmlError(abi.ERROR_NOT_FOUND)
        _write_pointer(out, self._handle(gpu.index) + _MIG_HANDLE_OFFSET + i)

    def _nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: Any, out: Any) -> None:
        mig = self._mig_device(handle)
        if mig is None:
            raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
        _write_pointer(out, self._handle(mig[0].index))

    def _nvmlDeviceGetGpuInstanceId(self, handle: Any, out: Any) -> None:
        _set(out, self._require_mig(handle).gpu_instance_id)

    def _nvmlDeviceGetComputeInstanceId(self, handle: Any, out: Any) -> None:
        _set(out, self._require_mig(handle).compute_instance_id)

    def _nvmlDeviceGetAttributes_v2(self, handle: Any, out: Any) -> None:
        """A MIG device's shares, as nvidia-smi -q prints them under "Device Attributes"."""
        m = self._require_mig(handle)
        a = out._obj
        a.multiprocessorCount = m.sms
        a.sharedCopyEngineCount = a.sharedDecoderCount = a.sharedJpegCount = m.slices  # the capture: 3/2/1
        a.sharedEncoderCount = a.sharedOfaCount = 0
        a.gpuInstanceSliceCount = m.slices
        a.computeInstanceSliceCount = m.compute_slices or m.slices
        a.memorySizeMB = m.memory_mib

    def _nvmlDeviceGetGpuInstanceProfileInfoV(self, handle: Any, profile: Any, out: Any) -> None:
        gpu = self._gpu(handle)
        _check_version(out._obj, abi.GPU_INSTANCE_PROFILE_INFO_V2)
        slices = _GI_PROFILE_SLICES.get(_val(profile))
        offered = MIG_PROFILES.get(gpu.profile.key, {})
        name = next((n for n, entry in offered.items() if entry[0] == slices), None)
        if slices is None or name is None:
            raise SimulatedNvmlError(abi.ERROR_NOT_SUPPORTED)
        _, memory_mib, sms, _ = offered[name]
        info = out._obj
        info.id = _val(profile)
        info.sliceCount = slices
        info.instanceCount = 7 // slices
        info.multiprocessorCount = sms
        info.copyEngineCount = info.decoderCount = info.jpegCount = slices
        info.encoderCount = info.ofaCount = 0
        info.memorySizeMB = memory_mib
        info.name = ("MIG " + name).encode()

    def close(self) -> None:
        """End the workload processes the library started (they end with this process anyway)."""
        self.workloads.close()
        if self.kernel_log is not None:
            self.kernel_log.close()


# -- per-model facts of the third-party entry points (a name fragment of the profile's card name) ---

_PCIE_TX_BYTES_PER_S = 1.5e9  # at full load: the rate physics.py's byte counters grow at
_PCIE_RX_BYTES_PER_S = 0.6e9
_PCIE_IDLE_KB_PER_S = 50
_MIG_CAPABLE = ("A100", "A30", "H100", "H200", "H800", "H20", "B200")


def _mig_capable(name: str) -> bool:
    return any(part in name for part in _MIG_CAPABLE)


def _compute_capability(name: str, architecture: int) -> tuple[int, int]:
    """CUDA compute capability: GA100 8.0, other Ampere (GA10x) 8.6, Ada 8.9, Hopper 9.0."""
    if architecture == abi.ARCH_AMPERE:
        return (8, 0) if _mig_capable(name) else (8, 6)
    if architecture == abi.ARCH_ADA:
        return 8, 9
    if architecture == abi.ARCH_HOPPER:
        return 9, 0
    return 10, 0  # Blackwell (GB100); the simulator has no older part


def _field(table: dict[int, tuple[bool, int, float]], field_id: int, branch: int) -> tuple[int, float]:
    """One field's (value type, value) from a GPU's field table, or the driver's per-field error.

    A field the card lacks (retired pages on Ampere and newer), one this driver branch predates, or
    one the simulator does not model answers NOT_SUPPORTED in its own element, as a real driver
    does, never an error for the whole batch (shared/research/real-cards.md)."""
    entry = table.get(field_id)
    if entry is None or not entry[0] or _FIELD_SINCE.get(field_id, 0) > branch:
        raise SimulatedNvmlError(abi.ERROR_NOT_SUPPORTED)
    return entry[1], entry[2]


# -- ctypes helpers -------------------------------------------------------------------------------


def _val(x: Any) -> Any:
    """The Python value of a ctypes scalar passed by value (or a plain int)."""
    return getattr(x, "value", x)


def _set(ref: Any, value: Any) -> None:
    """Write through a ``byref(c_scalar)`` output argument."""
    ref._obj.value = value


def _write_str(buf: Any, text: str) -> None:
    # surrogateescape: a name held as os.fsdecode() gives it comes out as the bytes a real driver
    # would copy from the kernel, UTF-8 or not (a process named b"ev\xff\xfeil").
    buf.value = text.encode("utf-8", "surrogateescape")


def _write_pointer(ref: Any, address: int) -> None:
    """Store an opaque handle value into a ``byref(POINTER(...))`` output argument."""
    target = ref._obj
    ctypes.cast(ctypes.pointer(target), ctypes.POINTER(ctypes.c_void_p))[0] = address


_PLAIN_STRUCTS: dict[type, type[ctypes.Structure]] = {}


def _plain_view(array: Any) -> Any:
    """The same memory as a ctypes array of plain structs with the element's layout.

    pynvml's structs hook every attribute access in Python; a C library writes their memory
    directly. Writing through a plain view keeps the simulator's own cost per field near a driver's
    (about a tenth of the hooked writes), so a large field batch is not charged for the simulation.
    """
    element = array._type_
    plain = _PLAIN_STRUCTS.get(element)
    if plain is None:
        plain = type("Plain" + element.__name__, (ctypes.Structure,), {"_fields_": element._fields_})
        assert issubclass(plain, ctypes.Structure)
        _PLAIN_STRUCTS[element] = plain
    return (plain * len(array)).from_buffer(array)


def _check_version(struct: Any, expected: int) -> None:
    """A versioned struct whose version field is not the one this entry point fills."""
    if struct.version != expected:
        raise SimulatedNvmlError(abi.ERROR_ARGUMENT_VERSION_MISMATCH)


def _require(supported: bool) -> None:
    if not supported:
        raise SimulatedNvmlError(abi.ERROR_NOT_SUPPORTED)


def _clock_index(kind: Any) -> int:
    index = {abi.CLOCK_GRAPHICS: 0, abi.CLOCK_SM: 1, abi.CLOCK_MEM: 2, abi.CLOCK_VIDEO: 3}.get(_val(kind))
    if index is None:
        raise SimulatedNvmlError(abi.ERROR_INVALID_ARGUMENT)
    return index


# -- GPM and MIG (issue 17) -----------------------------------------------------------------------

_GPM_SAMPLE_BASE = 0x7F0000
_GPM_SAMPLE_STRIDE = 0x10
_MIG_HANDLE_OFFSET = 0x10  # a MIG device's handle: its parent's plus this plus its index
# nvmlGpuInstanceProfile: NVML_GPU_INSTANCE_PROFILE_{1,2,3,4,7}_SLICE -> slices
_GI_PROFILE_SLICES = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7}
# GPM came with R520 (nvml.h 11.8); the MIG device queries are older than any branch simulated.
_ENTRY_POINT_SINCE.update(
    dict.fromkeys(
        (
            "nvmlGpmQueryDeviceSupport",
            "nvmlGpmSampleAlloc",
            "nvmlGpmSampleFree",
            "nvmlGpmSampleGet",
            "nvmlGpmMigSampleGet",
            "nvmlGpmMetricsGet",
        ),
        520,
    )
)
