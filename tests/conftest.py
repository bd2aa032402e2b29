"""Shared fixtures: simulated hosts beneath pynvml, stepped on a manual clock."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

import pynvml
import pytest

from gpuwatch import logsetup
from gpuwatch.host import Host
from gpuwatch.nvml import use_library
from gpuwatch.runtime import Runtime, RuntimeOptions, assemble
from gpuwatch.sampler import Sampler
from gpuwatch.sim import scenario
from gpuwatch.sim.clock import ManualClock
from gpuwatch.sim.library import SimulatedNvmlLibrary
from gpuwatch.tokens.source import SourceConfig
from gpuwatch.tokens.tracker import TokenTracker


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files from the current output")
    parser.addoption(
        "--update-screenshots", action="store_true", help="copy the live page's screenshots to docs/screenshots/"
    )


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Commands run in-process (click's runner) set up logging for the whole interpreter: give every
    test the root logger's level as it was, and drop the handler such a command installed, so no
    test depends on the one before. (pytest adds its own capture handlers anew for every phase.)"""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)
    for handler in root.handlers[:]:
        if any(isinstance(f, logsetup.RateLimit) for f in handler.filters):  # gpuwatch's own
            root.removeHandler(handler)


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@dataclass
class SimRun:
    runtime: Runtime
    clock: ManualClock

    @property
    def host(self) -> Host:
        return self.runtime.host

    @property
    def sampler(self) -> Sampler:
        return self.runtime.sampler

    @property
    def tokens(self) -> TokenTracker | None:
        return self.runtime.tokens

    def at(self, seconds: float):  # type: ignore[no-untyped-def]
        """Advance simulated time to ``seconds``, poll once (the tracker takes the poll in), then
        scrape the token sources once; the merged snapshot."""
        self.clock.advance(seconds - self.clock.sim_seconds())
        snapshot = self.runtime.step()
        self.runtime.scrape_tokens()
        return snapshot

    def through(self, start: float, end: float, step: float = 1.0):  # type: ignore[no-untyped-def]
        """Poll (and scrape) every ``step`` simulated seconds from ``start`` to ``end``; the last snapshot."""
        snapshot = None
        for i in range(round((end - start) / step) + 1):
            snapshot = self.at(start + i * step)
        return snapshot


@pytest.fixture
def sim() -> Iterator[Callable[..., SimRun]]:
    """Factory: ``sim("inference-host")`` installs that scenario beneath pynvml, in a runtime whose
    token sources are the scenario's simulated servers (or ``tokens``), stepped by hand."""
    with contextlib.ExitStack() as stack:

        def make(
            scenario: str,
            poll_interval_s: float = 1.0,
            process_interval_s: float = 10.0,
            tokens: tuple[SourceConfig, ...] = (),
            sim_source_timeout_s: float | None = None,
            xid_log: str = "off",
        ) -> SimRun:
            clock = ManualClock()
            options = RuntimeOptions(
                simulate=scenario,
                poll_interval_s=poll_interval_s,
                process_interval_s=process_interval_s,
                tokens=tokens,
                sim_source_timeout_s=sim_source_timeout_s,
                xid_log=xid_log,
            )
            runtime = stack.enter_context(assemble(options, clock=clock))
            runtime.start(threads=False)
            return SimRun(runtime, clock)

        yield make


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


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return required_tool("prometheus", "prometheus")


@pytest.fixture
def systemd_analyze() -> str:
    return required_tool("systemd-analyze", "systemd")


@pytest.fixture
def nvml() -> Iterator[Callable[..., ManualClock]]:
    """Factory: ``nvml("inference-host", hidden=(...))`` installs that scenario and initialises pynvml."""

    libraries: list[SimulatedNvmlLibrary] = []

    def install(name: str, hidden: tuple[str, ...] = ()) -> ManualClock:
        clock = ManualClock()
        libraries.append(SimulatedNvmlLibrary(scenario.load(name), clock.sim_seconds, hidden_symbols=hidden))
        use_library(libraries[-1])
        pynvml.nvmlInit()
        return clock

    yield install
    with contextlib.suppress(pynvml.NVMLError):
        pynvml.nvmlShutdown()
    for library in libraries:
        library.close()
    use_library(None)
