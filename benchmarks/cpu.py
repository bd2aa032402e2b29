"""CPU time per GPU per poll: gpuwatch's poll, gpustat's query and nvitop's device snapshot.

Each (tool, GPU count) runs in a fresh interpreter (``python -m benchmarks.cpu TOOL GPUS POLLS``)
so that one tool's patches to pynvml (gpustat wraps ``_nvmlGetFunctionPointer``) never touch
another's numbers. All three run over the same simulated driver library beneath pynvml.

"Values" counts the numbers a tool hands over per GPU per poll: numeric scalars that are not
missing (None / nvitop's ``N/A``), excluding the index; a clock-event mask counts once.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from benchmarks import fleet

TOOLS = ("gpuwatch", "gpustat", "nvitop")


def compare(gpu_counts: Iterable[int], repeats: int) -> list[dict[str, Any]]:
    """Every tool at every GPU count, ``repeats`` times interleaved; the median of each.

    Interleaving matters on shared machines, where CPU speed drifts over seconds: each tool sees
    the same drift, so the ratios hold even when the absolute figures wander.
    """
    rows = []
    for gpus in gpu_counts:
        polls = 10 * max(2, round(80 / gpus))  # whole 10-poll cycles (gpuwatch's slow loop), at least two
        runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in TOOLS}
        for _ in range(repeats):
            for tool in TOOLS:
                runs[tool].append(measure(tool, gpus, polls))
        for tool in TOOLS:
            cpu = statistics.median(r["cpu_per_gpu_per_poll_us"] for r in runs[tool])
            rows.append({**runs[tool][0], "polls": polls * repeats, "cpu_per_gpu_per_poll_us": cpu})
    return rows


def measure(tool: str, gpus: int, polls: int) -> dict[str, Any]:
    """Run ``tool`` in a child interpreter and return its figures."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.cpu", tool, str(gpus), str(polls)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _numbers(value: Any) -> int:
    if isinstance(value, bool | int | float):
        return 1
    if isinstance(value, frozenset):
        return 1
    if isinstance(value, Mapping):
        return sum(_numbers(v) for v in value.values())
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return sum(_numbers(v) for v in value)
    if is_dataclass(value) and not isinstance(value, type):
        return sum(_numbers(getattr(value, f.name)) for f in fields(value) if f.name not in ("index", "timestamp"))
    return 0


def _gpuwatch(gpus: int) -> tuple[Callable[[], None], Callable[[], int]]:
    from gpuwatch.nvml import NvmlReader
    from gpuwatch.sampler import Sampler

    _, clock = fleet.install(gpus)
    sampler = Sampler(lambda: NvmlReader(clock.time), clock, 1.0, 10.0)
    sampler.poll_once()

    def poll() -> None:
        clock.advance(1.0)  # the default 1 s poll and 10 s slow loop: one poll in ten lists processes
        sampler.poll_once()

    def values() -> int:
        status = sampler.latest.gpus[0]
        verdict = 1  # the GPU's health state, one of four
        return _numbers(status.identity) + _numbers(status.reading) + verdict + len(status.processes)

    return poll, values


def _gpustat(gpus: int) -> tuple[Callable[[], None], Callable[[], int]]:
    import gpustat.core

    _, clock = fleet.install(gpus)
    # gpustat sleeps 0.1 s per GPU to let psutil measure process CPU; sleeping costs no CPU, and
    # skipping it keeps the 64-GPU run short. Everything else runs as shipped.
    gpustat.core.time = _NoSleep()
    latest: list[Any] = []

    def poll() -> None:
        clock.advance(1.0)  # every tool pays for the same simulated second of physics per poll
        latest[:] = [gpustat.core.GPUStatCollection.new_query()]

    def values() -> int:
        entry = dict(latest[0].gpus[0].entry)
        processes = entry.pop("processes") or []
        return _numbers({k: v for k, v in entry.items() if k != "index"}) + len(processes)

    poll()
    return poll, values


def _nvitop(gpus: int) -> tuple[Callable[[], None], Callable[[], int]]:
    from nvitop import Device

    _, clock = fleet.install(gpus)
    devices = Device.all()
    latest: list[Any] = []

    def poll() -> None:
        clock.advance(1.0)
        latest[:] = [device.as_snapshot() for device in devices]

    def values() -> int:
        snap = latest[0]
        return sum(_numbers(getattr(snap, key)) for key in Device.SNAPSHOT_KEYS if not key.endswith("_human"))

    poll()
    return poll, values


class _NoSleep:
    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        return None


WARM_UP_POLLS = 10  # one slow cycle, unmeasured, for every tool


def _run(tool: str, gpus: int, polls: int) -> dict[str, Any]:
    setup = {"gpuwatch": _gpuwatch, "gpustat": _gpustat, "nvitop": _nvitop}[tool]
    poll, values = setup(gpus)
    # Steady state, as a daemon (or a watch loop) runs: every tool polls a while unmeasured, and
    # the garbage its imports and start-up left is collected now, not in a measured poll (a full
    # collection then cost a stateful tool up to twice its figure at 64 GPUs, where few polls run).
    for _ in range(WARM_UP_POLLS):
        poll()
    gc.collect()
    started = time.process_time()
    for _ in range(polls):
        poll()
    cpu_s = time.process_time() - started
    return {
        "tool": tool,
        "gpus": gpus,
        "polls": polls,
        "cpu_per_gpu_per_poll_us": cpu_s / polls / gpus * 1e6,
        "values_per_gpu": values(),
    }


def main(argv: Iterable[str]) -> None:
    tool, gpus, polls = list(argv)
    print(json.dumps(_run(tool, int(gpus), int(polls))))


if __name__ == "__main__":
    main(sys.argv[1:])
