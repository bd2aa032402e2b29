"""Counters in an exposition: every series of every family whose TYPE is counter, and a check that
none went down between two scrapes (a decrease reads as a reset, or a negative rate)."""

from __future__ import annotations

import re

_TYPE = re.compile(r"^# TYPE (\S+) counter$", re.M)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", re.M)

Series = tuple[str, str]  # name, labels as written


def counter_samples(text: str) -> dict[Series, float]:
    counters = {name + "_total" for name in _TYPE.findall(text)}
    return {(name, labels): float(value) for name, labels, value in _SAMPLE.findall(text) if name in counters}


def decreases(before: dict[Series, float], after: dict[Series, float]) -> list[str]:
    """Series in both scrapes whose value went down."""
    out = []
    for (name, labels), value in before.items():
        now = after.get((name, labels))
        if now is not None and now < value:
            out.append(f"{name}{labels}: {value} -> {now}")
    return out
