"""Building metric families from GPU values, skipping what a GPU does not report."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gpuwatch.labels import utf8_text
from gpuwatch.model import GpuIdentity

GPU_LABELS = ("gpu", "uuid")


class Families:
    """Collects samples into families created on first use.

    A family with no samples is never emitted, so a value no GPU supports has no series at all
    (not a zero). Every per-GPU sample carries ``gpu`` (NVML index) and ``uuid``. A family keeps the
    label names of its first sample; a sample with other names raises ValueError (the collector
    then fails alone, see exporter/registry.py). So does a label value that is not valid UTF-8,
    which no exposition format can carry: sources make their text valid
    (:func:`gpuwatch.labels.utf8_text`), and one that did not fails its collector, not the scrape.
    """

    def __init__(self) -> None:
        self._families: dict[str, tuple[Metric, tuple[str, ...]]] = {}

    def _family(self, kind: str, name: str, documentation: str, labels: tuple[str, ...]) -> Metric:
        known = self._families.get(name)
        if known is None:
            factory = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            created: Metric = factory(name, documentation, labels=list(labels))
            self._families[name] = (created, labels)
            return created
        family, first = known
        if labels != first:  # one family, one label set: else the exposition has clashing series
            raise ValueError(f"{name}: labels {labels} differ from the family's {first}")
        return family

    def gauge(self, name: str, documentation: str, value: float | None, /, **labels: str) -> None:
        """A gauge sample with only the given labels (for host-level series)."""
        if value is not None:
            family = self._family("gauge", name, documentation, tuple(labels))
            family.add_metric(list(_valid(name, labels).values()), float(value))  # type: ignore[attr-defined]

    def gpu_gauge(self, name: str, documentation: str, gpu: GpuIdentity, value: float | None, /, **labels: str) -> None:
        """A per-GPU gauge sample; ``None`` adds nothing."""
        if value is not None:
            family = self._family("gauge", name, documentation, GPU_LABELS + tuple(labels))
            family.add_metric([str(gpu.index), gpu.uuid, *_valid(name, labels).values()], float(value))  # type: ignore[attr-defined]

    def gpu_counter(
        self, name: str, documentation: str, gpu: GpuIdentity, value: float | None, /, **labels: str
    ) -> None:
        """A per-GPU counter sample (``name`` without ``_total``); ``None`` adds nothing."""
        if value is not None:
            family = self._family("counter", name, documentation, GPU_LABELS + tuple(labels))
            family.add_metric([str(gpu.index), gpu.uuid, *_valid(name, labels).values()], float(value))  # type: ignore[attr-defined]

    def counter(self, name: str, documentation: str, value: float | None, /, **labels: str) -> None:
        if value is not None:
            family = self._family("counter", name, documentation, tuple(labels))
            family.add_metric(list(_valid(name, labels).values()), float(value))  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[Metric]:
        return (family for family, _ in self._families.values())


def _valid(name: str, labels: dict[str, str]) -> dict[str, str]:
    """``labels``, if each value encodes to UTF-8; else ValueError naming the family and the value.
    (The GPU labels are NVML's, which pynvml decodes strictly: always valid.)"""
    for value in labels.values():
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                shown = utf8_text(value)  # undecodable bytes as \xNN
                raise ValueError(f"{name}: label value '{shown}' is not valid UTF-8") from None
    return labels
