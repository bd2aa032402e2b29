"""Token counts out of an inference server's ``/metrics`` text, read as it arrives.

A vLLM exposition is hundreds of histogram lines and gpuwatch needs two series of it, so
:class:`CountReader` looks at each line's start only and parses nothing but the samples it wants:
the token counters (of the source's preset, or of every preset while the server is still to be
recognised) and ``process_start_time_seconds``. It keeps running sums, never the lines, so its
memory does not grow with the response: a 16 MiB exposition of 200,000 token series costs what a
64 KiB one does. Values from every series that carries the wanted labels are summed (vLLM's
data-parallel ``engine`` label, several models on one server when no model filter is given).

The sample syntax is the text format's (name, optional ``{labels}``, value, optional timestamp);
a wanted line that does not follow it makes the response unusable, and so does a token count
that is negative, not finite or above :data:`MAX_TOKENS`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from gpuwatch.tokens.presets import KINDS, PRESETS, TokenMetrics, detect, split_selector

START_TIME_SAMPLE = "process_start_time_seconds"
MAX_TOKENS = 1e15  # a thousand years of a 30,000 tokens/s server; anything above is not a count
MAX_LINE_BYTES = 64 * 1024  # a wanted sample line longer than this is refused (others are skipped)

_LABEL = rb'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*'
_LABEL_NO_GROUPS = rb'[ \t]*[a-zA-Z_][a-zA-Z0-9_]*[ \t]*=[ \t]*"(?:[^"\\\n]|\\.)*"[ \t]*'
_VALUE = rb"[+-]?(?:[0-9]+\.?[0-9]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?|[Nn]a[Nn]|[Ii]nf(?:inity)?)"
_REST = re.compile(
    rb"(\{(?:" + _LABEL_NO_GROUPS + rb"(?:," + _LABEL_NO_GROUPS + rb")*,?)?[ \t]*\})?"
    rb"[ \t]+(" + _VALUE + rb")(?:[ \t]+-?[0-9]+)?[ \t]*\r?"
)
_LABELS = re.compile(_LABEL)
_UNESCAPE = {b"\\\\": b"\\", b'\\"': b'"', b"\\n": b"\n"}


class ExpositionError(ValueError):
    """The response cannot give token counts; the message says why and what to check."""


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """One reading of a server's token counters."""

    tokens: Mapping[str, float]  # kind -> count, summed over the matching series
    start_time: float | None = None  # process_start_time_seconds, where the server exports it
    metrics: TokenMetrics | None = None  # the counters read (the preset recognised, for "auto")
    read: TokenMetrics | None = None  # which of its alternatives (current names or a fallback) the response had


class CountReader:
    """Sums of the wanted samples of one response, fed in pieces (:meth:`feed`), read at :meth:`finish`.

    ``metrics`` None: the server is recognised from which preset's generation counter it exports.
    Raises :class:`ExpositionError` on a malformed or implausible wanted sample.
    """

    def __init__(self, metrics: TokenMetrics | None, labels: Mapping[str, str] | None = None) -> None:
        self._metrics = metrics
        candidates = [metrics] if metrics is not None else list(PRESETS.values())
        # sample name -> the wanted samples of that name (one per label selector), for every alternative
        self._specs: dict[bytes, dict[str, dict[bytes, bytes]]] = {}
        for candidate in candidates:
            for alternative in candidate.alternatives():
                for spec in alternative.by_kind().values():
                    name, selector = split_selector(spec)
                    wanted = {k.encode(): v.encode() for k, v in selector.items()}
                    self._specs.setdefault(name.encode(), {})[spec] = wanted
        self._names = {*self._specs, START_TIME_SAMPLE.encode()}
        self._labels = {k.encode(): v.encode() for k, v in (labels or {}).items()}
        # name -> its one wanted sample, for names read without any label to check
        self._plain = {
            name: next(iter(specs))
            for name, specs in self._specs.items()
            if not self._labels and len(specs) == 1 and not next(iter(specs.values()))
        }
        self._prefixes = tuple(self._names)
        self._sums: dict[
            str, float
        ] = {}  # wanted sample (with its selector) -> sum over the series carrying the labels
        self._seen: set[bytes] = set()  # wanted names present at all, labels or not
        self._start_time: float | None = None
        self._partial = b""  # the unfinished last line of what has arrived
        self._skipping = False  # inside a long line nobody wants, until its end
        self._line = 0

    def feed(self, data: bytes) -> None:
        lines = data.split(b"\n")
        lines[0] = self._partial + lines[0]
        self._partial = lines.pop()
        for line in lines:
            self._line += 1
            if self._skipping:
                self._skipping = False
            elif line.startswith(self._prefixes):
                self._sample(line)
        if len(self._partial) > MAX_LINE_BYTES:
            if not self._skipping and self._partial.startswith(self._prefixes) and self._name(self._partial):
                raise ExpositionError(f"line {self._line + 1} is a token sample over {MAX_LINE_BYTES} bytes long")
            self._partial, self._skipping = b"", True

    def finish(self) -> TokenCounts:
        """The counts of everything fed, the last line included."""
        if self._partial and not self._skipping and self._partial.startswith(self._prefixes):
            self._line += 1
            self._sample(self._partial)
        self._partial = b""
        metrics = self._metrics or _recognise({n.decode() for n in self._seen})
        chosen = next((m for m in metrics.alternatives() if m.generation in self._sums), metrics)
        totals: dict[str, float] = {}
        for kind, spec in chosen.by_kind().items():
            total = self._sums.get(spec)
            if total is not None:
                totals[kind] = _checked(spec, total, "the sum of its series")
        if "generation" not in totals:
            name = split_selector(metrics.generation)[0]
            if not any(split_selector(m.generation)[0].encode() in self._seen for m in metrics.alternatives()):
                raise ExpositionError(f"no {name} in the response (wrong preset or metric name?)")
            wanted = ",".join(f'{k.decode()}="{v.decode()}"' for k, v in self._labels.items())
            raise ExpositionError(
                f"no {metrics.generation} series with {{{wanted}}} (check the label filter)"
                if wanted
                else f"no {metrics.generation} series in the response"
            )
        ordered = {kind: totals[kind] for kind in KINDS if kind in totals}
        return TokenCounts(tokens=ordered, start_time=self._start_time, metrics=metrics, read=chosen)

    def _name(self, line: bytes) -> bytes | None:
        """The wanted name ``line`` starts with, if it is followed by labels or blanks."""
        end = len(line)
        for separator in (b"{", b" ", b"\t"):
            found = line.find(separator, 0, end)
            if found != -1:
                end = found
        name = line[:end]
        return name if name in self._names else None

    def _sample(self, line: bytes) -> None:
        name = self._name(line)
        if name is None:
            return  # a longer name that starts like a wanted one
        match = _REST.fullmatch(line, len(name))
        if match is None:
            text = line[:120].decode("utf-8", "backslashreplace")
            raise ExpositionError(f"not a Prometheus text exposition: line {self._line}: {text!r}")
        value = float(match.group(2))
        if name == b"process_start_time_seconds":
            self._start_time = value if math.isfinite(value) else None
            return
        self._seen.add(name)
        plain = self._plain.get(name)
        if plain is not None:  # the common case: one wanted sample of this name, no labels to check
            self._sums[plain] = self._sums.get(plain, 0.0) + _checked(plain, value, "")
            return
        found: dict[bytes, bytes] | None = None
        for spec, selector in self._specs[name].items():
            wanted = {**self._labels, **selector}
            if wanted:
                if found is None:
                    found = self._found_labels(match.group(1) or b"")
                if any(found.get(key) != expected for key, expected in wanted.items()):
                    continue
            self._sums[spec] = self._sums.get(spec, 0.0) + _checked(name.decode(), value, "")

    def _found_labels(self, block: bytes) -> dict[bytes, bytes]:
        return {
            key: re.sub(rb"\\[\\\"n]", lambda m: _UNESCAPE[m.group()], value) for key, value in _LABELS.findall(block)
        }


def _checked(name: str, value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise ExpositionError(f"{name} is {value:g}{f' ({what})' if what else ''}, not a token count")
    if value > MAX_TOKENS:
        raise ExpositionError(
            f"{name} is {value:g}{f' ({what})' if what else ''}, over {MAX_TOKENS:g}: not a token count"
        )
    return value


def _recognise(names: set[str]) -> TokenMetrics:
    preset = detect(names)
    if preset is None:
        known = ", ".join(f"{name} ({m.generation})" for name, m in PRESETS.items())
        raise ExpositionError(f"cannot tell which server this is; set its preset (known: {known})")
    return PRESETS[preset]


def read_counts(text: str, metrics: TokenMetrics | None, labels: Mapping[str, str] | None = None) -> TokenCounts:
    """The counts in a whole exposition (``metrics`` None: recognised); raises :class:`ExpositionError`."""
    reader = CountReader(metrics, labels)
    reader.feed(text.encode())
    return reader.finish()
