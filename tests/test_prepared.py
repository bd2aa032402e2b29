"""Prepared NVML calls give what pynvml's own wrappers give, errors included."""

from __future__ import annotations

import pynvml
import pytest

from gpuwatch.nvml.prepared import FieldRequest, memory_info, temperature


def test_a_struct_query_reads_what_pynvml_reads_poll_after_poll(nvml):
    clock = nvml("consumer-gpu")  # driver 570: nvmlDeviceGetTemperatureV is R570
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    prepared = [(temperature(h), memory_info(h)) for h in handles]
    seen = set()
    for _ in range(5):  # one struct per GPU, reused: every call's values are that call's
        clock.advance(30)
        for h, (temperature_of, memory_of) in zip(handles, prepared, strict=True):
            expected = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
            assert memory_of() == (expected.total, expected.used, expected.free, expected.reserved)
            assert temperature_of() == pynvml.nvmlDeviceGetTemperatureV(h, pynvml.NVML_TEMPERATURE_GPU)
            seen.add(temperature_of())
    assert len(seen) > 1  # the temperatures moved, so a stale struct would have shown


def test_a_struct_query_raises_pynvmls_errors(nvml):
    nvml("inference-host")  # driver 550: no nvmlDeviceGetTemperatureV (R570)
    query = temperature(pynvml.nvmlDeviceGetHandleByIndex(0))
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        query()

    clock = nvml("xid-79")
    lost = pynvml.nvmlDeviceGetHandleByIndex(1)
    query = memory_info(lost)
    assert query()[0] > 0
    clock.advance(41)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        query()


def test_a_field_request_reads_what_pynvml_reads(nvml):
    clock = nvml("inference-host")
    clock.advance(60)
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    ids = [
        pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
        pynvml.NVML_FI_DEV_POWER_INSTANT,
        pynvml.NVML_FI_DEV_MEMORY_TEMP,
    ]
    request = FieldRequest(ids)
    for _ in range(3):  # the second and later batches take the whole-batch path
        got = request.fetch(h)
        expected = pynvml.nvmlDeviceGetFieldValues(h, ids)
        assert got[:2] == [float(expected[0].value.ullVal), float(expected[1].value.uiVal)]
        assert (
            got[2] is None and expected[2].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
        )  # GDDR6: no memory temperature
