"""On a real NVIDIA driver only (`pytest -m gpu`): NVLink and the recovery action read as documented.

Read only: nothing here changes a setting. Skipped where NVML does not load; the NVLink checks skip
on cards without NVLink and the recovery-action checks on drivers before R570.
"""

from __future__ import annotations

import time

import pytest
from real_driver import real_reader

from gpuwatch.labels import RECOVERY_ACTIONS

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def readings():
    reader = real_reader()
    try:
        first = [reader.read(i, slow=True) for i in range(reader.gpu_count)]
        time.sleep(2.0)
        second = [reader.read(i, slow=True) for i in range(reader.gpu_count)]
        branch = int((reader.driver_version or "0").split(".", 1)[0])
    finally:
        reader.close()
    return first, second, branch


def test_nvlink_links_are_active_and_their_counters_never_go_back(readings):
    first, second, _ = readings
    with_links = [(a, b) for a, b in zip(first, second, strict=True) if b.nvlink_active]
    if not with_links:
        pytest.skip("no GPU with NVLink here")
    for before, after in with_links:
        # Hopper SXM has 18 links (nvidia-smi nvlink -s); a board may leave some unconnected.
        assert 0 < len(after.nvlink_active) <= 18
        assert any(after.nvlink_active.values()), "an NVLink board with no active link"
        assert after.nvlink_bytes, "the per-link throughput fields (138/139) answer on NVLink parts"
        for key, value in after.nvlink_bytes.items():
            assert value >= before.nvlink_bytes.get(key, 0)  # bytes since driver load, in KiB * 1024
            assert value % 1024 == 0
        for key, value in after.nvlink_errors.items():
            assert 0 <= before.nvlink_errors.get(key, 0) <= value


def test_the_recovery_action_is_one_of_nvml_names_on_r570_and_later(readings):
    _, second, branch = readings
    if branch < 570:
        assert all(r.recovery_action is None for r in second)
        pytest.skip(f"driver R{branch} predates the recovery action field")
    for reading in second:
        assert reading.recovery_action in RECOVERY_ACTIONS, reading.recovery_action
