"""Scenarios: which simulated GPUs a host has, what runs on them, and which faults strike when.

A scenario is a TOML file, chosen by built-in name (``gpuwatch/sim/scenarios/NAME.toml``) or by
path. Errors name the file, the key and the value, so a typo never silently changes a simulation.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gpuwatch.sim.profiles import ALIASES, MIB, PROFILES, REMOVED, DeviceProfile

log = logging.getLogger(__name__)

DEFAULT_SCENARIO = "inference-host"

FAULT_KINDS = frozenset(
    {
        "fall_off_bus",  # Xid 79: every call for the GPU answers GPU_IS_LOST from then on (no NVML event)
        "ecc_corrected",  # `count` corrected (single-bit) errors
        "ecc_uncorrected",  # `count` uncorrected (double-bit) errors, volatile and aggregate
        "row_remap_pending",  # an uncorrectable row waits for a GPU reset to be remapped
        "row_remap_failure",  # the remapper ran out of spare rows
        "power_brake",  # external power-brake assertion for `duration_s`
        "xid",  # an XID event with code `xid` (not 79: NVML never delivers that one; use fall_off_bus)
        "energy_reset",  # the energy counter restarts from 0 (a driver reload)
        "unknown_error",  # calls for the GPU answer UNKNOWN for `duration_s` (a `ratio` of them, default all)
        "not_supported",  # calls for the GPU answer NOT_SUPPORTED for `duration_s` (a `ratio` of them)
        "hang",  # every call for the GPU blocks `hang_s` wall seconds, for `duration_s`
        "gpu_reset",  # the GPU is reset: a lost GPU answers again; energy and volatile ECC restart from 0
        # an administrator enables MIG (the pending mode, applied by a GPU reset): from `at_s` the GPU
        # runs its [[gpu.mig]] instances; without this fault they are there from the start
        "mig_enable",
        "nvlink_errors",  # NVLink `link` takes `count` CRC errors a second (each replayed), for `duration_s`
    }
)
# Faults of the driver as a whole: top-level [[fault]] tables.
HOST_FAULT_KINDS = frozenset(
    {
        "library_missing",  # nvmlInit answers LIBRARY_NOT_FOUND for `duration_s` (libnvidia-ml.so.1 absent)
        "driver_missing",  # nvmlInit answers DRIVER_NOT_LOADED for `duration_s` (kernel module not loaded)
        "driver_reload",  # the driver unloads: open sessions and handles die, nvmlInit answers DRIVER_NOT_LOADED
        # for `duration_s`, then the reloaded driver counts energy, volatile ECC, PCIe bytes from 0
        "init_hang",  # nvmlInit blocks `hang_s` wall seconds, for `duration_s`
    }
)


SERVER_FAULT_KINDS = frozenset(
    {
        "restart",  # the server restarts: its endpoint is down for `duration_s`, then its counters start at 0
        "down",  # connections are dropped without a response for `duration_s`
        "slow",  # each response waits `delay_s` wall seconds, for `duration_s`
        "garbage",  # responses are not an exposition, for `duration_s`
        "huge",  # responses are `size_mib` MiB long, for `duration_s`
    }
)
SERVER_KINDS = ("vllm",)


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names file, key and value."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault injected at simulated time ``at_s``."""

    kind: str
    at_s: float
    count: int = 1
    xid: int = 0
    duration_s: float = float("inf")
    hang_s: float = 5.0
    ratio: float = 1.0  # share of calls an unknown_error or not_supported fault fails
    link: int = 0  # the NVLink link an nvlink_errors fault strikes

    def active_at(self, t: float) -> bool:
        return self.at_s <= t < self.at_s + self.duration_s


@dataclass(frozen=True, slots=True)
class SimProcess:
    """A process the simulated driver lists on a GPU."""

    pid: int
    name: str
    used_memory_bytes: int


@dataclass(frozen=True, slots=True)
class ServerFault:
    """Something that goes wrong with a simulated inference server at simulated time ``at_s``."""

    kind: str
    at_s: float
    duration_s: float = float("inf")
    delay_s: float = 5.0
    size_mib: float = 100.0


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A simulated inference server: which GPUs it runs on and how fast it makes tokens there.

    Rates are at full clocks and full load; decode is memory-bound (it follows the memory clock
    more than the SM clock), prefill is compute-bound (it follows the SM clock).
    """

    name: str
    kind: str
    model: str
    gpus: tuple[int, ...]
    port: int
    decode_tokens_per_s: float
    prefill_tokens_per_s: float
    used_memory_bytes: int
    faults: tuple[ServerFault, ...] = ()


# What a GPU's (or MIG instance's) work is, for GPM's busyness (gpuwatch/sim/gpm.py): LLM decode is
# memory-bound, prefill and dense training compute-bound. Unset on a GPU: decode where a simulated
# server runs on it, else compute.
WORKLOADS = ("decode", "prefill", "compute")


@dataclass(frozen=True, slots=True)
class MigSpec:
    """One MIG instance (a GPU instance with one compute instance spanning it) and its work."""

    profile: str  # as nvidia-smi names it: 3g.71gb (gpuwatch/sim/mig.py lists each card's)
    load: float = 0.0
    workload: str = "compute"
    processes: tuple[SimProcess, ...] = ()
    compute_instances: tuple[int, ...] = ()  # the GI split into compute instances of these slices; () one over all


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One simulated GPU: its profile, its workload over time, its cooling and its faults."""

    profile: str
    load_steps: tuple[tuple[float, float], ...]  # (from simulated second, load 0..1)
    ambient_celsius: float
    ambient_rise_celsius_per_minute: float
    ambient_max_celsius: float
    thermal_resistance_c_per_w: float
    thermal_time_constant_s: float
    power_limit_w: float | None
    processes: tuple[SimProcess, ...]
    faults: tuple[Fault, ...]
    # Bursty work: on and off spells of these mean lengths (s); off spells run at `burst_low` x load.
    burst_on_s: float | None = None
    burst_off_s: float | None = None
    burst_low: float = 0.05
    # A host built from an nvidia-smi capture (gpuwatch.sim.smi_host) brings its own card and identity.
    device: DeviceProfile | None = None
    uuid: str | None = None
    serial: str | None = None
    pci_bus_id: str | None = None
    # GPM and MIG (issue 17): the work's kind (WORKLOADS; None: decide as WORKLOADS says) and, with
    # MIG enabled, its instances
    workload: str | None = None
    mig: tuple[MigSpec, ...] = ()

    @property
    def card(self) -> DeviceProfile:
        """The device profile this GPU simulates."""
        return self.device or PROFILES[self.profile]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A whole simulated host."""

    name: str
    description: str
    seed: int
    driver_version: str
    cuda_driver_version: int
    gpus: tuple[GpuSpec, ...]
    servers: tuple[ServerSpec, ...] = ()
    faults: tuple[Fault, ...] = ()  # of the driver as a whole (HOST_FAULT_KINDS)
    source: str = field(default="", compare=False)
    # What the scenario could not take from its source and filled in (a host built from a capture).
    fallbacks: tuple[str, ...] = field(default=(), compare=False)
    # Whether the simulated caller is root (or has CAP_SYS_ADMIN). false: an ordinary user, as the
    # real driver answers one: setting a power limit is NO_PERMISSION, and a MIG-enabled GPU's
    # parent-level memory and process queries answer NoPermission (shared/research/real-cards.md).
    privileged: bool = True

    @property
    def driver_branch(self) -> int:
        """The driver's branch number (550 for 550.127.05), which decides the entry points it has."""
        head = self.driver_version.split(".", 1)[0]
        return int(head) if head.isdigit() else 0


def builtin_names() -> list[str]:
    """Names of the scenarios shipped with gpuwatch."""
    folder = resources.files("gpuwatch.sim") / "scenarios"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load(name_or_path: str | None) -> Scenario:
    """Load a built-in scenario by name, or a scenario file by path: TOML, the text of
    ``nvidia-smi -q`` (a ``.txt`` file), which becomes a host of the captured cards
    (:mod:`gpuwatch.sim.smi_host`), or a `gpuwatch capture` (a ``.json`` file), replayed as a host
    (:mod:`gpuwatch.sim.capture_host`); what a capture lacked is logged."""
    name = name_or_path or DEFAULT_SCENARIO
    if name in builtin_names():
        res = resources.files("gpuwatch.sim") / "scenarios" / f"{name}.toml"
        return parse(res.read_text(encoding="utf-8"), source=f"built-in scenario {name!r}")
    path = Path(name)
    if not path.is_file():
        raise ScenarioError(
            f"scenario {name!r}: not a built-in name and no such file (built-in: {', '.join(builtin_names())})"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from exc
    from gpuwatch.sim import capture_host, smi, smi_host  # they build Scenarios, so they import this module

    if path.suffix.lower() == ".json" or capture_host.looks_like_capture(text):
        host = capture_host.build(text, source=str(path))
        for line in host.fallbacks:
            log.info("%s: %s", path, line)
        return host
    if path.suffix.lower() == ".txt" or smi.looks_like_smi(text):
        host = smi_host.build(text, source=str(path))
        for line in host.fallbacks:
            log.info("%s: %s", path, line)
        return host
    return parse(text, source=str(path))


def parse(text: str, source: str = "<string>") -> Scenario:
    """Parse scenario TOML; every error names ``source`` and the offending key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: invalid TOML: {exc}") from exc
    reader = _Reader(source)
    top = reader.table(
        doc,
        "",
        {"name", "description", "seed", "driver_version", "cuda_driver_version", "gpu", "server", "fault"}
        | {"privileged"},
    )
    gpus_raw = top.get("gpu", [])
    if not isinstance(gpus_raw, list) or not gpus_raw:
        raise ScenarioError(f"{source}: key 'gpu': at least one [[gpu]] table is required")
    gpus = tuple(reader.gpu(g, f"gpu[{i}]") for i, g in enumerate(gpus_raw))
    servers_raw = top.get("server", [])
    if not isinstance(servers_raw, list):
        raise ScenarioError(f"{source}: key 'server': expected [[server]] tables")
    servers = tuple(reader.server(s, f"server[{i}]", len(gpus)) for i, s in enumerate(servers_raw))
    if len({s.name for s in servers}) != len(servers):
        raise ScenarioError(f"{source}: key 'server': two servers share a name")
    return Scenario(
        name=reader.string(top, "name", "", default=Path(source).stem),
        description=reader.string(top, "description", "", default=""),
        seed=int(reader.number(top, "seed", "", default=0)),
        driver_version=reader.string(top, "driver_version", "", default="550.127.05"),
        cuda_driver_version=int(reader.number(top, "cuda_driver_version", "", default=12040)),
        gpus=gpus,
        servers=servers,
        faults=tuple(reader.fault(f, f"fault[{i}]", HOST_FAULT_KINDS) for i, f in enumerate(top.get("fault", []))),
        source=source,
        privileged=reader.boolean(top, "privileged", "", default=True),
    )


class _Reader:
    """Typed access to parsed TOML with errors that say where."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: key {key!r}: {message}")

    def table(self, value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where or "(top level)", f"expected a table, got {value!r}")
        for key in value:
            if key not in allowed:
                raise self.fail(_join(where, key), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def string(self, table: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
        value = table.get(key, default)
        if not isinstance(value, str):
            raise self.fail(_join(where, key), f"expected a string, got {value!r}")
        return value

    def boolean(self, table: dict[str, Any], key: str, where: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(_join(where, key), f"expected true or false, got {value!r}")
        return value

    def number(
        self,
        table: dict[str, Any],
        key: str,
        where: str,
        default: float | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(_join(where, key), f"expected a number, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(_join(where, key), f"{value!r} is below the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise self.fail(_join(where, key), f"{value!r} is above the maximum {maximum}")
        return float(value)

    def gpu(self, raw: Any, where: str) -> GpuSpec:
        allowed = {
            "profile",
            "load",
            "load_steps",
            "ambient_celsius",
            "ambient_rise_celsius_per_minute",
            "ambient_max_celsius",
            "thermal_resistance_c_per_w",
            "thermal_time_constant_s",
            "power_limit_w",
            "process",
            "fault",
            "burst_on_s",
            "burst_off_s",
            "burst_low",
        } | {"workload", "mig"}
        g = self.table(raw, where, allowed)
        profile_key = self.string(g, "profile", where, default="rtx-a6000")
        profile_key = ALIASES.get(profile_key, profile_key)
        if profile_key in REMOVED:
            raise self.fail(_join(where, "profile"), f"{profile_key!r} was removed: use {REMOVED[profile_key]}")
        if profile_key not in PROFILES:
            raise self.fail(_join(where, "profile"), f"{profile_key!r} is not a profile (known: {', '.join(PROFILES)})")
        profile = PROFILES[profile_key]
        steps: list[tuple[float, float]] = [(0.0, self.number(g, "load", where, default=0.0, minimum=0, maximum=1))]
        for i, step in enumerate(g.get("load_steps", [])):
            key = _join(where, f"load_steps[{i}]")
            if not (isinstance(step, list) and len(step) == 2):
                raise self.fail(key, f"expected [seconds, load], got {step!r}")
            at, level = step
            if not isinstance(at, int | float) or not isinstance(level, int | float) or not 0 <= level <= 1:
                raise self.fail(key, f"expected [seconds, load 0..1], got {step!r}")
            steps.append((float(at), float(level)))
        steps.sort(key=lambda s: s[0])
        ambient = self.number(g, "ambient_celsius", where, default=profile.ambient_celsius)
        power_limit = g.get("power_limit_w")
        if power_limit is not None:
            power_limit = self.number(
                g, "power_limit_w", where, minimum=profile.power_min_w, maximum=profile.power_max_w
            )
        return GpuSpec(
            profile=profile_key,
            load_steps=tuple(steps),
            ambient_celsius=ambient,
            ambient_rise_celsius_per_minute=self.number(
                g, "ambient_rise_celsius_per_minute", where, default=0.0, minimum=0
            ),
            ambient_max_celsius=self.number(g, "ambient_max_celsius", where, default=ambient, minimum=ambient),
            thermal_resistance_c_per_w=self.number(
                g,
                "thermal_resistance_c_per_w",
                where,
                default=profile.thermal_resistance_c_per_w,
                minimum=0.001,
            ),
            thermal_time_constant_s=self.number(
                g, "thermal_time_constant_s", where, default=profile.thermal_time_constant_s, minimum=1
            ),
            power_limit_w=power_limit,
            processes=tuple(self.process(p, _join(where, f"process[{i}]")) for i, p in enumerate(g.get("process", []))),
            faults=tuple(
                self.fault(f, _join(where, f"fault[{i}]"), FAULT_KINDS) for i, f in enumerate(g.get("fault", []))
            ),
            burst_on_s=self.number(g, "burst_on_s", where, minimum=0.25) if "burst_on_s" in g else None,
            burst_off_s=self.number(g, "burst_off_s", where, minimum=0.25) if "burst_off_s" in g else None,
            burst_low=self.number(g, "burst_low", where, default=0.05, minimum=0, maximum=1),
            workload=self.workload(g, where) if "workload" in g else None,
            mig=self.mig(g, where, profile),
        )

    def workload(self, table: dict[str, Any], where: str, default: str = "compute") -> str:
        kind = self.string(table, "workload", where, default=default)
        if kind not in WORKLOADS:
            raise self.fail(_join(where, "workload"), f"{kind!r} is not a workload (known: {', '.join(WORKLOADS)})")
        return kind

    def compute_instances(self, table: dict[str, Any], where: str, gi_slices: int) -> tuple[int, ...]:
        raw = table.get("compute_instances", [])
        key = _join(where, "compute_instances")
        if not isinstance(raw, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in raw):
            raise self.fail(key, f"expected a list of compute slice counts, e.g. [1, 2], got {raw!r}")
        if sum(raw) > gi_slices:
            raise self.fail(key, f"{raw!r} needs more than the GPU instance's {gi_slices} slices")
        return tuple(raw)

    def mig(self, g: dict[str, Any], where: str, card: DeviceProfile) -> tuple[MigSpec, ...]:
        """[[gpu.mig]] instances: each a profile this card offers, slices adding up to at most 7."""
        from gpuwatch.sim.mig import MIG_PROFILES

        raw = g.get("mig", [])
        if not isinstance(raw, list):
            raise self.fail(_join(where, "mig"), "expected [[gpu.mig]] tables")
        offered = MIG_PROFILES.get(card.key, {})
        out = []
        for i, m in enumerate(raw):
            at = _join(where, f"mig[{i}]")
            t = self.table(m, at, {"profile", "load", "workload", "process", "compute_instances"})
            profile = self.string(t, "profile", at)
            if profile not in offered:
                known = ", ".join(offered) or "none: the card has no MIG"
                raise self.fail(_join(at, "profile"), f"{profile!r} is not a MIG profile of {card.key} ({known})")
            out.append(
                MigSpec(
                    profile=profile,
                    load=self.number(t, "load", at, default=0.0, minimum=0, maximum=1),
                    workload=self.workload(t, at),
                    processes=tuple(
                        self.process(p, _join(at, f"process[{j}]")) for j, p in enumerate(t.get("process", []))
                    ),
                    compute_instances=self.compute_instances(t, at, offered[profile][0]),
                )
            )
        slices: int = sum(offered[m.profile][0] for m in out)  # (slices, memory, SMs, GI ids)
        if slices > 7:
            raise self.fail(_join(where, "mig"), "the instances need more than the card's 7 slices")
        return tuple(out)

    def server(self, raw: Any, where: str, gpu_count: int) -> ServerSpec:
        allowed = {
            "name",
            "kind",
            "model",
            "gpus",
            "port",
            "decode_tokens_per_s",
            "prefill_tokens_per_s",
            "used_memory_mib",
            "fault",
        }
        s = self.table(raw, where, allowed)
        kind = self.string(s, "kind", where, default="vllm")
        if kind not in SERVER_KINDS:
            raise self.fail(_join(where, "kind"), f"{kind!r} is not a server kind (known: {', '.join(SERVER_KINDS)})")
        gpus = s.get("gpus")
        if not (isinstance(gpus, list) and gpus and all(isinstance(i, int) and 0 <= i < gpu_count for i in gpus)):
            raise self.fail(_join(where, "gpus"), f"expected a list of GPU indices below {gpu_count}, got {gpus!r}")
        return ServerSpec(
            name=self.string(s, "name", where, default=kind),
            kind=kind,
            model=self.string(s, "model", where, default="meta-llama/Llama-3.1-8B-Instruct"),
            gpus=tuple(sorted(set(gpus))),
            port=int(self.number(s, "port", where, default=0, minimum=0, maximum=65535)),
            decode_tokens_per_s=self.number(s, "decode_tokens_per_s", where, default=1400.0, minimum=0),
            prefill_tokens_per_s=self.number(s, "prefill_tokens_per_s", where, default=2000.0, minimum=0),
            used_memory_bytes=int(self.number(s, "used_memory_mib", where, default=40000, minimum=0) * MIB),
            faults=tuple(self.server_fault(f, _join(where, f"fault[{i}]")) for i, f in enumerate(s.get("fault", []))),
        )

    def server_fault(self, raw: Any, where: str) -> ServerFault:
        f = self.table(raw, where, {"kind", "at_s", "duration_s", "delay_s", "size_mib"})
        kind = self.string(f, "kind", where)
        if kind not in SERVER_FAULT_KINDS:
            known = ", ".join(sorted(SERVER_FAULT_KINDS))
            raise self.fail(_join(where, "kind"), f"{kind!r} is not a server fault (known: {known})")
        default_duration = 2.0 if kind == "restart" else float("inf")
        return ServerFault(
            kind=kind,
            at_s=self.number(f, "at_s", where, default=0.0, minimum=0),
            duration_s=self.number(f, "duration_s", where, default=default_duration, minimum=0),
            delay_s=self.number(f, "delay_s", where, default=5.0, minimum=0),
            size_mib=self.number(f, "size_mib", where, default=100.0, minimum=0),
        )

    def process(self, raw: Any, where: str) -> SimProcess:
        p = self.table(raw, where, {"pid", "name", "used_memory_mib"})
        return SimProcess(
            pid=int(self.number(p, "pid", where, minimum=1)),
            name=self.string(p, "name", where, default="python3"),
            used_memory_bytes=int(self.number(p, "used_memory_mib", where, default=0, minimum=0) * MIB),
        )

    def fault(self, raw: Any, where: str, kinds: frozenset[str]) -> Fault:
        f = self.table(raw, where, {"kind", "at_s", "count", "xid", "duration_s", "hang_s", "ratio", "link"})
        kind = self.string(f, "kind", where)
        if kind not in kinds:
            raise self.fail(_join(where, "kind"), f"{kind!r} is not a fault (known: {', '.join(sorted(kinds))})")
        if kind == "xid" and "xid" not in f:
            raise self.fail(_join(where, "xid"), "an xid fault needs its code, e.g. xid = 48")
        if kind == "xid" and f["xid"] == 79:
            # DCGM issue 162, shared/research/real-cards.md: the driver logs Xid 79 to the kernel log;
            # NVML shows the GPU as lost and delivers no event.
            raise self.fail(_join(where, "xid"), 'NVML never delivers Xid 79 as an event: use kind = "fall_off_bus"')
        return Fault(
            kind=kind,
            at_s=self.number(f, "at_s", where, default=0.0, minimum=0),
            count=int(self.number(f, "count", where, default=1, minimum=1)),
            xid=int(self.number(f, "xid", where, default=0, minimum=0)),
            duration_s=self.number(f, "duration_s", where, default=float("inf"), minimum=0),
            hang_s=self.number(f, "hang_s", where, default=5.0, minimum=0),
            ratio=self.number(f, "ratio", where, default=1.0, minimum=0, maximum=1),
            link=int(self.number(f, "link", where, default=0, minimum=0, maximum=17)),
        )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
