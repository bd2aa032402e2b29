"""Properties that must hold for every input, checked with hypothesis: the config loader, the
throttle window and classes, the health verdicts, reset-safe counters and backoff."""

from __future__ import annotations

import math
import tomllib
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gpuwatch import config
from gpuwatch.analysis.backoff import Backoff
from gpuwatch.analysis.counters import ResetSafeCounter
from gpuwatch.analysis.health import (
    STATES,
    GpuFacts,
    HealthThresholds,
    Verdict,
    VerdictCache,
    gpu_verdict,
    host_verdict,
    worst,
)
from gpuwatch.analysis.throttle import CLASSES, ThrottleSample, ThrottleSummary, ThrottleWindow, classify
from gpuwatch.labels import CLOCK_EVENT_REASONS

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
PROPERTIES = settings(
    deadline=None,
    max_examples=150,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# -- the config loader ------------------------------------------------------------------------------

KEYS = sorted(config._KEYS)

_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1s", "500ms", "2m", "1m30s", "0s", "10h", "soon", "info", "debug", ":9961", "[::1]:1", "x:y"]),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=4))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _toml_char(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    return f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c


def _toml(doc: dict[str, Any]) -> str:
    """Dotted keys as TOML writes them: top-level ones first, then one table per prefix."""
    tables: dict[str, list[str]] = {}
    for key, value in doc.items():
        table, _, name = key.rpartition(".")
        tables.setdefault(table, []).append(f"{name} = {_toml_value(value)}")
    lines = tables.pop("", [])
    for table, body in tables.items():
        lines += [f"[{table}]", *body]
    return "\n".join(lines) + "\n"


def _one_toml_document(doc: dict[str, Any]) -> bool:
    """No key is also another's table (`collectors.processes` and `collectors.processes.pid`): TOML
    cannot write both, so such a pair is no file a user could have written."""
    return not any(other.startswith(key + ".") for key in doc for other in doc)


_documents = st.dictionaries(
    st.one_of(st.sampled_from(KEYS), st.sampled_from(["web.listen_adress", "pol_interval", "health.windo"])),
    _values,
    max_size=6,
).filter(_one_toml_document)


@PROPERTIES
@given(doc=_documents)
def test_any_config_file_loads_or_fails_with_one_line_naming_the_file_and_the_key(tmp_path, doc):
    path = tmp_path / "gpuwatch.toml"
    path.write_text(_toml(doc))
    try:
        values = config.load_file(path)
    except config.ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(f"config file {path}: ")
        assert any(repr(key) in message for key in doc), message
        return
    settings_ = config.build(values, {})
    assert 0.01 <= settings_.poll_interval_s <= 3600 and 0.1 <= settings_.process_interval_s <= 86400
    assert 1 <= settings_.max_requests <= 1024 and isinstance(settings_.max_requests, int)
    assert 0.1 <= settings_.read_timeout_s <= 300 and 0 < settings_.sim_speed <= 1e6
    assert settings_.log_level in config.LOG_LEVELS
    assert 0 < settings_.health.sustained_ratio <= 1 and settings_.health.window_seconds >= 1


_environments = st.dictionaries(
    st.one_of(st.sampled_from([config.env_name(k) for k in KEYS]), st.just("GPUWATCH_NOPE")),
    st.text(max_size=10),
    max_size=4,
)


@PROPERTIES
@given(environ=_environments)
def test_any_environment_loads_or_fails_with_one_line_naming_the_variable(environ):
    try:
        config.load_env(environ)
    except config.ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith("environment variable GPUWATCH_")
        assert any(name in message for name in environ)


_units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@PROPERTIES
@given(parts=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(_units))), min_size=1, max_size=4))
def test_a_duration_is_the_sum_of_its_parts(parts):
    text = "".join(f"{n}{unit}" for n, unit in parts)
    seconds = sum(n * _units[unit] for n, unit in parts)
    if seconds <= 0:
        with pytest.raises(ValueError):
            config.parse_duration(text)
    else:
        assert config.parse_duration(text) == pytest.approx(seconds)


# -- throttle classes and the window ----------------------------------------------------------------

_REASONS = [*CLOCK_EVENT_REASONS, "other"]
_samples = st.builds(
    lambda reasons, busy, ratio: (frozenset(reasons), busy, ratio),
    st.sets(st.sampled_from(_REASONS)),
    st.booleans(),
    st.one_of(st.none(), st.floats(0, 1.2)),
)


@PROPERTIES
@given(sample=_samples, extra=st.sampled_from(_REASONS))
def test_a_poll_has_one_class_and_a_graver_reason_never_makes_it_milder(sample, extra):
    reasons, busy, ratio = sample
    precedence = ("power_brake", "thermal", "hw_slowdown", "power_cap", "clocks_setting", "idle", "unknown", "none")
    before = classify(ThrottleSample(0.0, reasons, busy, ratio))
    after = classify(ThrottleSample(0.0, reasons | {extra}, busy, ratio))
    assert before in CLASSES and after in CLASSES
    assert precedence.index(after) <= precedence.index(before)
    assert (before == "power_brake") == ("hw_power_brake" in reasons)


def _naive_summary(polls: list[tuple[float, str]], length_s: float, max_gap_s: float) -> dict[str, float]:
    """The window's time in each class, from scratch: each poll covers the time since the one before."""
    time_in = dict.fromkeys(CLASSES, 0.0)
    end = polls[-1][0]
    start = end - length_s
    for i, (timestamp, cls) in enumerate(polls):
        span = 0.0 if i == 0 else min(max(0.0, timestamp - polls[i - 1][0]), max_gap_s)
        time_in[cls] += max(0.0, timestamp - max(timestamp - span, start))
    return time_in


@PROPERTIES
@given(
    steps=st.lists(st.tuples(st.floats(0, 20), _samples), min_size=1, max_size=60),
    length_s=st.floats(1, 120),
    max_gap_s=st.floats(0.5, 10),
)
def test_the_window_matches_a_recount_from_scratch(steps, length_s, max_gap_s):
    window = ThrottleWindow(length_seconds=length_s, max_gap_seconds=max_gap_s)
    polls = []
    t = 1000.0
    for gap, (reasons, busy, ratio) in steps:
        t += gap
        sample = ThrottleSample(t, reasons, busy, ratio)
        window.add(sample)
        polls.append((t, classify(sample)))
    summary: ThrottleSummary = window.summary()
    expected = _naive_summary(polls, length_s, max_gap_s)
    covered = sum(expected.values())
    assert summary.window_seconds == pytest.approx(covered, abs=1e-6)
    assert summary.window_seconds <= length_s + 1e-6
    assert all(0 <= r <= 1 + 1e-9 for r in summary.ratios.values())
    assert sum(summary.ratios.values()) == pytest.approx(1.0)
    if covered > 1e-6:
        for cls in CLASSES:
            assert summary.ratios[cls] == pytest.approx(expected[cls] / covered, abs=1e-6)
    assert summary.dominant is not None and summary.ratios[summary.dominant] == max(summary.ratios.values())


# -- health verdicts ---------------------------------------------------------------------------------

_ratios = st.fixed_dictionaries({cls: st.floats(0, 1) for cls in CLASSES})
_facts = st.builds(
    GpuFacts,
    index=st.integers(0, 7),
    up=st.booleans(),
    error=st.one_of(st.none(), st.text(max_size=8)),
    stale_seconds=st.one_of(st.none(), st.floats(0, 1e4)),
    temperature_celsius=st.one_of(st.none(), st.floats(-20, 130)),
    margin_celsius=st.one_of(st.none(), st.floats(-30, 60)),
    thresholds_celsius=st.one_of(
        st.just({}),
        st.builds(lambda m, s: {"max_operating": m, "slowdown": m + s}, st.floats(60, 100), st.floats(0, 10)),
    ),
    throttle=st.one_of(
        st.none(),
        st.builds(
            lambda ratios, loss: ThrottleSummary(60.0, ratios, max(ratios, key=ratios.__getitem__), loss),
            _ratios,
            st.one_of(st.none(), st.floats(0, 1)),
        ),
    ),
    uncorrected_volatile_ecc=st.one_of(st.none(), st.integers(0, 5)),
    row_remap_pending=st.one_of(st.none(), st.booleans()),
    row_remap_failure=st.one_of(st.none(), st.booleans()),
    retired_pages_pending=st.one_of(st.none(), st.booleans()),
    recent_xids=st.lists(st.tuples(st.floats(0, 10_000), st.sampled_from([13, 31, 48, 63, 79, 119])), max_size=4),
    now=st.just(10_000.0),
)


@PROPERTIES
@given(facts=_facts)
def test_a_verdict_is_its_worst_check_and_always_says_why_when_not_ok(facts):
    verdict = gpu_verdict(facts, HealthThresholds())
    assert verdict.state in STATES and verdict.state == worst(verdict.checks.values())
    if verdict.state != "ok":
        assert verdict.reasons
    assert all(reason.startswith(f"GPU {facts.index}: ") for reason in verdict.reasons)
    if not facts.up:
        assert set(verdict.checks) == {"up", "xid"}
        hung_briefly = facts.stale_seconds is not None and facts.stale_seconds < HealthThresholds().window_seconds
        assert verdict.checks["up"] == ("warning" if hung_briefly else "critical")


@PROPERTIES
@given(facts=_facts, xid=st.sampled_from(HealthThresholds().critical_xids))
def test_a_recent_critical_xid_makes_any_gpu_critical(facts, xid):
    recent = replace(facts, recent_xids=[*facts.recent_xids, (facts.now - 1, xid)])
    assert gpu_verdict(recent, HealthThresholds()).state == "critical"


_one_change = st.one_of(  # one fact of a GPU moving, from a few values around the thresholds
    st.tuples(st.just("temperature_celsius"), st.sampled_from([None, 70.0, 93.0, 96.0])),
    st.tuples(st.just("margin_celsius"), st.sampled_from([None, 10.0, 0.0, -3.0])),
    st.tuples(st.just("uncorrected_volatile_ecc"), st.sampled_from([None, 0, 1, 2])),
    st.tuples(st.just("row_remap_pending"), st.sampled_from([None, False, True])),
    st.tuples(st.just("row_remap_failure"), st.sampled_from([None, False, True])),
    st.tuples(st.just("retired_pages_pending"), st.sampled_from([None, False, True])),
    st.tuples(st.just("up"), st.booleans()),
    st.tuples(st.just("index"), st.sampled_from([0, 1])),
    st.tuples(st.just("now"), st.floats(0, 2e4)),
    st.tuples(st.just("recent_xids"), st.sampled_from([(), ((9000.0, 79),), ((9000.0, 63),)])),
    st.tuples(st.just("clock_loss"), st.floats(0, 1)),
    st.tuples(st.just("ratios"), st.sampled_from(["power_cap", "thermal", "unknown", "mixed", "part_capped"])),
)


def _with(facts: GpuFacts, change: tuple[str, Any]) -> GpuFacts:
    name, value = change
    throttle = facts.throttle or ThrottleSummary(60.0, dict.fromkeys(CLASSES, 0.0) | {"none": 1.0}, "none", None)
    if name == "clock_loss":
        return replace(facts, throttle=replace(throttle, clock_loss_ratio=value))
    if name == "ratios":
        ratios = dict.fromkeys(CLASSES, 0.0)
        if value == "mixed":
            ratios |= {"power_cap": 0.5, "unknown": 0.3, "none": 0.2}
        elif value == "part_capped":  # the same dominant class as "power_cap", a different share
            ratios |= {"power_cap": 0.6, "none": 0.4}
        else:
            ratios[value] = 1.0
        return replace(facts, throttle=replace(throttle, ratios=ratios, dominant=max(ratios, key=ratios.__getitem__)))
    return replace(facts, **{name: value})


@settings(PROPERTIES, max_examples=400)
@given(start=_facts, changes=st.lists(_one_change, max_size=40), strict=st.booleans())
@example(  # the power-capped share alone moves: only the reason's percentage differs
    start=GpuFacts(index=0, up=True, temperature_celsius=60.0),
    changes=[("ratios", "power_cap"), ("ratios", "part_capped")],
    strict=False,
)
def test_a_remembered_verdict_is_always_the_one_judged_anew(start, changes, strict):
    """The sampler's per-GPU VerdictCache against gpu_verdict, over runs where one fact moves at a
    time (as on a GPU, poll after poll), some of which it may look past."""
    limits = HealthThresholds(unexplained_clock_ratio=0.2 if strict else 0.5)
    cache = VerdictCache()
    facts = replace(start, up=True, recent_xids=(), thresholds_celsius={"max_operating": 93.0, "slowdown": 95.0})
    assert cache.judge(facts, limits) == gpu_verdict(facts, limits)
    for change in changes:
        facts = _with(facts, change)
        assert cache.judge(facts, limits) == gpu_verdict(facts, limits)


_verdicts = st.builds(lambda state: Verdict(state, (f"{state} reason",), {}), st.sampled_from(STATES))


@PROPERTIES
@given(nvml_up=st.booleans(), gpus=st.lists(_verdicts, max_size=8))
def test_the_host_is_its_worst_gpu_or_unknown_without_nvml_or_gpus(nvml_up, gpus):
    verdict = host_verdict(nvml_up, None if nvml_up else "DriverNotLoaded", gpus)
    if not nvml_up or not gpus:
        assert verdict.state == "unknown" and verdict.reasons
    else:
        assert verdict.state == worst(g.state for g in gpus)


# -- counters and backoff ----------------------------------------------------------------------------


@PROPERTIES
@given(raws=st.lists(st.floats(0, 1e12), min_size=1, max_size=50))
def test_a_reset_safe_counter_never_goes_down(raws):
    counter = ResetSafeCounter(raws[0])
    totals = [counter.total]
    for raw in raws[1:]:
        counter = counter.advance(raw)
        totals.append(counter.total)
    assert totals == sorted(totals) and totals[-1] >= raws[-1]
    if raws == sorted(raws):
        assert totals[-1] == raws[-1]  # no reset, nothing added


@PROPERTIES
@given(lateness=st.lists(st.floats(0, 100), min_size=1, max_size=12))
def test_backoff_doubles_to_its_cap_whenever_the_retries_come(lateness):
    backoff, now, waits = Backoff(), 0.0, []
    for late in lateness:
        assume(backoff.due(now))
        backoff = backoff.failed(now)
        waits.append(backoff.next_at - now)
        now = backoff.next_at + late
    assert waits == pytest.approx([min(2.0**i, 60.0) for i in range(len(waits))])


def test_the_generated_toml_reads_back():  # the config property is only as good as its TOML writer
    doc = {"poll_interval": "1s", "web.max_requests": 3, "health.critical_xids": [48, 79], "log.level": 'a\n"b'}
    assert tomllib.loads(_toml(doc)) == {
        "poll_interval": "1s",
        "web": {"max_requests": 3},
        "health": {"critical_xids": [48, 79]},
        "log": {"level": 'a\n"b'},
    }
