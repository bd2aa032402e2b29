"""Health verdicts for inference hosts: one per GPU, one for the host, with reasons a person reads.

States, from best to worst: ``ok``, ``unknown``, ``warning``, ``critical`` (the host takes the
worst of its GPUs; Nagios exit codes 0, 3, 1, 2). Each rule below is one *check*; a check that
does not apply to a GPU (ECC on a GeForce card) is left out rather than passed or failed.

* ``up``: a GPU that stopped answering is critical. One whose NVML call hangs (its last values
  shown, stale) is a warning, and critical once it has hung for a whole window.
* ``temperature``: at or above the card's max-operating threshold is a warning, at or above its
  slowdown threshold critical. Parts that report only a margin (Ada and later: T.Limit, where 0 is
  the max-operating point and the slowdown point is below it) use ``margin_warning_celsius`` and
  ``margin_critical_celsius`` instead. No temperature at all is unknown.
* ``thermal``: any thermal slowdown in the window is a warning; ``sustained_ratio`` of it or more
  is critical.
* ``power_brake``: the same, for HW power brake.
* ``hw_slowdown``: HW slowdown that neither heat nor a power brake explains is a warning, and
  critical from ``hw_slowdown_critical_ratio`` of the window (the bit can blip on P-state changes).
* ``power_cap``: always ok; said plainly, because sitting at the cap under load is normal.
* ``clocks``: busy with clocks low and no reason for ``unexplained_clock_ratio`` of the window is a
  warning.
* ``ecc``: volatile uncorrectable errors are critical.
* ``row_remap``: a remap failure is critical; a pending remap is a warning (reset required).
* ``retired_pages``: pending retirement is a warning (reset required).
* ``xid``: a critical XID within ``xid_window_seconds`` is critical, a warning XID a warning; the
  reason says what NVIDIA's Xid catalogue recommends (:mod:`gpuwatch.analysis.xid_catalogue`).
* ``recovery_action``: the driver's own recovery action (R570+): ``none`` is ok, ``drain_p2p`` a
  warning, any other (a reset, a reboot) critical. Absent where the driver does not report it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gpuwatch.analysis.xid_catalogue import recommended_action
from gpuwatch.labels import HEALTH_STATES
from gpuwatch.records import ThrottleSummary, Verdict, record

STATES = HEALTH_STATES
_SEVERITY = {"ok": 0, "unknown": 1, "warning": 2, "critical": 3}

# Xids that mean the GPU or its memory is in trouble (NVIDIA's Xid catalogue): 48 DBE, 62 internal
# micro-controller halt, 64 row-remapper/page-retirement failure, 74 NVLink, 79 fallen off the bus,
# 92 high SBE rate, 94/95 contained/uncontained ECC, 119/120 GSP RPC timeout / GSP error.
DEFAULT_CRITICAL_XIDS = (48, 62, 64, 74, 79, 92, 94, 95, 119, 120)
# 63: a page retirement or row remap was recorded; the GPU wants a reset when convenient.
DEFAULT_WARNING_XIDS = (63,)


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """Every threshold of the rules above; each is a key under ``[health]`` in the config file."""

    window_seconds: float = 60.0
    sustained_ratio: float = 0.5
    hw_slowdown_critical_ratio: float = 0.1
    unexplained_clock_ratio: float = 0.5
    margin_warning_celsius: float = 0.0
    margin_critical_celsius: float = -2.0
    critical_xids: tuple[int, ...] = DEFAULT_CRITICAL_XIDS
    warning_xids: tuple[int, ...] = DEFAULT_WARNING_XIDS
    xid_window_seconds: float = 3600.0


@record
class GpuFacts:
    """What the rules look at for one GPU (built from a poll by the sampler)."""

    index: int
    up: bool
    error: str | None = None
    stale_seconds: float | None = None  # not up because a read hangs: how long it has hung
    temperature_celsius: float | None = None
    margin_celsius: float | None = None
    thresholds_celsius: Mapping[str, float] = field(default_factory=dict)
    throttle: ThrottleSummary | None = None
    uncorrected_volatile_ecc: int | None = None
    row_remap_pending: bool | None = None
    row_remap_failure: bool | None = None
    retired_pages_pending: bool | None = None
    recent_xids: Sequence[tuple[float, int]] = ()  # (timestamp, xid)
    now: float = 0.0
    recovery_action: str | None = None  # the driver's (labels.RECOVERY_ACTIONS); None: not reported


def worst(states: Iterable[str]) -> str:
    """The most severe of ``states`` (``ok`` for none)."""
    return max(states, key=_SEVERITY.__getitem__, default="ok")


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.0f}%"


def gpu_verdict(facts: GpuFacts, limits: HealthThresholds) -> Verdict:
    """Apply every check to one GPU."""
    name = f"GPU {facts.index}"

    if not facts.up:
        if facts.stale_seconds is not None:
            # A call that hangs says something is wrong, not yet that the GPU is gone; one that
            # has hung for a whole health window says the GPU is wedged.
            up_state = "critical" if facts.stale_seconds >= limits.window_seconds else "warning"
            reason = f"{name}: NVML call not returning for {facts.stale_seconds:.0f} s; showing its last values"
        else:
            up_state = "critical"
            reason = f"{name}: not answering ({facts.error})" if facts.error else f"{name}: not answering"
        _, xid_state, xid_reason = _xids(facts, limits, name)
        reasons: tuple[str, ...] = (reason, xid_reason) if xid_reason else (reason,)
        if _SEVERITY[xid_state] > _SEVERITY[up_state]:
            reasons = reasons[::-1]  # worst first
        return Verdict(worst((up_state, xid_state)), reasons, {"up": up_state, "xid": xid_state})
    # Each check's state, in check order; and (state, reason) for the checks that are not ok. A
    # reason is only written for a check that is not ok (or for power_cap), since only those show.
    checks = {"up": "ok"}
    bad: list[tuple[str, str]] = []
    check, state, reason = _temperature(facts, limits, name)
    if state:  # absent where the GPU reports a temperature but no limit to compare it with
        checks[check] = state
        if state != "ok":
            bad.append((state, reason))
    cap_reason = ""
    throttle = facts.throttle
    if throttle is not None and throttle.dominant is not None:
        ratios = throttle.ratios
        window = f"of the last {limits.window_seconds:.0f} s"
        for check, label in (("thermal", "thermal slowdown"), ("power_brake", "HW power brake")):
            ratio = ratios[check]
            state = "ok" if ratio == 0 else "critical" if ratio >= limits.sustained_ratio else "warning"
            checks[check] = state
            if state != "ok":
                bad.append((state, f"{name}: {label} {_pct(ratio)} {window}"))
        ratio = ratios["hw_slowdown"]
        state = "ok" if ratio == 0 else "critical" if ratio >= limits.hw_slowdown_critical_ratio else "warning"
        checks["hw_slowdown"] = state
        if state != "ok":
            bad.append((state, f"{name}: HW slowdown without heat or power brake {_pct(ratio)} {window}"))
        cap = ratios["power_cap"]
        checks["power_cap"] = "ok"
        if cap:
            cap_reason = f"{name}: power-capped {_pct(cap)} {window}, normal under load"
        ratio = ratios["unknown"]
        state = "warning" if ratio >= limits.unexplained_clock_ratio else "ok"
        checks["clocks"] = state
        if state != "ok":
            loss = throttle.clock_loss_ratio or 0.0
            reason = f"{name}: clocks {_pct(loss)} below max while busy, with no reason, {_pct(ratio)} {window}"
            bad.append((state, reason))
    if facts.uncorrected_volatile_ecc is not None:
        n = facts.uncorrected_volatile_ecc
        checks["ecc"] = "critical" if n else "ok"
        if n:
            bad.append(("critical", f"{name}: {n} uncorrectable ECC error(s) since driver load"))
    if facts.row_remap_failure is not None or facts.row_remap_pending is not None:
        if facts.row_remap_failure:
            checks["row_remap"] = "critical"
            bad.append(("critical", f"{name}: row remapping failed, no spare rows left (RMA)"))
        elif facts.row_remap_pending:
            checks["row_remap"] = "warning"
            bad.append(("warning", f"{name}: row remap pending, reset required"))
        else:
            checks["row_remap"] = "ok"
    if facts.retired_pages_pending is not None:
        checks["retired_pages"] = "warning" if facts.retired_pages_pending else "ok"
        if facts.retired_pages_pending:
            bad.append(("warning", f"{name}: page retirement pending, reset required"))
    check, state, reason = _xids(facts, limits, name)
    checks[check] = state
    if state != "ok":
        bad.append((state, reason))
    check, state, reason = _recovery_action(facts, name)
    if state:  # absent where the driver does not report a recovery action
        checks[check] = state
        if state != "ok":
            bad.append((state, reason))

    if not bad:
        return Verdict("ok", (cap_reason,) if cap_reason else (), checks)
    bad.sort(key=lambda finding: -_SEVERITY[finding[0]])  # worst first; stable, so check order within
    return Verdict(bad[0][0], tuple(reason for _, reason in bad), checks)


class VerdictCache:
    """:func:`gpu_verdict` for one GPU, remembering the last: the same inputs give the same verdict.

    Under steady load nothing a verdict reads changes from one poll to the next (the same whole-
    degree temperature, the same throttle shares, no errors). What counts as the same: every fact
    a check reads, except that the clock loss counts only while some of the window is unexplained
    (the only time a reason shows it). A GPU that is down, or has had a recent Xid, whose verdict
    depends on the time, is judged anew every time.
    """

    __slots__ = ("_inputs", "_verdict")

    def __init__(self) -> None:
        self._inputs: tuple[object, ...] | None = None
        self._verdict: Verdict | None = None

    def judge(self, facts: GpuFacts, limits: HealthThresholds) -> Verdict:
        if not facts.up or facts.recent_xids:
            return gpu_verdict(facts, limits)
        throttle = facts.throttle
        window = (
            None
            if throttle is None
            else (
                throttle.ratios,  # never changed once summarised; a steady window shares one dict
                throttle.dominant,
                throttle.clock_loss_ratio if throttle.ratios.get("unknown") else None,
            )
        )
        inputs = (
            limits,
            facts.index,
            facts.temperature_celsius,
            facts.margin_celsius,
            facts.thresholds_celsius,
            window,
            facts.uncorrected_volatile_ecc,
            facts.row_remap_pending,
            facts.row_remap_failure,
            facts.retired_pages_pending,
            facts.recovery_action,
        )
        if self._verdict is None or inputs != self._inputs:
            self._inputs, self._verdict = inputs, gpu_verdict(facts, limits)
        return self._verdict


def _temperature(facts: GpuFacts, limits: HealthThresholds, name: str) -> tuple[str, str, str]:
    t, th = facts.temperature_celsius, facts.thresholds_celsius
    if t is not None and "max_operating" in th:
        slowdown = th.get("slowdown")
        if slowdown is not None and t >= slowdown:
            return "temperature", "critical", f"{name}: {t:.0f} °C ≥ {slowdown:.0f} °C slowdown"
        if t >= th["max_operating"]:
            return "temperature", "warning", f"{name}: {t:.0f} °C ≥ {th['max_operating']:.0f} °C max operating"
        return "temperature", "ok", ""
    margin = facts.margin_celsius
    if margin is not None:
        if margin <= limits.margin_critical_celsius:
            return "temperature", "critical", f"{name}: {round(margin)} °C margin, past the slowdown point"
        if margin <= limits.margin_warning_celsius:
            return "temperature", "warning", f"{name}: {round(margin)} °C margin, at the max-operating point"
        return "temperature", "ok", ""
    if t is not None:
        # A temperature and no limit: an Ada or Hopper card on a driver before R570 (T.Limit offsets,
        # no margin query). The driver's own thermal slowdown still shows in the throttle checks.
        return "temperature", "", ""
    return "temperature", "unknown", f"{name}: temperature not reported"


def _xids(facts: GpuFacts, limits: HealthThresholds, name: str) -> tuple[str, str, str]:
    if not facts.recent_xids:
        return "xid", "ok", ""
    recent = [x for ts, x in facts.recent_xids if facts.now - ts <= limits.xid_window_seconds]
    critical = sorted({x for x in recent if x in limits.critical_xids})
    if critical:
        return (
            "xid",
            "critical",
            f"{name}: critical Xid {', '.join(map(str, critical))} in the last {limits.xid_window_seconds / 60:.0f} min"
            f" ({_advice(critical)})",
        )
    warning = sorted({x for x in recent if x in limits.warning_xids})
    if warning:
        return "xid", "warning", f"{name}: Xid {', '.join(map(str, warning))} ({_advice(warning)})"
    return "xid", "ok", ""


def _advice(xids: Sequence[int]) -> str:
    """The catalogue's recommended actions for ``xids``, each once, in Xid order."""
    return "; ".join(dict.fromkeys(recommended_action(x) for x in xids))


# What the driver's recovery action asks, in words; drain_p2p alone leaves the GPU serving.
_RECOVERY_ASKS = {
    "reset": "a reset",
    "reboot": "a node reboot",
    "drain_p2p": "peer-to-peer traffic drained",
    "drain_and_reset": "a drain and a reset",
    "recover_imex_domain": "its IMEX domain recovered",
    "bus_reset": "a bus reset",
    "system_reboot": "a system reboot",
}


def _recovery_action(facts: GpuFacts, name: str) -> tuple[str, str, str]:
    action = facts.recovery_action
    if action is None:
        return "recovery_action", "", ""
    if action == "none":
        return "recovery_action", "ok", ""
    asks = _RECOVERY_ASKS.get(action)
    if asks is None:
        return "recovery_action", "warning", f"{name}: driver asks for a recovery action gpuwatch does not know"
    state = "warning" if action == "drain_p2p" else "critical"
    return "recovery_action", state, f"{name}: driver asks for {asks}"


def host_verdict(nvml_up: bool, nvml_error: str | None, gpus: Sequence[Verdict]) -> Verdict:
    """The host: unknown when NVML is down or there are no GPUs, else the worst GPU."""
    if not nvml_up:
        return Verdict("unknown", (f"NVML unavailable: {nvml_error}",), {})
    if not gpus:
        return Verdict("unknown", ("no GPUs found",), {})
    state = worst(v.state for v in gpus)
    reasons = tuple(r for v in sorted(gpus, key=lambda v: -_SEVERITY[v.state]) for r in v.reasons if v.state != "ok")
    if not reasons:
        reasons = (f"{len(gpus)} GPU(s) ok",)
    return Verdict(state, reasons, {})
