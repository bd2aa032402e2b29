"""Token counts out of an inference server's ``/metrics`` text.

Only the lines that name a wanted sample are handed to prometheus_client's parser: a vLLM
exposition is hundreds of histogram lines, and gpuwatch needs two of them. Values from every
series that carries the wanted labels are summed (vLLM's data-parallel ``engine`` label, several
models on one server when no model filter is given).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from gpuwatch.tokens.presets import KINDS, TokenMetrics

START_TIME_SAMPLE = "process_start_time_seconds"


class ExpositionError(ValueError):
    """The response cannot give token counts; the message says why and what to check."""


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """One reading of a server's token counters."""

    tokens: Mapping[str, float]  # kind -> count, summed over the matching series
    start_time: float | None = None  # process_start_time_seconds, where the server exports it


def sample_name(line: str) -> str:
    """The sample name a line of the text format starts with ('' for comments and blank lines)."""
    if not line or line[0] == "#":
        return ""
    end = len(line)
    for stop in ("{", " ", "\t"):
        at = line.find(stop)
        if at != -1:
            end = min(end, at)
    return line[:end]


def sample_names(text: str) -> set[str]:
    """Every sample name in an exposition, for recognising which server wrote it."""
    return {name for name in map(sample_name, text.splitlines()) if name}


def read_counts(text: str, metrics: TokenMetrics, labels: Mapping[str, str] | None = None) -> TokenCounts:
    """Sum each kind's samples that carry ``labels``; raises :class:`ExpositionError`."""
    wanted = metrics.by_kind()
    names = set(wanted.values()) | {START_TIME_SAMPLE}
    kept = [line for line in text.splitlines() if sample_name(line) in names]
    try:
        samples = [s for family in text_string_to_metric_families("\n".join(kept) + "\n") for s in family.samples]
    except Exception as exc:  # the parser raises ValueError, IndexError, … on malformed lines
        raise ExpositionError(f"not a Prometheus text exposition: {exc}") from None
    labels = labels or {}
    totals: dict[str, float] = {}
    start_time: float | None = None
    seen: set[str] = set()
    for sample in samples:
        if sample.name == START_TIME_SAMPLE:
            start_time = sample.value
            continue
        seen.add(sample.name)
        if any(sample.labels.get(key) != value for key, value in labels.items()):
            continue
        if not math.isfinite(sample.value) or sample.value < 0:
            raise ExpositionError(f"{sample.name} is {sample.value}, not a token count")
        for kind, name in wanted.items():
            if sample.name == name:
                totals[kind] = totals.get(kind, 0.0) + sample.value
    if "generation" not in totals:
        if metrics.generation not in seen:
            raise ExpositionError(f"no {metrics.generation} in the response (wrong preset or metric name?)")
        wanted_labels = ",".join(f'{k}="{v}"' for k, v in labels.items())
        raise ExpositionError(f"no {metrics.generation} series with {{{wanted_labels}}} (check the label filter)")
    ordered = {kind: totals[kind] for kind in KINDS if kind in totals}
    return TokenCounts(tokens=ordered, start_time=start_time)
