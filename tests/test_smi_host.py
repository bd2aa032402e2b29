"""A simulated host from the text of ``nvidia-smi -q``: the reader's tolerance, and each capture as a host."""

from __future__ import annotations

import logging
from pathlib import Path

import pynvml
import pytest
from captures import CAPTURES, from_capture, from_simulator

from gpuwatch.sim import scenario, smi, smi_host

CAPTURE_FILES = sorted(CAPTURES.glob("*.txt"), key=lambda p: p.name)

# An older driver's spelling (R470/R515): "Power Readings", "Enforced Power Limit", "Clocks Throttle
# Reasons", "Gpu", bracketed placeholders, no Remapped Rows or T.Limit, no reserved memory.
OLD_DRIVER = """
==============NVSMI LOG==============

Driver Version                            : 470.182.03
CUDA Version                              : 11.4

Attached GPUs                             : 1
GPU 00000000:3B:00.0
    Product Name                          : Tesla V100-SXM2-32GB
    Product Brand                         : Tesla
    Serial Number                         : 0323118017466
    GPU UUID                              : GPU-2f4d7a0e-6a36-9a5c-1b2e-0c0e6f6c1d11
    VBIOS Version                         : 88.00.80.00.01
    PCI
        Bus                               : 0x3B
        Device Id                         : 0x1DB510DE
        Bus Id                            : 00000000:3B:00.0
        Sub System Id                     : 0x124910DE
        GPU Link Info
            PCIe Generation
                Max                       : 3
                Current                   : 3
            Link Width
                Max                       : 16x
                Current                   : 16x
    Fan Speed                             : N/A
    Performance State                     : P0
    Clocks Throttle Reasons
        Idle                              : Active
    FB Memory Usage
        Total                             : 32510 MiB
        Used                              : 0 MiB
        Free                              : 32510 MiB
    BAR1 Memory Usage
        Total                             : 32768 MiB
    Utilization
        Gpu                               : 0 %
        Memory                            : 0 %
    Ecc Mode
        Current                           : Enabled
        Pending                           : Enabled
    Temperature
        GPU Current Temp                  : 31 C
        GPU Shutdown Temp                 : 90 C
        GPU Slowdown Temp                 : 87 C
        GPU Max Operating Temp            : 83 C
        GPU Target Temperature            : [N/A]
        Memory Current Temp               : 30 C
        Memory Max Operating Temp         : 85 C
    Power Readings
        Power Management                  : Supported
        Power Draw                        : 42.50 W
        Power Limit                       : 300.00 W
        Default Power Limit               : 300.00 W
        Enforced Power Limit              : 250.00 W
        Min Power Limit                   : 150.00 W
        Max Power Limit                   : 300.00 W
    Clocks
        Graphics                          : 135 MHz
        SM                                : 135 MHz
        Memory                            : 877 MHz
        Video                             : 555 MHz
    Max Clocks
        Graphics                          : 1530 MHz
        SM                                : 1530 MHz
        Memory                            : 877 MHz
        Video                             : 1372 MHz
    Processes                             : None
"""


def test_an_older_drivers_spelling_reads_the_same():
    (gpu,) = smi.parse(OLD_DRIVER).gpus
    assert gpu.name == "Tesla V100-SXM2-32GB" and gpu.driver_version == "470.182.03"
    assert [gpu.power(k) for k in ("draw", "enforced", "requested", "default", "min", "max")] == [
        42.5,
        250.0,
        300.0,
        300.0,
        150.0,
        300.0,
    ]
    assert gpu.idle and gpu.pstate == 0 and gpu.utilization_gpu == 0
    assert gpu.ecc_enabled is True  # "Ecc Mode": keys are matched whatever their case
    assert gpu.temperature("target") is None and gpu.temperature("margin") is None
    assert gpu.memory_mib("reserved") is None and not gpu.row_remapping
    assert gpu.clocks("Max Clocks") == (1530, 1530, 877, 1372)


def test_a_host_from_an_older_driver_says_what_it_filled_in():
    host = smi_host.build(OLD_DRIVER, source="v100.txt")
    (gpu,) = host.gpus
    card = gpu.card
    assert host.driver_version == "470.182.03" and host.cuda_driver_version == 11040
    assert card.name == "Tesla V100-SXM2-32GB" and card.brand == 2 and card.pci_subsystem_id == 0x124910DE
    assert (card.thresholds.shutdown, card.thresholds.slowdown, card.thresholds.max_operating) == (90, 87, 83)
    assert card.thresholds_absolute and not card.thresholds_tlimit
    assert gpu.power_limit_w == 250.0  # enforced below the default
    assert gpu.uuid == "GPU-2f4d7a0e-6a36-9a5c-1b2e-0c0e6f6c1d11" and gpu.serial == "0323118017466"
    said = "\n".join(host.fallbacks)
    for missing in ("physics: from the closest known card", "reserved memory", "architecture", "Remapped Rows"):
        assert missing in said


def test_placeholders_and_missing_sections_are_none():
    text = "GPU 00000000:01:00.0\n    Product Name : X\n    Fan Speed : [Not Supported]\n    Serial Number : N/A\n"
    (gpu,) = smi.parse(text).gpus
    assert gpu.fan_percent is None and gpu.serial is None and gpu.power("max") is None
    assert gpu.clocks() == (None, None, None, None) and gpu.processes == []


def test_a_file_without_a_gpu_block_is_refused(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("No devices were found\n")
    with pytest.raises(scenario.ScenarioError, match="no 'GPU"):
        scenario.load(str(path))


def test_a_mig_capture_is_a_whole_gpu_without_row_remapping():
    taken = smi.parse((CAPTURES / "h200-mig__590.48.01.txt").read_text())
    (gpu,) = taken.host()
    assert gpu.mig_enabled and gpu.mig_devices == 5
    assert not gpu.row_remapping and gpu.utilization_gpu is None  # N/A with MIG on
    host = scenario.load(str(CAPTURES / "h200-mig__590.48.01.txt"))
    assert any("MIG mode" in line for line in host.fallbacks)


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=lambda p: p.name)
def test_every_gpu_of_a_capture_answers_as_captured(nvml, path: Path, caplog):
    with caplog.at_level(logging.INFO, logger="gpuwatch.sim.scenario"):
        nvml(str(path))
    host = smi.parse(path.read_text(encoding="utf-8")).host()
    assert pynvml.nvmlDeviceGetCount() == len(host)
    assert pynvml.nvmlSystemGetDriverVersion() == host[0].driver_version
    for index, block in enumerate(host):
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        assert from_simulator(h) == from_capture(block)
        assert pynvml.nvmlDeviceGetPciInfo(h).busId == block.bus_id
        if block.uuid and not smi.masked(block.uuid):
            assert pynvml.nvmlDeviceGetUUID(h) == block.uuid
        if block.serial and not smi.masked(block.serial):
            assert pynvml.nvmlDeviceGetSerial(h) == block.serial
    # Whatever it filled in, it said so in the log.
    assert all(line in caplog.text for line in scenario.load(str(path)).fallbacks)


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=lambda p: p.name)
def test_the_first_gpu_serves_and_holds_its_process_memory(nvml, path: Path):
    clock = nvml(str(path))
    clock.advance(60)
    count = pynvml.nvmlDeviceGetCount()
    for index in range(count):
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        utilization = pynvml.nvmlDeviceGetUtilizationRates(h).gpu
        processes = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        used = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2).used
        if index == 0:
            assert utilization > 50 and len(processes) == 1
            assert used >= processes[0].usedGpuMemory > 0
        else:
            assert utilization == 0 and processes == []


def test_an_h200_capture_is_served_as_that_card(sim):
    """The issue's check: 700 W, 143771 MiB, a memory temperature, no fan, T.Limit -8/-2, health known."""
    run = sim(str(CAPTURES / "h200__590.48.01.txt"))
    run.at(1)
    snapshot = run.at(120)
    (gpu,) = snapshot.gpus
    assert gpu.identity.name == "NVIDIA H200"
    assert gpu.identity.power_limit_max_watts == 700.0 and gpu.reading.power_limit_watts == 700.0
    assert gpu.identity.memory_size_bytes == 143771 * 2**20
    assert gpu.reading.memory_temperature_celsius is not None
    assert gpu.reading.fan_speed_ratio is None
    assert gpu.reading.temperature_margin_celsius == 87 - gpu.reading.temperature_celsius
    assert gpu.verdict.state != "unknown"
