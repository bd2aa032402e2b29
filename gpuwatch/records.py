"""``@record``: the immutable value classes built for every GPU on every poll.

A record is read-only to the type checker (mypy reports any assignment to a field, as for a frozen
dataclass) and a plain slotted dataclass at run time. ``dataclass(frozen=True)`` enforces the same
at run time by setting each field through ``object.__setattr__`` in ``__init__``, which makes a
poll's readings, statuses and verdict facts about four times as dear to build (29 fields: 6.1 µs
against 1.3 µs). Nothing changes a record once built; snapshots share them between threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def record(cls: type[T]) -> type[T]:
    """A slotted dataclass that mypy treats as frozen (see the module doc)."""
    return dataclass(slots=True)(cls)
