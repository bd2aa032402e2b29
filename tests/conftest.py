"""Shared fixtures: simulated hosts beneath pynvml, stepped on a manual clock."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

import pytest

from gpuwatch.host import Host, simulated_host
from gpuwatch.nvml import use_library
from gpuwatch.sampler import Sampler
from gpuwatch.sim.clock import ManualClock


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files from the current output")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@dataclass
class SimRun:
    host: Host
    clock: ManualClock
    sampler: Sampler

    def at(self, seconds: float):  # type: ignore[no-untyped-def]
        """Advance simulated time to ``seconds`` and poll once."""
        self.clock.advance(seconds - self.clock.sim_seconds())
        return self.sampler.poll_once()


@pytest.fixture
def sim() -> Iterator[Callable[..., SimRun]]:
    """Factory: ``sim("inference-host")`` installs that scenario beneath pynvml."""
    samplers: list[Sampler] = []

    def make(scenario: str, poll_interval_s: float = 1.0, process_interval_s: float = 10.0) -> SimRun:
        clock = ManualClock()
        host = simulated_host(scenario, clock=clock)
        sampler = Sampler(host.reader_factory, host.clock, poll_interval_s, process_interval_s)
        samplers.append(sampler)
        return SimRun(host, clock, sampler)

    yield make
    for sampler in samplers:
        sampler.stop()
    use_library(None)


def skip_outside_ci(reason: str, in_ci: str) -> NoReturn:
    """Skip for want of something CI installs (.ci/run); in CI (``$CI`` set) its absence is a failure."""
    if os.environ.get("CI"):
        pytest.fail(in_ci)
    pytest.skip(reason)


def required_tool(name: str, package: str) -> str:
    """Path of a tool the suite runs; CI installs it (.ci/run), so there it must be present."""
    path = shutil.which(name)
    if path is None:
        skip_outside_ci(
            f"{name} not installed (apt-get install {package})",
            f"{name} is not installed; .ci/run installs Debian's {package} package",
        )
    return path


@pytest.fixture
def promtool() -> str:
    return required_tool("promtool", "prometheus")


@pytest.fixture
def systemd_analyze() -> str:
    return required_tool("systemd-analyze", "systemd")
