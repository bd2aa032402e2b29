"""The Prometheus text format (0.0.4) for gpuwatch's families, byte for byte what prometheus_client writes.

prometheus_client's ``generate_latest`` checks and escapes every metric and label name of every
sample for UTF-8 names; with thousands of series (54 per GPU) that was most of a scrape's cost.
gpuwatch's names are legal legacy names by construction, so only label values need escaping here.
Anything else (histograms, summaries, info, exemplars, timestamps) goes to ``generate_latest``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_float_to_go

_float_to_go: Callable[[float], str] = _untyped_float_to_go  # Go's float formatting, as generate_latest

_SIMPLE_TYPES = {"gauge": "gauge", "counter": "counter", "unknown": "untyped"}

# Label sets as written, by their (name, value) pairs: a GPU's series carry the same label sets
# poll after poll, so each is escaped and joined once. Emptied when it grows past the bound (a
# churn of label values, e.g. process names), so it never holds more than that.
_LABEL_TEXT: dict[tuple[tuple[str, str], ...], str] = {}
_LABEL_TEXT_MAX = 200_000


class _Unsupported(Exception):
    pass


def generate(registry: Collector) -> bytes:
    """``generate_latest(registry)``, faster for gauges and counters."""
    try:
        return _generate(registry)
    except _Unsupported:
        return generate_latest(registry)


def _generate(registry: Collector) -> bytes:
    out: list[str] = []
    for metric in registry.collect():
        mtype = _SIMPLE_TYPES.get(metric.type)
        if mtype is None:
            raise _Unsupported(metric.type)
        name = metric.name + "_total" if mtype == "counter" else metric.name
        documentation = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {documentation}\n# TYPE {name} {mtype}\n")
        for s in metric.samples:
            if s.timestamp is not None or s.exemplar is not None or s.name != name:
                raise _Unsupported(s.name)
            if s.labels:
                key = tuple(s.labels.items())
                labels = _LABEL_TEXT.get(key)
                if labels is None:
                    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(key))
                    if len(_LABEL_TEXT) >= _LABEL_TEXT_MAX:
                        _LABEL_TEXT.clear()
                    _LABEL_TEXT[key] = labels
                out.append(f"{name}{{{labels}}} {_float_to_go(s.value)}\n")
            else:
                out.append(f"{name} {_float_to_go(s.value)}\n")
    return "".join(out).encode("utf-8")


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value
