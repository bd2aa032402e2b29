"""On a real Hopper-or-newer GPU only (`pytest -m gpu`): GPM's ratios under loads this test starts.

A PyTorch FP16 matmul loop should keep the tensor pipes busy; a large device-to-device copy should
keep DRAM busy with the tensor pipes idle. Read only: the test changes no GPU setting (no MIG mode,
clocks or limits). Skipped where NVML does not load, where PyTorch with CUDA is missing, or where
GPU 0 has no GPM or runs MIG.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from real_driver import real_reader

from gpuwatch.nvml import NvmlReader

pytestmark = pytest.mark.gpu

_LOADS = {
    # each runs for the seconds given as its argument, on GPU 0, then exits
    "matmul": (
        "import sys,time,torch;a=torch.randn(8192,8192,device='cuda:0',dtype=torch.float16);b=a.clone();"
        "end=time.time()+float(sys.argv[1])\n"
        "while time.time()<end:\n  a@b\n  torch.cuda.synchronize()"
    ),
    "copy": (
        "import sys,time,torch;a=torch.empty(2**30,device='cuda:0',dtype=torch.uint8);b=torch.empty_like(a);"
        "end=time.time()+float(sys.argv[1])\n"
        "while time.time()<end:\n  b.copy_(a)\n  torch.cuda.synchronize()"
    ),
}


@pytest.fixture(scope="module")
def reader():
    pytest.importorskip("torch")
    probe = real_reader()
    first = probe.read(0)
    if first.mig_enabled:
        probe.close()
        pytest.skip("GPU 0 runs MIG")
    time.sleep(0.5)
    if not probe.read(0).activity_ratio:
        probe.close()
        pytest.skip("GPU 0 has no GPM (before Hopper)")
    yield probe
    probe.close()


def _under(reader: NvmlReader, load: str) -> dict[str, float]:
    """GPM's ratios over two seconds in the middle of a load started for it."""
    proc = subprocess.Popen([sys.executable, "-c", _LOADS[load], "8"])
    try:
        time.sleep(3)  # CUDA context, allocation, the first kernels
        reader.read(0)
        time.sleep(2)
        ratios = dict(reader.read(0).activity_ratio)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0
    return ratios


def test_a_matmul_keeps_the_tensor_pipes_and_sms_busy(reader):
    ratios = _under(reader, "matmul")
    assert ratios["tensor_active"] > 0.3, ratios
    assert ratios["sm_active"] > 0.5, ratios
    assert all(0.0 <= v <= 1.0 for v in ratios.values())


def test_a_copy_keeps_dram_busy_and_the_tensor_pipes_idle(reader):
    ratios = _under(reader, "copy")
    assert ratios["dram_active"] > 0.3, ratios
    assert ratios["dram_active"] > ratios["tensor_active"], ratios
    assert ratios["tensor_active"] < 0.05, ratios
