"""The collector registry: every concern's collector, each guarded by a success/duration pair."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from gpuwatch.exporter import (
    clocks,
    gpm,
    health,
    identity,
    memory,
    mig,
    models,
    nvlink,
    pcie,
    pods,
    power,
    processes,
    reliability,
    self_metrics,
    thermal,
    throttle,
    tokens,
)
from gpuwatch.model import Snapshot

log = logging.getLogger(__name__)

ConcernCollector = Callable[[Snapshot], Iterable[Metric]]

COLLECTORS: dict[str, ConcernCollector] = {
    "identity": identity.collect,
    "power": power.collect,
    "thermal": thermal.collect,
    "clocks": clocks.collect,
    "throttle": throttle.collect,
    "health": health.collect,
    "memory": memory.collect,
    "reliability": reliability.collect,
    "pcie": pcie.collect,
    "processes": processes.collect,
    "tokens": tokens.collect,
    "self": self_metrics.collect,
    "pods": pods.collect,
    "gpm": gpm.collect,
    "mig": mig.collect,
    "models": models.collect,
    "nvlink": nvlink.collect,
}


class SnapshotCollector:
    """Runs each concern over the latest snapshot; a failing concern yields nothing but its
    ``gpuwatch_scrape_collector_success 0``, so one bug never fails the whole scrape.

    :attr:`failed` names the concerns that failed in the latest rendering (the daemon's
    ``/-/ready`` answers 503 while any did).
    """

    def __init__(self, latest: Callable[[], Snapshot], collectors: dict[str, ConcernCollector]) -> None:
        self._latest = latest
        self._collectors = collectors
        self.failed: tuple[str, ...] = ()

    def use(self, collectors: dict[str, ConcernCollector]) -> None:
        """Run these collectors from the next rendering on (collector switches, reloaded on SIGHUP)."""
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        snapshot = self._latest()
        success = GaugeMetricFamily(
            "gpuwatch_scrape_collector_success",
            "Whether a collector succeeded in this scrape.",
            labels=["collector"],
        )
        duration = GaugeMetricFamily(
            "gpuwatch_scrape_collector_duration_seconds",
            "How long a collector took to render the latest poll (scrapes of the same poll share one rendering).",
            labels=["collector"],
        )
        failed = []
        for name, collect in self._collectors.items():
            started = time.perf_counter()
            try:
                families = list(collect(snapshot))  # materialise: a failure yields nothing partial
                ok = 1.0
            except Exception:
                # Logged as an error when it starts failing; while it keeps failing (each rendering,
                # about one per poll) at debug level.
                if name in self.failed:
                    log.debug("collector %s failed again", name, exc_info=True)
                else:
                    log.exception("collector %s failed; its series are left out and /-/ready answers 503", name)
                families, ok = [], 0.0
                failed.append(name)
            yield from families
            success.add_metric([name], ok)
            duration.add_metric([name], time.perf_counter() - started)
        for name in set(self.failed) - set(failed):
            log.info("collector %s renders again", name)
        self.failed = tuple(failed)
        yield success
        yield duration


def build_registry(
    latest: Callable[[], Snapshot],
    include_process: bool = True,
    collectors: dict[str, ConcernCollector] | None = None,
) -> CollectorRegistry:
    """A fresh registry over ``latest``; ``include_process`` adds the daemon's own CPU and memory."""
    return registry_for(SnapshotCollector(latest, collectors or COLLECTORS), include_process)


def registry_for(collector: SnapshotCollector, include_process: bool = True) -> CollectorRegistry:
    """A fresh registry over ``collector`` (kept by the caller, who reads its :attr:`~SnapshotCollector.failed`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if include_process:
        ProcessCollector(namespace="gpuwatch", registry=registry)
    return registry
