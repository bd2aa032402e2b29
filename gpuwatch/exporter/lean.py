"""The lean set's series: which families, and which of their series, `--collector.lean-set` keeps.

Chosen from what the shipped alerts, recording rules and dashboards read (``prometheus/*.yml``,
``dashboards/*.json``; ``tests/test_collectors.py`` fails when one reads a family left out here),
to stay under 30 series per GPU (README "Collectors", measured by that test on a simulated host):

* a family not named here is left out: ``gpuwatch_gpu_info`` (name, serial, driver: join it from a
  full scrape when needed), engine utilization, the power limit's range, BAR1, PCIe, per-process
  memory, the violation counters;
* a family named with label values keeps those series only (the SM clock and its maximum, the two
  thermal thresholds the alert and dashboard compare against);
* a state set or reason list (``ACTIVE``) keeps only its series that are not 0: the host's and
  each GPU's current health state, the throttle class that dominates, the clock event reasons that
  hold clocks down now, the health checks that are not ok, the throttle classes seen in the window.
  Queries of the form ``x{state="critical"} == 1`` and ``sum by (class) (x)`` read the same; a
  query for ``== 0`` does not, and a state change starts a new series (state changes are rare).

gpuwatch's own series (the ``self`` collector) are never trimmed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import Metric

from gpuwatch.model import Snapshot

ALL = None  # every series of the family
ACTIVE = "active"  # only its series whose value is not 0
WITH_GPM = "with gpm"  # only its series of GPUs that report GPM (where it is compared with SM active)

# family name (a counter's without _total) -> ALL, ACTIVE, WITH_GPM, or {label: values kept}
LEAN_SERIES: Mapping[str, str | Mapping[str, frozenset[str]] | None] = {
    "gpuwatch_gpu_up": ALL,
    "gpuwatch_gpu_power_watts": ALL,
    "gpuwatch_gpu_power_limit_watts": ALL,
    "gpuwatch_gpu_energy_joules": ALL,
    "gpuwatch_gpu_temperature_celsius": ALL,
    "gpuwatch_gpu_temperature_margin_celsius": ALL,
    "gpuwatch_gpu_temperature_threshold_celsius": {"threshold": frozenset({"max_operating", "slowdown"})},
    "gpuwatch_gpu_fan_speed_ratio": ALL,
    "gpuwatch_gpu_clock_hertz": {"clock": frozenset({"sm"})},
    "gpuwatch_gpu_clock_max_hertz": {"clock": frozenset({"sm"})},
    "gpuwatch_gpu_clocks_event_active": ACTIVE,
    "gpuwatch_gpu_clocks_event_seconds": ALL,
    "gpuwatch_gpu_throttle_class": ACTIVE,
    "gpuwatch_gpu_throttle_ratio": ACTIVE,
    "gpuwatch_gpu_clock_loss_ratio": ALL,
    "gpuwatch_health": ACTIVE,
    "gpuwatch_gpu_health": ACTIVE,
    "gpuwatch_gpu_health_check": ACTIVE,
    "gpuwatch_gpu_memory_size_bytes": ALL,
    "gpuwatch_gpu_memory_used_bytes": ALL,
    "gpuwatch_gpu_memory_reserved_bytes": ALL,
    "gpuwatch_gpu_ecc_errors": ALL,
    "gpuwatch_gpu_remapped_rows": ALL,
    "gpuwatch_gpu_row_remap_pending": ALL,
    "gpuwatch_gpu_row_remap_failure": ALL,
    "gpuwatch_gpu_xid_errors": ALL,
    "gpuwatch_source_up": ALL,
    "gpuwatch_source_gpu_info": ALL,
    "gpuwatch_tokens": ALL,
    "gpuwatch_tokens_per_joule": ALL,
    "gpuwatch_joules_per_token": ALL,
    # Busy vs really busy (GPM, Hopper and newer): the ratios the dashboards draw, and utilization
    # beside them only where there is SM active to compare it with (a 31st series on cards without
    # GPM, where the panels have nothing to compare).
    "gpuwatch_gpu_utilization_ratio": WITH_GPM,
    "gpuwatch_gpu_sm_active_ratio": ALL,
    "gpuwatch_gpu_tensor_active_ratio": ALL,
    "gpuwatch_gpu_dram_active_ratio": ALL,
    "gpuwatch_mig_info": ALL,
    "gpuwatch_mig_memory_used_bytes": ALL,
    "gpuwatch_mig_memory_size_bytes": ALL,
    "gpuwatch_mig_sm_active_ratio": ALL,
    # the driver's recovery action: its one series at 1 (R570 and newer)
    "gpuwatch_gpu_recovery_action": ACTIVE,
    # NVLink (18 links on an H200): the error counters of links that have had errors, for the alert
    # and its panel; a link's first errors start its series, so `increase` sees the next ones. The
    # per-link traffic (36 series per H200) is left out: NOT_SERVED says so.
    "gpuwatch_gpu_nvlink_errors": ACTIVE,
    # the kernel log's readability (one per host)
    "gpuwatch_xid_log_readable": ALL,
    # the energy ledger (per source, no gpu label)
    "gpuwatch_source_energy_joules": ALL,
    "gpuwatch_source_idle_seconds": ALL,
    "gpuwatch_source_idle_joules": ALL,
    "gpuwatch_source_cost": ALL,
    "gpuwatch_source_cost_per_million_tokens": ALL,
}


# Metrics a shipped panel reads that the lean set leaves out on purpose, and why (the README says so;
# tests/test_collectors.py accepts only these).
NOT_SERVED: Mapping[str, str] = {
    "gpuwatch_gpu_nvlink_bytes_total": "per-link NVLink traffic, 36 series per H200; GPM's all-link rate "
    "(gpuwatch_gpu_nvlink_bytes_per_second) stays",
}


def trim(families: Iterable[Metric], gpm_gpus: frozenset[str] = frozenset()) -> Iterator[Metric]:
    """The lean set's part of ``families``: a family left with no series is left out whole.
    ``gpm_gpus``: the ``gpu`` labels of the GPUs that report GPM (for :data:`WITH_GPM`)."""
    for family in families:
        if family.name not in LEAN_SERIES:
            continue
        rule = LEAN_SERIES[family.name]
        if rule is ALL:
            yield family
            continue
        if rule == ACTIVE:
            family.samples = [s for s in family.samples if s.value != 0]
        elif rule == WITH_GPM:
            family.samples = [s for s in family.samples if s.labels.get("gpu") in gpm_gpus]
        else:
            assert isinstance(rule, Mapping)
            family.samples = [s for s in family.samples if all(s.labels.get(k) in v for k, v in rule.items())]
        if family.samples:
            yield family


class Trimmed:
    """A collector whose output is :func:`trim`-med (the collector switch's lean set)."""

    def __init__(self, collect: Callable[[Snapshot], Iterable[Metric]]) -> None:
        self._collect = collect

    def __call__(self, snapshot: Snapshot) -> Iterator[Metric]:
        gpm_gpus = frozenset(
            str(s.identity.index) for s in snapshot.gpus if s.reading is not None and s.reading.activity_ratio
        )
        return trim(self._collect(snapshot), gpm_gpus)
