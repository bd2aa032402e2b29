"""Reset-safe counters: table of driver readings and the totals gpuwatch exports."""

from __future__ import annotations

import pytest

from gpuwatch.analysis.counters import ResetSafeCounter


@pytest.mark.parametrize(
    ("raw_readings", "expected_totals"),
    [
        ([100, 150, 200], [100, 150, 200]),  # plain growth
        ([100, 100, 100], [100, 100, 100]),  # idle: no change is not a reset
        ([100, 150, 20, 50], [100, 150, 170, 200]),  # driver reload: carry 150 forward
        ([100, 0, 0, 10], [100, 100, 100, 110]),  # reset to exactly zero
        ([100, 40, 10, 30], [100, 140, 150, 170]),  # two resets in a row
        ([2**32 - 10, 5, 15], [2**32 - 10, 2**32 - 5, 2**32 + 5]),  # a 32-bit counter wraps: taken as a reset
    ],
)
def test_totals_never_decrease_across_resets(raw_readings, expected_totals):
    counter = ResetSafeCounter(raw_readings[0])
    totals = [counter.total]
    for raw in raw_readings[1:]:
        counter = counter.advance(raw)
        totals.append(counter.total)
    assert totals == expected_totals
