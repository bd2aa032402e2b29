"""Which collectors run: node_exporter's switches over the collectors in exporter/registry.py.

Generic over ``COLLECTORS``: each collector's module says whether it runs by default
(``DEFAULT_ENABLED``) and what it exports (``DESCRIPTION``), so a collector added there gets its
``--collector.NAME`` / ``--no-collector.NAME`` flags, its ``[collectors]`` key and its README row
without a change here (``tests/test_collectors.py`` refuses a collector without them).

Combined as node_exporter combines them: every collector starts at its default, or off with
``--collector.disable-defaults``; then each named switch turns its collector on or off, whatever
the order they came in. ``--collector.lean-set`` starts from :data:`LEAN_SET` instead, and trims
those collectors' series to the lean set's (:mod:`gpuwatch.exporter.lean`); named switches still
apply on top of it. gpuwatch's own series (``self``: build, NVML up, polls, errors; the
per-collector ``gpuwatch_scrape_collector_*`` pair; the process's CPU and memory) are always
exported, as node_exporter keeps its own: they are what says the exporter itself is alive.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from types import ModuleType

from gpuwatch.exporter import lean, pods, processes
from gpuwatch.exporter.registry import COLLECTORS, ConcernCollector

ALWAYS_ON = ("self",)  # gpuwatch's own series: no switch
SWITCHABLE = tuple(name for name in COLLECTORS if name not in ALWAYS_ON)
DISABLE_DEFAULTS = "disable_defaults"
LEAN = "lean_set"
PROCESS_PID = "processes.pid"  # keep `pid` on the per-process series (off: summed per name and user)
WITH_OPTIONS = ("processes",)  # collectors with options of their own: a [collectors.NAME] table

# The lean set's collectors (their series trimmed by gpuwatch/exporter/lean.py): at most 30 series
# per GPU on a simulated host, and still every family a shipped alert, recording rule or dashboard
# panel reads (tests/test_collectors.py checks both). Left out whole: PCIe, per-process memory.
LEAN_SET = (
    "identity",
    "power",
    "thermal",
    "clocks",
    "throttle",
    "health",
    "memory",
    "reliability",
    "tokens",
    "gpm",
    "mig",
    "nvlink",
)


def config_keys() -> tuple[str, ...]:
    """The ``[collectors]`` keys: one per switchable collector, ``NAME.enabled`` for a collector
    that also has options (a table), the options, and ``disable_defaults``."""
    names = [*SWITCHABLE, *(f"{name}.enabled" for name in WITH_OPTIONS if name in SWITCHABLE)]
    return (*names, PROCESS_PID, DISABLE_DEFAULTS, LEAN)


def switch_name(key: str) -> str:
    """One name per switch: ``processes.enabled`` (inside a ``[collectors.processes]`` table) is
    ``processes``."""
    return key.removesuffix(".enabled")


def flag_for_key(key: str) -> str:
    """The flag of a ``[collectors]`` key: ``processes.enabled`` -> ``--collector.processes``."""
    return "--collector." + switch_name(key).replace("_", "-")


def module_of(collect: ConcernCollector) -> ModuleType:
    """The module that defines a collector function (where its switch's default and description live)."""
    return sys.modules[collect.__module__]


def default_enabled(name: str) -> bool:
    return bool(module_of(COLLECTORS[name]).DEFAULT_ENABLED)


def description(name: str) -> str:
    return str(module_of(COLLECTORS[name]).DESCRIPTION)


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    """The switches as given (file, environment and flags, merged by key): ``switched`` holds
    ``(name, on)`` for each collector named, sorted so that equal settings compare equal."""

    disable_defaults: bool = False
    switched: tuple[tuple[str, bool], ...] = ()
    process_pid: bool = True
    lean_set: bool = False

    @classmethod
    def from_keys(cls, keys: Mapping[str, bool]) -> CollectorSettings:
        """From ``[collectors]`` keys without the prefix: ``disable_defaults``, ``processes.pid``
        and collector names (``processes.enabled`` is the same as ``processes``, for a file that
        also has a ``[collectors.processes]`` table). Raises ValueError for an unknown name."""
        switched: dict[str, bool] = {}
        for key, on in keys.items():
            name = switch_name(key)
            if key in (DISABLE_DEFAULTS, PROCESS_PID, LEAN):
                continue
            if name not in SWITCHABLE:
                raise ValueError(unknown_collector(name))
            switched[name] = bool(on)
        return cls(
            disable_defaults=bool(keys.get(DISABLE_DEFAULTS, False)),
            switched=tuple(sorted(switched.items())),
            process_pid=bool(keys.get(PROCESS_PID, True)),
            lean_set=bool(keys.get(LEAN, False)),
        )

    @property
    def enabled(self) -> tuple[str, ...]:
        """The collectors that run, in the registry's order (``self`` always among them)."""
        switched = dict(self.switched)
        return tuple(
            name
            for name in COLLECTORS
            if name in ALWAYS_ON or switched.get(name, not self.disable_defaults and self._default(name))
        )

    def _default(self, name: str) -> bool:
        return name in LEAN_SET if self.lean_set else default_enabled(name)


def unknown_collector(name: str) -> str:
    if name in ALWAYS_ON:
        return f"{name!r} is gpuwatch's own series, always exported; it has no switch"
    return f"no collector is named {name!r} (collectors: {', '.join(SWITCHABLE)})"


def select(settings: CollectorSettings) -> dict[str, ConcernCollector]:
    """The collectors to run, by name, in the registry's order."""
    chosen = {name: COLLECTORS[name] for name in settings.enabled}
    if "processes" in chosen and not settings.process_pid and COLLECTORS["processes"] is processes.collect:
        chosen["processes"] = processes.collect_without_pid
    if "pods" in chosen and COLLECTORS["pods"] is pods.collect:
        chosen["pods"] = partial(pods.collect_with, processes="processes" in chosen, pid=settings.process_pid)
    if settings.lean_set:
        # the lean set's own collectors trimmed; one added by name (--collector.pcie) exports whole
        chosen = {name: lean.Trimmed(c) if name in LEAN_SET else c for name, c in chosen.items()}
    return chosen


def describe(settings: CollectorSettings) -> str:
    """One line for logs and `check-config`: what runs, and what is off."""
    enabled = settings.enabled
    off = [name for name in SWITCHABLE if name not in enabled]
    pid = "" if settings.process_pid or "processes" not in enabled else " (processes without pid)"
    lean_set = " (lean set)" if settings.lean_set else ""
    return f"collectors {', '.join(enabled)}{pid}{lean_set}; off: {', '.join(off) or 'none'}"
