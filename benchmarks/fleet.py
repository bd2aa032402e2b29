"""Simulated hosts of any size, for measurements that scale with the number of GPUs."""

from __future__ import annotations

from pathlib import Path

from gpuwatch.nvml import use_library
from gpuwatch.sim.clock import ManualClock
from gpuwatch.sim.library import SimulatedNvmlLibrary
from gpuwatch.sim.scenario import Scenario, parse

# Above Linux's largest pid (2^22), so no real process on the benchmark machine is named.
_PID_BASE = 4194400


def scenario_text(gpus: int, hang_gpu: int | None = None, hang_at_s: float = 0.0, hang_for_s: float = 0.0) -> str:
    """TOML for ``gpus`` RTX A6000s under LLM load, one serving process each.

    With ``hang_gpu``, every NVML call for that GPU blocks 5 wall seconds from ``hang_at_s`` for
    ``hang_for_s`` simulated seconds (a wedged GPU, Xid 79/119 style).
    """
    lines = [
        f'name = "bench-{gpus}"',
        f'description = "{gpus}x RTX A6000 under load (benchmark)"',
        "seed = 8",
    ]
    for i in range(gpus):
        lines += [
            "[[gpu]]",
            'profile = "rtx-a6000"',
            f"load = {0.95 if i % 4 != 3 else 0.0}",
            "[[gpu.process]]",
            f"pid = {_PID_BASE + i}",
            'name = "vllm"',
            "used_memory_mib = 40000",
        ]
        if i == hang_gpu:
            lines += [
                "[[gpu.fault]]",
                'kind = "hang"',
                f"at_s = {hang_at_s}",
                f"duration_s = {hang_for_s}",
                "hang_s = 5",
            ]
    return "\n".join(lines) + "\n"


def scenario(gpus: int) -> Scenario:
    return parse(scenario_text(gpus), f"<bench-{gpus}>")


def write_scenario(
    folder: Path, gpus: int, hang_gpu: int | None = None, hang_at_s: float = 0.0, hang_for_s: float = 0.0
) -> Path:
    """Write a scenario file for ``gpuwatch serve --simulate PATH``."""
    path = folder / f"bench-{gpus}{'' if hang_gpu is None else '-hang'}.toml"
    path.write_text(scenario_text(gpus, hang_gpu, hang_at_s, hang_for_s))
    return path


def install(gpus: int) -> tuple[SimulatedNvmlLibrary, ManualClock]:
    """Install a ``gpus``-GPU simulated library beneath pynvml, on a manual clock at 60 s."""
    clock = ManualClock()
    clock.advance(60.0)
    library = SimulatedNvmlLibrary(scenario(gpus), clock.sim_seconds)
    use_library(library)
    return library, clock
