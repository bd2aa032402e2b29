"""`gpuwatch capture`: NVML's answers for every query gpuwatch makes, masked, as JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from real_driver import real_reader

from gpuwatch.nvml import NvmlReader
from gpuwatch.nvml.capture import FORMAT, MASKED, capture


def gpuwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuwatch", *args], capture_output=True, text=True, timeout=120)


def test_a_simulated_capture_has_every_query_with_its_return_code(tmp_path):
    out = tmp_path / "cap.json"
    result = gpuwatch("capture", "--simulate", "inference-host", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "4 GPU(s) captured" in result.stderr
    doc = json.loads(out.read_text())
    assert doc["format"] == FORMAT and doc["masked"] is False  # a simulated host's identities are made up
    assert doc["system"]["nvmlSystemGetDriverVersion"] == {"return": "SUCCESS", "value": "550.127.05"}
    assert len(doc["gpus"]) == 4
    for gpu in doc["gpus"]:
        queries = gpu["queries"]
        assert all("return" in answer for answer in queries.values())
        assert queries["nvmlDeviceGetName"]["value"] == "NVIDIA RTX A6000"
        assert queries["nvmlDeviceGetPowerManagementLimitConstraints"]["value"] == [100000, 300000]
        # an R550 driver has no R570 margin query: recorded as NVML answered it, not left out
        assert queries["nvmlDeviceGetMarginTemperature"]["return"] == "FunctionNotFound"
        energy = gpu["fields"][str(83)]  # NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION
        assert energy["return"] == "SUCCESS" and energy["value"] > 0
    assert doc["gpus"][0]["fields"]["82"]["return"] == "NotSupported"  # no memory sensor on GDDR6
    assert doc["gpus"][0]["fields"]["193"]["return"] == "NotSupported"  # no T.Limit on Ampere
    assert any(gpu["processes"] for gpu in doc["gpus"])


def test_a_capture_masks_serials_uuids_and_process_names(nvml):
    nvml("inference-host").advance(60)
    doc = capture(mask=True)
    assert doc["masked"] is True
    for gpu in doc["gpus"]:
        queries = gpu["queries"]
        assert queries["nvmlDeviceGetUUID"]["value"] == f"GPU-00000000-0000-0000-0000-{gpu['index']:012d}"
        assert queries["nvmlDeviceGetSerial"]["value"] == MASKED
        assert all(process["name"] == MASKED for process in gpu["processes"])
    assert any(gpu["processes"] for gpu in doc["gpus"])


def test_an_output_that_cannot_be_written_is_one_line_and_exit_1(tmp_path):
    result = gpuwatch("capture", "--simulate", "healthy", "--output", str(tmp_path / "no-such-dir" / "cap.json"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"gpuwatch: cannot write the capture to {tmp_path / 'no-such-dir' / 'cap.json'}: No such file or directory; "
        "choose another --output"
    ]


def test_no_mask_keeps_what_the_reader_reads(nvml):
    nvml("inference-host")
    doc = capture(mask=False)
    reader = NvmlReader()
    reader.open()
    try:
        for gpu, identity in zip(doc["gpus"], reader.identities, strict=True):
            queries = gpu["queries"]
            assert queries["nvmlDeviceGetUUID"]["value"] == identity.uuid
            assert queries["nvmlDeviceGetSerial"]["value"] == identity.serial
            assert queries["nvmlDeviceGetName"]["value"] == identity.name
            assert queries["nvmlDeviceGetPciInfo"]["value"]["busId"] == identity.pci_bus_id
    finally:
        reader.close()


def test_capture_without_a_driver_says_so_and_exits_3():
    result = gpuwatch("capture")
    if result.returncode == 0:
        pytest.skip("an NVIDIA driver is installed here")
    assert result.returncode == 3 and "cannot capture" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.gpu
def test_a_capture_of_the_real_gpu_matches_a_live_read():
    reader = real_reader()
    try:
        doc = capture(mask=False)
        assert len(doc["gpus"]) == reader.gpu_count
        for gpu, identity in zip(doc["gpus"], reader.identities, strict=True):
            queries = gpu["queries"]
            assert queries["nvmlDeviceGetUUID"]["value"] == identity.uuid
            assert queries["nvmlDeviceGetName"]["value"] == identity.name
            total = queries["nvmlDeviceGetMemoryInfo"]["value"]["total"]
            assert total == identity.memory_size_bytes
            if identity.power_limit_max_watts is not None:
                assert queries["nvmlDeviceGetPowerManagementLimitConstraints"]["value"][1] / 1000 == pytest.approx(
                    identity.power_limit_max_watts
                )
    finally:
        reader.close()
