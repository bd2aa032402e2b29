"""Tokens per joule over a window: interpolation, window edges, idle and resets."""

from __future__ import annotations

import pytest

from gpuwatch.analysis.efficiency import EnergyPoint, TokenPoint, energy_at, window_efficiency


def energy(*pairs: tuple[float, float]) -> list[EnergyPoint]:
    return [EnergyPoint(t, j) for t, j in pairs]


def tokens(*pairs: tuple[float, float]) -> list[TokenPoint]:
    return [TokenPoint(t, {"generation": n}) for t, n in pairs]


def test_energy_is_interpolated_between_polls():
    points = energy((0, 0.0), (1, 100.0), (2, 300.0))
    assert energy_at(points, 0.5) == pytest.approx(50.0)
    assert energy_at(points, 1.5) == pytest.approx(200.0)
    assert energy_at(points, 2) == 300.0
    assert energy_at(points, 2.1) is None
    assert energy_at([], 1) is None


def test_tokens_per_joule_over_the_window():
    # 200 W and 500 tokens/s: 2.5 tokens per joule; scrapes half a second after each poll.
    power = energy(*((t, 200.0 * t) for t in range(0, 71)))
    counts = tokens(*((t + 0.5, 500.0 * (t + 0.5)) for t in range(0, 70)))
    result = window_efficiency(counts, power, window_s=60)
    assert result is not None
    assert result.window_seconds == pytest.approx(60)
    assert result.tokens_per_joule["generation"] == pytest.approx(2.5)
    assert result.joules_per_token["generation"] == pytest.approx(0.4)


def test_scrapes_after_the_last_poll_wait_for_the_next_one():
    power = energy((0, 0.0), (20, 4000.0))
    counts = tokens((1, 0.0), (19, 900.0), (21, 2000.0))
    result = window_efficiency(counts, power, window_s=60)
    assert result is not None and result.window_seconds == pytest.approx(18)
    assert result.tokens["generation"] == 900.0


def test_nothing_until_the_minimum_window():
    power = energy(*((t, 100.0 * t) for t in range(0, 12)))
    assert window_efficiency(tokens((1, 0), (10, 90)), power, min_window_s=10) is None
    assert window_efficiency(tokens((1, 0), (11, 100)), power, min_window_s=10) is not None


def test_an_idle_window_is_zero_tokens_per_joule_and_no_joules_per_token():
    power = energy(*((t, 30.0 * t) for t in range(0, 31)))
    result = window_efficiency(tokens((0, 5), (30, 5)), power)
    assert result is not None
    assert result.tokens_per_joule == {"generation": 0.0}
    assert result.joules_per_token == {}


def test_energy_that_did_not_move_gives_nothing():
    assert window_efficiency(tokens((0, 0), (30, 50)), energy((0, 7.0), (30, 7.0))) is None


def test_a_counter_that_went_back_never_gives_a_negative_rate():
    power = energy(*((t, 100.0 * t) for t in range(0, 31)))
    assert window_efficiency(tokens((0, 500), (30, 20)), power) is None
