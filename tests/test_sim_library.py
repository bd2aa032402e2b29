"""pynvml's own functions, run against the simulated driver library."""

from __future__ import annotations

import contextlib
import ctypes
import subprocess
import sys

import psutil
import pynvml
import pytest

from gpuwatch.nvml import use_library
from gpuwatch.sim import scenario
from gpuwatch.sim.clock import ManualClock
from gpuwatch.sim.library import SimulatedNvmlLibrary


def test_identity_and_limits_of_an_a6000_read_through_pynvml(nvml):
    nvml("inference-host")
    assert pynvml.nvmlDeviceGetCount() == 4
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetName(h) == "NVIDIA RTX A6000"
    assert pynvml.nvmlDeviceGetUUID(h).startswith("GPU-")
    assert pynvml.nvmlDeviceGetPciInfo(h).pciDeviceId == 0x223010DE
    assert pynvml.nvmlDeviceGetEnforcedPowerLimit(h) == 300_000
    assert pynvml.nvmlDeviceGetPowerManagementLimitConstraints(h) == [100_000, 300_000]
    assert pynvml.nvmlDeviceGetTemperatureThreshold(h, pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX) == 93
    assert pynvml.nvmlDeviceGetTemperatureThreshold(h, pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN) == 95
    assert pynvml.nvmlDeviceGetTemperatureThreshold(h, pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN) == 98
    assert pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM) == 2100
    assert pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM) == 8001
    memory = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert memory.total == 46068 * 2**20
    assert memory.total == memory.reserved + memory.used + memory.free
    assert pynvml.nvmlDeviceGetEccMode(h) == [1, 1]


def test_field_values_report_per_element_return_codes(nvml):
    nvml("consumer-gpu")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    values = pynvml.nvmlDeviceGetFieldValues(
        h, [pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL, 9999]
    )
    assert values[0].nvmlReturn == pynvml.NVML_SUCCESS and values[0].value.ullVal > 0
    assert values[1].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED  # ECC is off on a GeForce
    assert values[2].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED  # unknown: per element, not the batch


def test_an_rtx_4090_answers_as_its_capture_does(nvml):
    nvml("consumer-gpu")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetEccMode(h) == [0, 0]  # Disabled, not NotSupported
    assert pynvml.nvmlDeviceGetRemappedRows(h) == (0, 0, 0, 0)
    assert pynvml.nvmlDeviceGetTemperatureThreshold(h, pynvml.NVML_TEMPERATURE_THRESHOLD_ACOUSTIC_CURR) == 84
    for call in (
        lambda: pynvml.nvmlDeviceGetSerial(h),
        lambda: pynvml.nvmlDeviceGetTemperatureThreshold(h, pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX),
        lambda: pynvml.nvmlDeviceGetTotalEccErrors(
            h, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC
        ),
    ):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            call()
    assert pynvml.nvmlDeviceGetMarginTemperature(h) > 0
    assert pynvml.nvmlDeviceGetPciInfo(h).pciSubSystemId == 0xF29710B0


def test_power_stays_under_the_cap_and_energy_integrates(nvml):
    clock = nvml("inference-host")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(120)
    e1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    power = pynvml.nvmlDeviceGetPowerUsage(h)
    assert 280_000 < power <= 300_000 * 1.05
    assert pynvml.nvmlDeviceGetCurrentClocksEventReasons(h) & pynvml.nvmlClocksEventReasonSwPowerCap
    clock.advance(10)
    e2 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    assert 10 * 280_000 < e2 - e1 < 10 * 315_000  # mJ over 10 s at ~300 W


def test_a_gpu_that_falls_off_the_bus_raises_gpu_is_lost_alone(nvml):
    clock = nvml("xid-79")
    lost, fine = pynvml.nvmlDeviceGetHandleByIndex(1), pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetPowerUsage(lost) > 0
    clock.advance(41)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetPowerUsage(lost)
    assert pynvml.nvmlDeviceGetPowerUsage(fine) > 0


def test_hidden_symbols_look_like_an_older_driver(nvml):
    nvml("inference-host", hidden=("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetMemoryInfo_v2"))
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetCurrentClocksEventReasons(h)
    assert pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h) == pynvml.nvmlClocksThrottleReasonGpuIdle
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert pynvml.nvmlDeviceGetMemoryInfo(h).total == 46068 * 2**20


def test_processes_come_back_through_pynvmls_two_call_protocol(nvml):
    nvml("inference-host")
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(2))
    assert [p.usedGpuMemory for p in procs] == [38000 * 2**20]
    assert pynvml.nvmlSystemGetProcessName(procs[0].pid) == "python3"
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(0))
    assert [p.usedGpuMemory for p in procs] == [41200 * 2**20]
    assert pynvml.nvmlSystemGetProcessName(procs[0].pid) == "vllm"
    assert pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(3)) == []


def test_listed_processes_are_live_and_named_as_their_workloads(nvml):
    """The pids NVML lists name live processes, as on a real host: psutil reads their names and
    users; the simulated server's process is a child of this one (where the server listens), a
    scenario's other workload is not in this process's tree."""
    nvml("inference-host")
    pids = [
        [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i))]
        for i in range(4)
    ]
    assert pids[0] == pids[1] and len(pids[0]) == 1 and len(pids[2]) == 1 and pids[3] == []
    server, other = psutil.Process(pids[0][0]), psutil.Process(pids[2][0])
    assert (server.name(), other.name()) == ("vllm", "python3")
    assert server.username() == other.username() == psutil.Process().username()
    children = {c.pid for c in psutil.Process().children(recursive=True)}
    assert server.pid in children and other.pid not in children


def test_closing_the_library_ends_its_processes():
    library = SimulatedNvmlLibrary(scenario.load("inference-host"), ManualClock().sim_seconds)
    use_library(library)
    pynvml.nvmlInit()
    try:
        pids = {
            p.pid
            for i in (0, 2)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i))
        }
    finally:
        pynvml.nvmlShutdown()
        library.close()
        use_library(None)
    assert len(pids) == 2
    # Each process exits on reading EOF; the detached one is reaped by init, so allow it a moment.
    _, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def test_the_processes_end_when_the_simulating_process_is_killed(tmp_path):
    """SIGKILL gives no chance to clean up; the kernel closes the pipe each process waits on."""
    code = (
        "import pynvml, sys\n"
        "from gpuwatch.host import simulated_host\n"
        "from gpuwatch.sim.clock import ManualClock\n"
        "simulated_host('inference-host', clock=ManualClock())\n"
        "pynvml.nvmlInit()\n"
        "pids = {p.pid for i in (0, 2) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i))}\n"
        "print(*pids, flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    pids = [int(pid) for pid in child.stdout.readline().split()]
    assert len(pids) == 2 and all(psutil.pid_exists(pid) for pid in pids)
    child.kill()
    child.wait()
    _, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def test_a_busy_gpu_always_lists_a_process_and_its_memory(nvml):
    nvml("mixed-fleet")
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        assert len(procs) == 1 and psutil.Process(procs[0].pid).name() == "python3"
        assert pynvml.nvmlDeviceGetMemoryInfo(h).used >= procs[0].usedGpuMemory > 2**30


def test_readings_depend_on_simulated_time_not_on_how_often_it_is_read():
    def temperature_at_600s(reads: int) -> tuple[int, int]:
        clock = ManualClock()
        use_library(SimulatedNvmlLibrary(scenario.load("inference-host"), clock.sim_seconds))
        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(2)
            for _ in range(reads):
                clock.advance(600 / reads)
                pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
            return pynvml.nvmlDeviceGetTemperature(
                h, pynvml.NVML_TEMPERATURE_GPU
            ), pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        finally:
            pynvml.nvmlShutdown()
            use_library(None)

    assert temperature_at_600s(1) == temperature_at_600s(600)


def test_calls_before_init_are_uninitialized():
    use_library(SimulatedNvmlLibrary(scenario.load("inference-host"), lambda: 0.0))
    try:
        with pytest.raises(pynvml.NVMLError_Uninitialized):
            pynvml.nvmlDeviceGetCount()
    finally:
        use_library(None)


# -- faults of the driver as a whole, and GPUs coming back ----------------------------------------

_ONE_GPU = '[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n'


@pytest.fixture
def host():
    """Factory: the simulated library of a scenario text, installed beneath pynvml, not yet initialised."""

    def install(text: str) -> tuple[ManualClock, SimulatedNvmlLibrary]:
        clock = ManualClock()
        library = SimulatedNvmlLibrary(scenario.parse(text), clock.sim_seconds)
        use_library(library)
        return clock, library

    yield install
    with contextlib.suppress(pynvml.NVMLError):
        pynvml.nvmlShutdown()
    use_library(None)


def test_nvml_cannot_start_until_the_library_and_then_the_driver_are_there(host):
    clock, _ = host(
        '[[fault]]\nkind = "library_missing"\nduration_s = 10\n'
        '[[fault]]\nkind = "driver_missing"\nat_s = 10\nduration_s = 10\n' + _ONE_GPU
    )
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        pynvml.nvmlInit()
    clock.advance(15)
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()
    clock.advance(10)
    pynvml.nvmlInit()
    assert pynvml.nvmlDeviceGetCount() == 1


def test_a_driver_reload_ends_sessions_invalidates_handles_and_restarts_counts(host):
    clock, _ = host('[[fault]]\nkind = "driver_reload"\nat_s = 60\nduration_s = 5\n' + _ONE_GPU)
    pynvml.nvmlInit()
    old = pynvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(59)
    energy_before = pynvml.nvmlDeviceGetTotalEnergyConsumption(old)
    clock.advance(2)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetTotalEnergyConsumption(old)
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()  # the module is still loading
    clock.advance(5)
    pynvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetTotalEnergyConsumption(old)  # a handle of the previous driver load
    new = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert 0 < pynvml.nvmlDeviceGetTotalEnergyConsumption(new) < energy_before


def test_a_lost_gpu_is_found_by_uuid_again_after_a_reset(host):
    clock, _ = host(
        _ONE_GPU + '[[gpu.fault]]\nkind = "fall_off_bus"\nat_s = 10\n[[gpu.fault]]\nkind = "gpu_reset"\nat_s = 30\n'
    )
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    uuid = pynvml.nvmlDeviceGetUUID(handle)
    clock.advance(20)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetHandleByUUID(uuid)
    clock.advance(11)
    again = pynvml.nvmlDeviceGetHandleByUUID(uuid)
    assert pynvml.nvmlDeviceGetUUID(again) == uuid
    assert pynvml.nvmlDeviceGetTotalEnergyConsumption(again) < 2_000_000  # restarted at the reset
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")


def test_intermittent_call_faults_fail_about_their_ratio_of_calls(host):
    clock, _ = host(
        _ONE_GPU + '[[gpu.fault]]\nkind = "unknown_error"\nratio = 0.3\nduration_s = 10\n'
        '[[gpu.fault]]\nkind = "not_supported"\nat_s = 10\nduration_s = 10\n'
    )
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(1)  # a GPU's faults strike as simulated time steps past them
    failed = 0
    for _ in range(1000):
        try:
            pynvml.nvmlDeviceGetPerformanceState(handle)
        except pynvml.NVMLError_Unknown:
            failed += 1
    assert 200 < failed < 400
    clock.advance(10)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetPerformanceState(handle)
    clock.advance(10)
    assert pynvml.nvmlDeviceGetPerformanceState(handle) == 0


def test_init_can_hang():
    slept: list[float] = []
    clock = ManualClock()
    text = '[[fault]]\nkind = "init_hang"\nhang_s = 30\nduration_s = 1\n' + _ONE_GPU
    use_library(SimulatedNvmlLibrary(scenario.parse(text), clock.sim_seconds, sleep=slept.append))
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        assert slept == [30]
    finally:
        use_library(None)


# -- a driver as the captures show it --------------------------------------------------------------


def test_entry_points_and_fields_follow_the_driver_branch(host):
    """A 550 driver has no R570 calls (FunctionNotFound) and no R555 fields (NOT_SUPPORTED per element)."""
    host('driver_version = "550.127.05"\n[[gpu]]\nprofile = "rtx-4090"\n')
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    for call in (
        lambda: pynvml.nvmlDeviceGetMarginTemperature(h),
        lambda: pynvml.nvmlDeviceGetTemperatureV(h, pynvml.NVML_TEMPERATURE_GPU),
    ):
        with pytest.raises(pynvml.NVMLError_FunctionNotFound):
            call()
    tx, tlimit = pynvml.nvmlDeviceGetFieldValues(
        h, [pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, pynvml.NVML_FI_DEV_TEMPERATURE_SHUTDOWN_TLIMIT]
    )
    assert tx.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED  # R555
    assert tlimit.nvmlReturn == pynvml.NVML_SUCCESS and tlimit.value.siVal == -7  # R535
    assert pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) > 0


def test_a_versioned_struct_with_the_wrong_version_is_refused(nvml):
    nvml("consumer-gpu")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    assert pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2).total == 24564 * 2**20
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2 - 1)
    margin = pynvml.c_nvmlMarginTemperature_v1_t()
    margin.version = pynvml.nvmlMarginTemperature_v1 + (1 << 24)
    ret = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetMarginTemperature")(h, ctypes.byref(margin))
    assert ret == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH


def test_xid_79_is_never_an_event_the_gpu_is_simply_lost(nvml):
    clock = nvml("xid-79")
    lost = pynvml.nvmlDeviceGetHandleByIndex(1)
    events = pynvml.nvmlEventSetCreate()
    pynvml.nvmlDeviceRegisterEvents(lost, pynvml.nvmlEventTypeXidCriticalError, events)
    clock.advance(41)
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait_v2(events, 0)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlDeviceGetPowerUsage(lost)


def test_hopper_idles_at_p0_and_gen5_and_answers_memory_tlimit_0(nvml):
    nvml("mixed-fleet")
    names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(6)]
    h = pynvml.nvmlDeviceGetHandleByIndex(names.index("NVIDIA H200"))
    shutdown, slowdown, memory, gpu_max = pynvml.nvmlDeviceGetFieldValues(h, [193, 194, 195, 196])
    assert (shutdown.value.siVal, slowdown.value.siVal, memory.value.siVal, gpu_max.value.siVal) == (-8, -2, 0, 0)
    a6000 = pynvml.nvmlDeviceGetHandleByIndex(names.index("NVIDIA RTX A6000"))
    assert all(
        v.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED for v in pynvml.nvmlDeviceGetFieldValues(a6000, [193, 194])
    )
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetMarginTemperature(a6000)  # no T.Limit on an A6000, even on R570
