"""The entry points gpustat and nvitop call, per simulated card: a value where that card's
`nvidia-smi -q` capture shows one, NOT_SUPPORTED where it shows N/A (tests/data and
shared/data/captures)."""

from __future__ import annotations

import time

import pynvml
import pytest

from gpuwatch.nvml import use_library
from gpuwatch.sim import scenario
from gpuwatch.sim.clock import ManualClock
from gpuwatch.sim.library import SimulatedNvmlLibrary

NS = "not supported"
# mixed-fleet: RTX A6000, L40S, A100-SXM4-80GB, H100 SXM, H200 and RTX 4090 on driver 570.
MIXED = ("rtx-a6000", "l40s", "a100-sxm4-80gb", "h100", "h200", "rtx-4090")
EXPECTED = {
    # card: (CUDA capability, MIG mode, NVLink links, fans)
    "rtx-a6000": ((8, 6), NS, 0, 1),
    "l40s": ((8, 9), NS, 0, NS),
    "a100-sxm4-80gb": ((8, 0), [0, 0], 12, NS),
    "h100": ((9, 0), [0, 0], 18, NS),
    "h200": ((9, 0), [0, 0], 18, NS),
    "rtx-4090": ((8, 9), NS, 0, 1),
}


def answer(call):  # type: ignore[no-untyped-def]
    try:
        return call()
    except pynvml.NVMLError_NotSupported:
        return NS


@pytest.mark.parametrize(("index", "card"), list(enumerate(MIXED)))
def test_each_card_answers_as_its_capture_shows(nvml, index, card):
    nvml("mixed-fleet").advance(60)
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    capability, mig, links, fans = EXPECTED[card]
    assert pynvml.nvmlDeviceGetCudaComputeCapability(h) == capability
    assert answer(lambda: pynvml.nvmlDeviceGetMigMode(h)) == mig
    assert pynvml.nvmlDeviceGetMaxMigDeviceCount(h) == 0  # MIG is not enabled
    assert pynvml.nvmlDeviceIsMigDeviceHandle(h).value == 0
    assert answer(lambda: pynvml.nvmlDeviceGetNumFans(h)) == fans
    if links:
        assert all(pynvml.nvmlDeviceGetNvLinkState(h, link) == 1 for link in range(links))
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            pynvml.nvmlDeviceGetNvLinkState(h, links)
    else:
        assert answer(lambda: pynvml.nvmlDeviceGetNvLinkState(h, 0)) == NS
    assert pynvml.nvmlDeviceGetPersistenceMode(h) == pynvml.NVML_FEATURE_ENABLED
    assert pynvml.nvmlDeviceGetComputeMode(h) == pynvml.NVML_COMPUTEMODE_DEFAULT
    assert pynvml.nvmlDeviceGetDisplayActive(h) == pynvml.NVML_FEATURE_DISABLED
    with pytest.raises(pynvml.NVMLError_NotSupported):  # WDDM/TCC: Windows only
        pynvml.nvmlDeviceGetDriverModel(h)
    assert pynvml.nvmlDeviceGetPowerState(h) == pynvml.nvmlDeviceGetPerformanceState(h) == 0
    # Under load the link carries the workload's traffic, far above the idle 50 KB/s.
    assert pynvml.nvmlDeviceGetPcieThroughput(h, pynvml.NVML_PCIE_UTIL_TX_BYTES) > 1000
    assert pynvml.nvmlDeviceGetPcieThroughput(h, pynvml.NVML_PCIE_UTIL_RX_BYTES) > 1000


def test_display_mode_per_driver_and_card(nvml):
    nvml("mixed-fleet")  # R570: still answers; the R580+ captures say it is deprecated
    assert pynvml.nvmlDeviceGetDisplayMode(pynvml.nvmlDeviceGetHandleByIndex(0)) == pynvml.NVML_FEATURE_ENABLED
    assert pynvml.nvmlDeviceGetDisplayMode(pynvml.nvmlDeviceGetHandleByIndex(5)) == pynvml.NVML_FEATURE_DISABLED


def test_an_idle_gpu_has_housekeeping_pcie_traffic_and_no_processes(nvml):
    nvml("inference-host")
    h = pynvml.nvmlDeviceGetHandleByIndex(3)
    assert pynvml.nvmlDeviceGetPcieThroughput(h, pynvml.NVML_PCIE_UTIL_TX_BYTES) == 50
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetProcessUtilization(h, 0)
    assert pynvml.nvmlDeviceGetMPSComputeRunningProcesses(h) == []


def test_process_utilization_splits_the_gpus_among_its_processes(nvml):
    nvml("inference-host").advance(60)
    h = pynvml.nvmlDeviceGetHandleByIndex(2)
    utilization = pynvml.nvmlDeviceGetUtilizationRates(h).gpu
    (sample,) = pynvml.nvmlDeviceGetProcessUtilization(h, time.time_ns() // 1000 - 1_000_000)
    assert sample.pid == pynvml.nvmlDeviceGetComputeRunningProcesses(h)[0].pid
    assert sample.smUtil == utilization > 0
    with pytest.raises(pynvml.NVMLError_NotFound):  # nothing newer than a time still to come
        pynvml.nvmlDeviceGetProcessUtilization(h, time.time_ns() // 1000 + 60_000_000)


def test_the_r550_process_detail_list_matches_the_process_list(nvml):
    nvml("inference-host")
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    listed = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
    detail = pynvml.nvmlDeviceGetRunningProcessDetailList(h, pynvml.nvmlProcessDetailList_v1, 0)
    assert [(p.pid, p.usedGpuMemory) for p in detail] == [(p.pid, p.usedGpuMemory) for p in listed]
    assert pynvml.nvmlDeviceGetRunningProcessDetailList(h, pynvml.nvmlProcessDetailList_v1, 1) == []


def test_a_handle_is_found_by_its_pci_bus_id(nvml):
    nvml("inference-host")
    h = pynvml.nvmlDeviceGetHandleByIndex(2)
    assert pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByPciBusId(pynvml.nvmlDeviceGetPciInfo(h).busId)) == 2


def test_display_mode_is_deprecated_from_r580():
    text = 'driver_version = "590.48.01"\n[[gpu]]\nprofile = "h100"\n'
    library = SimulatedNvmlLibrary(scenario.parse(text), ManualClock().sim_seconds)
    use_library(library)
    pynvml.nvmlInit()
    try:
        with pytest.raises(pynvml.NVMLError_Deprecated):
            pynvml.nvmlDeviceGetDisplayMode(pynvml.nvmlDeviceGetHandleByIndex(0))
    finally:
        pynvml.nvmlShutdown()
        library.close()
        use_library(None)
