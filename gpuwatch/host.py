"""Where readings come from: the system's NVIDIA driver, or the simulated one beneath pynvml."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpuwatch.loop import Clock, WallClock
from gpuwatch.nvml import NvmlReader, use_library
from gpuwatch.sim import scenario as scenarios
from gpuwatch.sim.clock import ManualClock, SimClock
from gpuwatch.sim.inference import InferenceEndpoint
from gpuwatch.sim.library import SimulatedNvmlLibrary
from gpuwatch.tokens.source import SourceConfig


@dataclass(frozen=True, slots=True)
class Host:
    """A clock and a way to open NVML on it."""

    clock: Clock
    reader_factory: Callable[[], NvmlReader]
    description: str
    library: SimulatedNvmlLibrary | None = None
    sim_clock: SimClock | ManualClock | None = None


def real_host() -> Host:
    """The system's driver library (libnvidia-ml.so.1), on the wall clock."""
    clock = WallClock()
    use_library(None)
    return Host(clock=clock, reader_factory=lambda: NvmlReader(clock.time), description="NVIDIA driver")


def simulated_host(
    scenario_name: str | None,
    speed: float = 1.0,
    clock: SimClock | ManualClock | None = None,
    kernel_log_path: str | None = None,
) -> Host:
    """A scenario's simulated driver library installed beneath pynvml, on simulated time; with
    ``kernel_log_path``, the simulated host writes its kernel log's Xid lines there.

    Raises :class:`gpuwatch.sim.scenario.ScenarioError` for an unknown or broken scenario.
    """
    scenario = scenarios.load(scenario_name)
    sim_clock = clock if clock is not None else SimClock(speed)
    library = SimulatedNvmlLibrary(scenario, sim_clock.sim_seconds, kernel_log_path=kernel_log_path)
    library.workloads.ensure_started()  # now, not inside the first poll: a daemon's first poll stays quick
    use_library(library)
    return Host(
        clock=sim_clock,
        reader_factory=lambda: NvmlReader(sim_clock.time),
        description=f"simulated host {scenario.name!r} ({len(scenario.gpus)} GPUs)",
        library=library,
        sim_clock=sim_clock,
    )


def start_simulated_servers(host: Host) -> list[tuple[InferenceEndpoint, SourceConfig]]:
    """Start the scenario's simulated inference servers on free local ports; each comes with the
    token source that reads it (preset recognised and GPUs found automatically, as for a real one)."""
    if host.library is None or host.sim_clock is None:
        return []
    started = []
    for server in host.library.servers:
        endpoint = InferenceEndpoint(server, host.library, host.sim_clock)
        endpoint.start()
        started.append((endpoint, SourceConfig(url=endpoint.url, name=server.spec.name)))
    return started
