"""Throttle classification: precedence, window boundaries, clock loss, per-reason time."""

from __future__ import annotations

import pytest

from gpuwatch.analysis.throttle import ThrottleSample, ThrottleWindow, accumulate_reason_seconds, classify


def sample(t: float, *reasons: str, busy: bool = True, ratio: float | None = 1.0) -> ThrottleSample:
    return ThrottleSample(timestamp=t, reasons=frozenset(reasons), busy=busy, sm_clock_ratio=ratio)


@pytest.mark.parametrize(
    ("reasons", "busy", "ratio", "expected"),
    [
        ((), True, 1.0, "none"),
        ((), True, 0.95, "none"),
        ((), True, 0.5, "unknown"),  # busy, clocks low, no reason
        ((), True, None, "none"),  # no clock reading: cannot call it unexplained
        ((), False, 0.1, "idle"),
        (("idle",), True, 0.1, "idle"),
        (("sw_power_cap",), True, 0.9, "power_cap"),
        (("sw_thermal",), True, 0.8, "thermal"),
        (("hw_thermal", "hw_slowdown"), True, 0.4, "thermal"),  # HW thermal sets both bits
        (("hw_slowdown",), True, 0.5, "hw_slowdown"),  # unexplained HW slowdown
        (("hw_power_brake", "hw_slowdown"), True, 0.5, "power_brake"),
        (("hw_power_brake", "sw_thermal", "sw_power_cap"), True, 0.4, "power_brake"),  # brake first
        (("sw_thermal", "sw_power_cap"), True, 0.8, "thermal"),  # thermal over power cap
        (("sw_power_cap", "applications_clocks"), True, 0.8, "power_cap"),
        (("sync_boost",), True, 0.8, "clocks_setting"),
        (("display_clocks",), True, 0.8, "clocks_setting"),
        (("idle", "sw_power_cap"), True, 0.8, "power_cap"),
        (("other",), True, 1.0, "none"),  # an unknown bit alone changes nothing
    ],
)
def test_precedence(reasons, busy, ratio, expected):
    assert classify(sample(0, *reasons, busy=busy, ratio=ratio)) == expected


def fill(window: ThrottleWindow, spec: list[tuple[float, tuple[str, ...]]]) -> None:
    for t, reasons in spec:
        window.add(sample(t, *reasons, ratio=0.9 if reasons else 1.0))


def test_fractions_are_time_weighted():
    w = ThrottleWindow(length_seconds=60, max_gap_seconds=60)
    fill(w, [(0, ()), (10, ("sw_power_cap",)), (40, ("sw_thermal",)), (50, ())])
    s = w.summary()
    assert s.window_seconds == 50
    assert s.ratios["power_cap"] == pytest.approx(10 / 50)
    assert s.ratios["thermal"] == pytest.approx(30 / 50)
    assert s.ratios["none"] == pytest.approx(10 / 50)
    assert s.dominant == "thermal"


def test_window_boundary_clips_the_straddling_poll():
    w = ThrottleWindow(length_seconds=60, max_gap_seconds=100)
    fill(w, [(0, ()), (30, ("sw_thermal",)), (90, ("sw_power_cap",))])
    # the window is (30, 90]: the thermal poll spans (0, 30] and is gone; the cap poll spans (30, 90]
    s = w.summary()
    assert s.ratios["power_cap"] == pytest.approx(1.0)
    assert s.ratios["thermal"] == 0.0
    fill(w, [(100, ("sw_thermal",))])
    s = w.summary()  # window (40, 100]: 50 s of cap, 10 s of thermal
    assert s.ratios["power_cap"] == pytest.approx(50 / 60)
    assert s.ratios["thermal"] == pytest.approx(10 / 60)


def test_a_stalled_loop_does_not_paint_the_gap():
    w = ThrottleWindow(length_seconds=60, max_gap_seconds=2)
    fill(w, [(0, ()), (1, ()), (30, ("sw_thermal",))])
    s = w.summary()
    assert s.window_seconds == 3
    assert s.ratios["thermal"] == pytest.approx(2 / 3)


def test_ties_go_to_the_more_severe_class():
    w = ThrottleWindow()
    fill(w, [(0, ()), (1, ("sw_power_cap",)), (2, ("sw_thermal",))])
    assert w.summary().dominant == "thermal"


def test_empty_and_single_poll_windows():
    w = ThrottleWindow()
    assert w.summary().dominant is None
    w.add(sample(0, "sw_power_cap", ratio=0.9))
    s = w.summary()
    assert s.dominant == "power_cap" and s.ratios["power_cap"] == 1.0


def test_clock_loss_leaves_idle_polls_out():
    w = ThrottleWindow()
    w.add(sample(0, "sw_power_cap", ratio=0.8))
    w.add(sample(1, "idle", busy=False, ratio=0.1))
    w.add(sample(2, "sw_thermal", ratio=0.6))
    assert w.summary().clock_loss_ratio == pytest.approx((0.2 + 0.4) / 2)
    idle_only = ThrottleWindow()
    idle_only.add(sample(0, "idle", busy=False, ratio=0.1))
    assert idle_only.summary().clock_loss_ratio is None


def test_reason_seconds_accumulate_for_every_active_reason():
    totals = accumulate_reason_seconds({}, {"sw_power_cap"}, 1.0)
    totals = accumulate_reason_seconds(totals, {"hw_thermal", "hw_slowdown"}, 0.5)
    totals = accumulate_reason_seconds(totals, set(), 2.0)
    assert totals == {"sw_power_cap": 1.0, "hw_thermal": 0.5, "hw_slowdown": 0.5}


def test_running_totals_match_a_recount_over_a_long_random_run():
    import random

    rng = random.Random(3)
    w = ThrottleWindow(length_seconds=60, max_gap_seconds=5)
    polls: list[tuple[float, float, str]] = []
    reasons_pool = [(), ("sw_power_cap",), ("sw_thermal",), ("idle",), ("hw_power_brake",)]
    t, last = 0.0, None
    for _ in range(2000):
        t += rng.choice([0.5, 1.0, 1.0, 2.0, 7.0])
        reasons = rng.choice(reasons_pool)
        s = sample(t, *reasons, busy="idle" not in reasons, ratio=rng.uniform(0.5, 1.0))
        span = w.add(s)
        polls.append((t - span, t, classify(s)))
        last = t
    start = last - 60
    recount: dict[str, float] = {}
    for begin, end, cls in polls:
        if end > start:
            recount[cls] = recount.get(cls, 0.0) + end - max(begin, start)
    covered = sum(recount.values())
    summary = w.summary()
    assert summary.window_seconds == pytest.approx(covered)
    for cls, time_in in recount.items():
        assert summary.ratios[cls] == pytest.approx(time_in / covered)
