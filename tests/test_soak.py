"""A soak: 24 simulated hours of 8 GPUs with faults sprinkled in, through the real process.

At 1000x, one wall second is about 17 simulated minutes and a 10 s poll interval is 10 ms of wall
time, so the day takes under a minute and a half (the simulated physics, stepped every 0.25
simulated seconds, costs most of it; the daemon gets through about two polls in three). The
daemon's memory, open files and threads are read from outside (psutil) after the first simulated
hour and at the end; every scrape's counters are compared with the scrape before.
"""

from __future__ import annotations

import re
import time

import psutil
import pytest
from counters import counter_samples, decreases
from serving import serve
from test_e2e import get, parse, per_gpu

pytestmark = pytest.mark.slow

HOUR = 3600
SPEED = 1000
POLL_INTERVAL_S = 10
DAY_WALL_S = 24 * HOUR / SPEED

_FAULTS = {
    # GPU: faults, as [[gpu.fault]] bodies
    1: [f'kind = "fall_off_bus"\nat_s = {3 * HOUR}', f'kind = "gpu_reset"\nat_s = {3.5 * HOUR}'],
    # 4 wall s (67 simulated min): past the 2 s a read must be blocked before it is left behind.
    # The window spans three polls, so a poll reads GPU 2 inside it even when a loaded machine
    # stretches one poll past the interval.
    2: [f'kind = "hang"\nat_s = {6 * HOUR}\nduration_s = {3 * POLL_INTERVAL_S}\nhang_s = 4'],
    3: [
        f'kind = "unknown_error"\nat_s = {8 * HOUR}\nduration_s = {HOUR}\nratio = 0.05',
        f'kind = "not_supported"\nat_s = {10 * HOUR}\nduration_s = {HOUR / 2}\nratio = 0.1',
    ],
    4: [
        f'kind = "ecc_corrected"\nat_s = {2 * HOUR}\ncount = 5',
        f'kind = "ecc_uncorrected"\nat_s = {12 * HOUR}',
        f'kind = "xid"\nat_s = {14 * HOUR}\nxid = 13',
    ],
    5: [f'kind = "power_brake"\nat_s = {16 * HOUR}\nduration_s = 600'],
    6: [f'kind = "energy_reset"\nat_s = {18 * HOUR}', f'kind = "row_remap_pending"\nat_s = {19 * HOUR}'],
}
_LOAD_STEPS = "load_steps = [[3600, 0.2], [21600, 0.95], [43200, 0.0], [64800, 0.7]]\n"


def _scenario() -> str:
    text = (
        'name = "soak"\ndescription = "8 GPUs, a day of faults"\nseed = 24\n'
        f'[[fault]]\nkind = "driver_reload"\nat_s = {20 * HOUR}\nduration_s = 60\n'
    )
    for gpu in range(8):
        text += f'[[gpu]]\nprofile = "{"l40s" if gpu == 7 else "rtx-a6000"}"\nload = 0.9\n'
        text += _LOAD_STEPS if gpu == 7 else ""
        text += "".join(f"[[gpu.fault]]\n{fault}\n" for fault in _FAULTS.get(gpu, []))
    return text


# Log lines the faults above are meant to cause; anything else at WARNING or above is a finding.
_EXPECTED = re.compile(
    r"lost: GpuIsLost|answering again|an NVML call has not returned|the hung NVML call returned"
    r"|poll failed: .*Unknown|failed: NotSupported|failed: Unknown|Xid \d+|NVML stopped answering"
    r"|NVML init failed: DriverNotLoaded|Xid event wait failed: NVMLError_Uninitialized|suppressed"
)


def _resources(process: psutil.Process) -> tuple[int, int, int]:
    """Resident memory, open files and threads; the least of a few looks, since the thread (and
    socket) of the scrape just answered can take a moment to go."""
    looks = []
    for _ in range(5):
        looks.append((process.memory_info().rss, process.num_fds(), process.num_threads()))
        time.sleep(0.02)
    return looks[-1][0], min(look[1] for look in looks), min(look[2] for look in looks)


def test_a_simulated_day_of_faults_leaves_memory_files_and_threads_flat_and_counters_monotonic(tmp_path):
    scenario = tmp_path / "soak.toml"
    scenario.write_text(_scenario())
    args = ("--simulate", str(scenario), "--sim-speed", str(SPEED), "--poll-interval", f"{POLL_INTERVAL_S}s")
    with serve(tmp_path, *args, "--process-interval", "60s") as d:
        process = psutil.Process(d.proc.pid)
        started = time.monotonic()
        previous = counter_samples(get(d.url + "/metrics"))
        warm: tuple[int, int, int] | None = None
        scrapes = 0
        while time.monotonic() - started < DAY_WALL_S:
            time.sleep(0.5)
            text = get(d.url + "/metrics")
            scrapes += 1
            now = counter_samples(text)
            assert decreases(previous, now) == [], f"{(time.monotonic() - started) * SPEED / HOUR:.1f} h"
            previous |= now
            if warm is None and time.monotonic() - started > HOUR / SPEED:
                warm = _resources(process)  # between scrapes: no request thread in flight
        end = _resources(process)
        last = parse(text)
        polls = last["gpuwatch_polls_total"][frozenset()]
    assert warm is not None
    rss_growth = end[0] - warm[0]
    print(f"\nsoak: {scrapes} scrapes, {polls:.0f} polls; RSS {warm[0] / 2**20:.1f} -> {end[0] / 2**20:.1f} MiB")
    print(f"soak: open files {warm[1]} -> {end[1]}, threads {warm[2]} -> {end[2]}")
    assert rss_growth < 5 * 2**20
    assert end[1] == warm[1]
    assert end[2] == warm[2]
    assert polls > 0.4 * 24 * HOUR / POLL_INTERVAL_S
    assert last["gpuwatch_nvml_up"][frozenset()] == 1.0
    assert per_gpu(last, "gpuwatch_gpu_up") == {str(i): 1.0 for i in range(8)}  # GPU 1 found again
    for fault in (
        r"GPU 1 \(GPU-\S+\): lost",
        r"GPU 1 \(GPU-\S+\): answering again",
        r"GPU 2: an NVML call has not returned",
        r"GPU 3: poll failed: .*Unknown",
        r"GPU 3: \S+ failed: NotSupported",
        r"GPU 4: Xid 48",
        r"GPU 6: Xid 63",
        r"NVML stopped answering",
    ):
        assert re.search(fault, d.stderr), fault  # the day's faults did strike
    unexpected = [
        line
        for line in d.stderr.splitlines()
        if (" WARNING " in line or " ERROR " in line or " CRITICAL " in line) and not _EXPECTED.search(line)
    ]
    assert unexpected == []
    assert "Traceback" not in d.stderr and "Exception in thread" not in d.stderr
