"""The energy ledger of token sources, and what their tokens cost: pure functions, no clock.

Energy: at each poll, each GPU's energy since the previous poll (from its reset-safe total, so a
driver reload neither debits nor double-counts) is shared equally among the token sources that are
up and attributed to it. Equal shares because NVML gives one energy counter per GPU and nothing
per process that could divide it fairly; with one source per GPU, the usual case, the share is the
whole. A GPU that reports no energy at either poll of an interval gives nothing for that interval,
and a source that is down is given nothing: the ledger only ever undercounts, and the shares of all
sources add up to the energy of the GPUs that serve any (``gpuwatch_gpu_energy_joules_total`` has
the rest).

Idle: between two consecutive successful scrapes of a source, if none of its (reset-safe) token
counters moved, the interval was still; a spell of still intervals lasting at least
:data:`IDLE_MIN_S` was idle: the source was up, its GPUs drew power, and no token came out. Its
energy is the source's attributed energy interpolated at the scrapes, as
:mod:`gpuwatch.analysis.efficiency` lines tokens up with energy, so idle joules never exceed the
energy attributed.

Cost (``[cost]`` in the config): energy costs joules x PUE at the price per kWh, and with a
GPU-hour price each GPU's time costs that price per hour. The ledger prices each poll's share of
energy and GPU time at the prices then in force (a GPU shared by sources: its time split as its
energy), by currency, so a fleet can divide money by tokens over any range. The cost per million
tokens is the same over the efficiency window, divided by the window's tokens. The windowed
figures use the whole energy of the source's GPUs, as tokens per joule always has, so a GPU shared
by two sources is charged in full to each of them there (the ledger's counters split it).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from gpuwatch.analysis.efficiency import EnergyPoint, TokenPoint, energy_at
from gpuwatch.records import Efficiency, SourceLedger, record

JOULES_PER_KWH = 3.6e6
PER_TOKENS = 1e6  # cost per million tokens
COST_KINDS = ("generation", "total")  # of gpuwatch_joules_per_token's kinds, those worth a price
DEFAULT_CURRENCY = "USD"
# A server's counters move in steps: per engine iteration (vLLM, tens of ms), or only as requests end
# (SGLang, TGI). Two scrapes inside one step, or a busy server between completions, see them still;
# only a still spell this long is idle, which leaves those out.
IDLE_MIN_S = 5.0
_CURRENCY = re.compile(r"^[A-Z]{3}$")

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class CostSettings:
    """The ``[cost]`` table: prices in ``currency``; no price configured means no cost series."""

    energy_price_per_kwh: float | None = None  # what a kWh at the meter costs
    pue: float = 1.0  # power usage effectiveness of the room: facility energy / IT energy, >= 1
    gpu_hour_price: float | None = None  # rent or depreciation per GPU-hour, charged per GPU of a source
    currency: str = DEFAULT_CURRENCY  # ISO 4217 code, a label value only: gpuwatch converts nothing

    def __post_init__(self) -> None:
        for name in ("energy_price_per_kwh", "gpu_hour_price"):
            price = getattr(self, name)
            if price is not None and not (0 <= price < float("inf")):
                raise ValueError(f"{name} must be a price of 0 or more, not {price!r}")
        if not 1.0 <= self.pue < float("inf"):
            raise ValueError(f"pue must be 1 or more (facility energy over IT energy), not {self.pue!r}")
        if not _CURRENCY.match(self.currency):
            raise ValueError(f"currency must be an ISO 4217 code such as 'USD' or 'EUR', not {self.currency!r}")

    @property
    def priced(self) -> bool:
        return self.energy_price_per_kwh is not None or self.gpu_hour_price is not None

    def summary(self) -> str:
        """One line for check-config and the reload log."""
        if not self.priced:
            return "no price set (no cost per million tokens)"
        parts = []
        if self.energy_price_per_kwh is not None:
            parts.append(f"{self.energy_price_per_kwh:g} {self.currency} per kWh at PUE {self.pue:g}")
        if self.gpu_hour_price is not None:
            parts.append(f"{self.gpu_hour_price:g} {self.currency} per GPU-hour")
        return " + ".join(parts)


def energy_deltas(previous: Mapping[int, float], current: Mapping[int, float]) -> dict[int, float]:
    """Joules each GPU used between two polls, from reset-safe totals (GPU index -> total); a GPU
    missing from either poll gives nothing, and a total that went back gives 0, never a debit."""
    return {gpu: max(0.0, total - previous[gpu]) for gpu, total in current.items() if gpu in previous}


def split_energy(deltas: Mapping[int, float], serving: Mapping[K, Sequence[int]]) -> dict[K, float]:
    """Each GPU's joules shared equally among the sources serving it (source -> its GPUs). A source
    none of whose GPUs is in ``deltas`` gets no entry."""
    holders: dict[int, int] = {}
    for gpus in serving.values():
        for gpu in set(gpus):
            holders[gpu] = holders.get(gpu, 0) + 1
    return {
        name: sum(deltas[gpu] / holders[gpu] for gpu in set(gpus) if gpu in deltas)
        for name, gpus in serving.items()
        if any(gpu in deltas for gpu in gpus)
    }


def spend(joules: float, gpu_seconds: float, cost: CostSettings) -> float:
    """What ``joules`` of GPU energy and ``gpu_seconds`` of GPU time cost at ``cost``'s prices."""
    spent = 0.0
    if cost.energy_price_per_kwh is not None:
        spent += joules * cost.pue / JOULES_PER_KWH * cost.energy_price_per_kwh
    if cost.gpu_hour_price is not None:
        spent += cost.gpu_hour_price * gpu_seconds / 3600.0
    return spent


def add_share(
    ledger: SourceLedger | None, joules: float, gpu_seconds: float = 0.0, cost: CostSettings | None = None
) -> SourceLedger:
    """The ledger (None: the source's first energy) after its share of one poll's energy and GPU
    time, priced at ``cost`` (the prices in force at that poll) when it has a price."""
    if joules < 0 or gpu_seconds < 0:
        raise ValueError(f"a negative share ({joules} J, {gpu_seconds} GPU-seconds)")
    ledger = ledger or SourceLedger()
    spent = dict(ledger.spent)
    if cost is not None and cost.priced:
        spent[cost.currency] = spent.get(cost.currency, 0.0) + spend(joules, gpu_seconds, cost)
    return SourceLedger(ledger.energy_joules + joules, ledger.idle_seconds, ledger.idle_joules, spent)


@record
class IdleSpell:
    """Consecutive intervals between scrapes in which no token counter moved, so far."""

    seconds: float = 0.0
    joules: float = 0.0


def settle(
    ledger: SourceLedger, pending: Sequence[TokenPoint], attributed: Sequence[EnergyPoint], spell: IdleSpell
) -> tuple[SourceLedger, int, IdleSpell]:
    """Account the intervals between consecutive scrapes in ``pending`` that ``attributed`` (the
    source's ledger energy at each poll, in time order) covers; returns the ledger after them, how
    many scrapes, from the front, are done with (the last one accounted starts the next interval),
    and the idle spell still open at the newest.

    ``pending`` holds successful scrapes with reset-safe token totals, broken by the caller where
    the source went down (and ``spell`` with it). A scrape older than the attributed energy can
    never be accounted and is dropped; an interval ending after the newest poll waits for the next
    one. Still intervals count as idle once their spell lasts :data:`IDLE_MIN_S`, then as they come.
    """
    done = 0
    idle_seconds, idle_joules = ledger.idle_seconds, ledger.idle_joules
    while len(pending) - done >= 2:
        start, end = pending[done], pending[done + 1]
        if not attributed or start.timestamp < attributed[0].timestamp:
            done += 1
            spell = IdleSpell()  # a gap in what is known: a spell does not span it
            continue
        joules_end = energy_at(attributed, end.timestamp)
        if joules_end is None:
            break
        joules_start = energy_at(attributed, start.timestamp)
        assert joules_start is not None  # between the first poll and the end's
        seconds, joules = end.timestamp - start.timestamp, max(0.0, joules_end - joules_start)
        if not _still(start, end):
            spell = IdleSpell()
        elif spell.seconds >= IDLE_MIN_S:  # counted already: add this interval
            spell = IdleSpell(spell.seconds + seconds, spell.joules + joules)
            idle_seconds, idle_joules = idle_seconds + seconds, idle_joules + joules
        else:
            spell = IdleSpell(spell.seconds + seconds, spell.joules + joules)
            if spell.seconds >= IDLE_MIN_S:  # long enough now: count all of it
                idle_seconds, idle_joules = idle_seconds + spell.seconds, idle_joules + spell.joules
        done += 1
    if (idle_seconds, idle_joules) != (ledger.idle_seconds, ledger.idle_joules):
        ledger = SourceLedger(ledger.energy_joules, idle_seconds, idle_joules, ledger.spent)
    return ledger, done, spell


def _still(start: TokenPoint, end: TokenPoint) -> bool:
    """No token counter moved between two scrapes."""
    return start.tokens.keys() == end.tokens.keys() and all(end.tokens[k] == v for k, v in start.tokens.items())


def cost_per_million_tokens(efficiency: Efficiency, gpu_count: int, cost: CostSettings) -> dict[str, float]:
    """Price per million tokens over the efficiency window, by kind (:data:`COST_KINDS`); empty
    without a price, and no entry for a kind whose tokens did not move."""
    if not cost.priced:
        return {}
    spent = spend(efficiency.joules, gpu_count * efficiency.window_seconds, cost)
    return {
        kind: spent * PER_TOKENS * efficiency.joules_per_token[kind] / efficiency.joules
        for kind in COST_KINDS
        if kind in efficiency.joules_per_token
    }
