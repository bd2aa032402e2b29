"""``@record``, and the result types the analysis hands to the model.

``@record`` marks the immutable value classes built for every GPU on every poll.

A record is read-only to the type checker (mypy reports any assignment to a field, as for a frozen
dataclass) and a plain slotted dataclass at run time. ``dataclass(frozen=True)`` enforces the same
at run time by setting each field through ``object.__setattr__`` in ``__init__``, which makes a
poll's readings, statuses and verdict facts about four times as dear to build (29 fields: 6.1 µs
against 1.3 µs). Nothing changes a record once built; snapshots share them between threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def record(cls: type[T]) -> type[T]:
    """A slotted dataclass that mypy treats as frozen (see the module doc)."""
    return dataclass(slots=True)(cls)


# -- what the analysis returns and the model carries (here so that neither imports the other) ----


@dataclass(frozen=True, slots=True)
class Verdict:
    """A state, the reasons for it (worst first), and each check's own state."""

    state: str
    reasons: tuple[str, ...]
    checks: Mapping[str, str]


@record
class ThrottleSummary:
    """The window at a glance: time fractions per class, the dominant one, and clock loss."""

    window_seconds: float  # time the window actually covers (less than its length after a start)
    ratios: Mapping[str, float]
    dominant: str | None  # None when the window holds no time yet
    clock_loss_ratio: float | None  # mean 1 - SM/max over busy polls; None when never busy


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Tokens per joule over one window; ``joules_per_token`` only for kinds whose tokens moved (and
    "total", prompt and generated together, see analysis/efficiency.py)."""

    window_seconds: float
    joules: float
    tokens: Mapping[str, float]
    tokens_per_joule: Mapping[str, float]
    joules_per_token: Mapping[str, float]


# -- the energy ledger of a token source (issue 18: ledger) ----------------------------------------


@record
class SourceLedger:
    """What a token source's GPUs used while it served, since gpuwatch started; never decreases.

    ``energy_joules``: its share of its GPUs' energy while it was up; ``idle_*``: the part of that
    (and the time) between scrapes where no token counter moved; ``spent``: what that energy and
    its GPUs' time cost at the configured prices, by currency.
    """

    energy_joules: float = 0.0
    idle_seconds: float = 0.0
    idle_joules: float = 0.0
    spent: Mapping[str, float] = field(default_factory=dict)
