"""The runtime, assembled in one place: host (real or simulated driver), sampler, token tracker,
exposition, and their teardown in one order.

The daemon, `gpuwatch status --direct/--simulate`, the tests and the benchmarks all build it here::

    with assemble(RuntimeOptions(simulate="inference-host")) as rt:
        rt.start(threads=False)      # simulated servers, token tracker
        snapshot = rt.step()         # one poll, the tracker takes it in

Data flows one way: the sampler publishes each GPU snapshot to its subscribers (the token tracker,
or else the exposition's pre-rendering); the tracker publishes a SourcesSnapshot of its own (and
then the exposition pre-renders); :meth:`Runtime.latest` merges the two when anything renders.

Threading contract: :meth:`Runtime.reconfigure` may be called from any thread (the daemon calls it
on SIGHUP from its main thread); it only sets intervals, the tokens window, the collector switches
and prices, each picked up by the next poll, wait, snapshot or rendering. Nothing else is changed on
a running runtime.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client import CollectorRegistry

from gpuwatch.analysis.efficiency import DEFAULT_WINDOW_S
from gpuwatch.analysis.health import HealthThresholds
from gpuwatch.analysis.ledger import CostSettings
from gpuwatch.collectors import CollectorSettings, select
from gpuwatch.exporter.exposition import CachedExposition
from gpuwatch.exporter.registry import SnapshotCollector, registry_for
from gpuwatch.host import Host, real_host, simulated_host, start_simulated_servers
from gpuwatch.k8s.podresources import DEFAULT_SOCKET
from gpuwatch.k8s.pods import DEFAULT_REFRESH_S, PodAttributor
from gpuwatch.model import PodsSnapshot, Snapshot, SourcesSnapshot
from gpuwatch.nvml import use_library
from gpuwatch.page.history import History
from gpuwatch.sampler import Sampler
from gpuwatch.sim.clock import ManualClock, SimClock
from gpuwatch.sim.inference import InferenceEndpoint
from gpuwatch.sim.kernel_log import IN_MEMORY
from gpuwatch.status import to_document
from gpuwatch.tokens.proxy import OllamaProxy, Tally
from gpuwatch.tokens.source import SourceConfig
from gpuwatch.tokens.tracker import TokenTracker
from gpuwatch.xidlog import XidLog


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """What a runtime is built from (a subset of the serve settings)."""

    simulate: str | None = None  # scenario name or path; None reads the real driver
    sim_speed: float = 1.0
    poll_interval_s: float = 1.0
    process_interval_s: float = 10.0
    health: HealthThresholds = field(default_factory=HealthThresholds)
    tokens: tuple[SourceConfig, ...] = ()  # none: the simulated scenario's own servers, if any
    tokens_window_s: float = DEFAULT_WINDOW_S
    event_thread: bool = False  # await Xid events on a thread of their own (the daemon)
    sim_source_timeout_s: float | None = None  # scrape timeout for the simulated servers (default: a source's)
    collectors: CollectorSettings = field(default_factory=CollectorSettings)  # which collectors run
    pods: bool | None = None  # pod attribution (gpuwatch/k8s/); None: on a real host when the pods collector runs
    pod_resources_socket: str = DEFAULT_SOCKET
    pods_refresh_s: float = DEFAULT_REFRESH_S
    cost: CostSettings = field(default_factory=CostSettings)  # [cost]: prices for the token sources' ledger
    # the kernel log's Xid lines (gpuwatch.xidlog): off, auto, kmsg, journal or a file path; with
    # --simulate, auto reads the simulated host's own kernel log and a path is where it writes it
    xid_log: str = "off"


class ProxyListenError(OSError):
    """A token source's counting proxy cannot listen where it is told to."""


class MergedSnapshot:
    """The GPU snapshot with the token sources' merged in; the same object while neither changes,
    so a rendering cached by snapshot stays valid until one of them does."""

    def __init__(self, sampler: Sampler, tokens: TokenTracker | None, pods: PodAttributor | None = None) -> None:
        self._sampler = sampler
        self._tokens = tokens
        self._pods = pods
        self._last: tuple[Snapshot, SourcesSnapshot | None, PodsSnapshot | None, Snapshot] | None = None

    def __call__(self) -> Snapshot:
        gpus = self._sampler.latest
        sources = None if self._tokens is None else self._tokens.latest
        pods = None if self._pods is None else self._pods.latest
        last = self._last
        if last is not None and last[0] is gpus and last[1] is sources and last[2] is pods:
            return last[3]
        merged = gpus if sources is None else replace(gpus, sources=sources.sources)
        merged = merged if pods is None else replace(merged, pods=pods)
        self._last = (gpus, sources, pods, merged)
        return merged


class Runtime:
    """Everything `gpuwatch serve` runs, built by :func:`assemble`."""

    def __init__(self, host: Host, options: RuntimeOptions) -> None:
        self.host = host
        self.options = options
        self.kernel_log = kernel_log(host, options)
        self.sampler = Sampler(
            host.reader_factory,
            host.clock,
            options.poll_interval_s,
            options.process_interval_s,
            health=options.health,
            event_thread=options.event_thread,
            kernel_log=self.kernel_log,
        )
        self.servers: list[InferenceEndpoint] = []
        self._latest: MergedSnapshot = MergedSnapshot(self.sampler, None)
        self.collector = SnapshotCollector(self.latest, select(options.collectors))
        self.registry: CollectorRegistry = registry_for(self.collector)
        self.exposition = CachedExposition(self.registry, self.latest)
        self._tokens: TokenTracker | None = None
        self._started = False
        # the live page's last 15 minutes, fed by the snapshots (subscribed in start)
        self.history = History(options.poll_interval_s)
        self._collectors = options.collectors
        self._attributing = False  # a token source finds its GPUs from NVML's process lists
        self.pods: PodAttributor | None = None
        wants_pods = options.simulate is None and "pods" in options.collectors.enabled
        if options.pods or (options.pods is None and wants_pods):
            self.pods = PodAttributor(host.clock.time, options.pod_resources_socket, options.pods_refresh_s)
            self._latest = MergedSnapshot(self.sampler, None, self.pods)
        self.proxies: list[OllamaProxy] = []  # Ollama sources' counting proxies (``listen``)

    @property
    def tokens(self) -> TokenTracker | None:
        """The token tracker, once :meth:`start` found sources to track."""
        return self._tokens

    def latest(self) -> Snapshot:
        """The latest GPU snapshot with the token sources merged in (what /metrics and /status show)."""
        return self._latest()

    def ready(self) -> bool:
        """What ``/-/ready`` says: a poll has finished, and the latest rendering of ``/metrics``
        succeeded with every collector (a rendering that lost a collector or failed whole was logged
        as an error when it began)."""
        return self.sampler.ready.is_set() and self.exposition.render_error is None and not self.collector.failed

    def status_document(self) -> dict[str, Any]:
        """The ``/status`` JSON document of :meth:`latest`, with how old its poll is."""
        loop = self.sampler.loop
        return to_document(self.latest(), loop.data_age_s(), self.sampler.poll_interval_s, loop.stale_after_s)

    def start(self, threads: bool = True) -> None:
        """Start the scenario's simulated servers, the token tracker and (with ``threads``) polling.

        Without ``threads`` nothing runs by itself: :meth:`step` polls, :meth:`scrape_tokens` scrapes.
        """
        assert not self._started, "a runtime starts once"
        self._started = True
        simulated = start_simulated_servers(self.host)
        self.servers = [endpoint for endpoint, _ in simulated]
        sources: Sequence[SourceConfig] = self.options.tokens or [source for _, source in simulated]
        if not self.options.tokens and self.options.sim_source_timeout_s is not None:
            sources = [replace(source, timeout_s=self.options.sim_source_timeout_s) for source in sources]
        self._attributing = any(source.gpus is None for source in sources)
        self.sampler.list_processes = self._lists_processes()
        prerender = self.exposition.prerender
        if self.pods is not None:
            self.sampler.subscribe(self.pods.on_snapshot)
            if threads:
                self.pods.start()
        tallies = self._start_proxies(sources)
        if sources:
            tracker = TokenTracker(
                sources, self.host.clock.time, self.options.tokens_window_s, cost=self.options.cost, tallies=tallies
            )
            self._tokens, self._latest = tracker, MergedSnapshot(self.sampler, tracker, self.pods)
            self.sampler.subscribe(tracker.on_snapshot)
            tracker.subscribe(lambda _: prerender())  # once the sources have taken the poll in
        else:
            self.sampler.subscribe(lambda _: prerender())
        self.sampler.subscribe(self.history.on_snapshot)  # last: the page must never hold up /metrics
        if threads:
            if self._tokens is not None:
                self._tokens.start()
            if self.kernel_log is not None:
                self.kernel_log.start()
            self.sampler.start()

    def _start_proxies(self, sources: Sequence[SourceConfig]) -> dict[str, Tally]:
        """A counting proxy for each source with ``listen``; raises ProxyListenError if one cannot listen."""
        tallies: dict[str, Tally] = {}
        for source in sources:
            if source.listen is None:
                continue
            tally = Tally()
            try:
                proxy = OllamaProxy(source.listen, source.url, tally)
            except OSError as exc:
                raise ProxyListenError(
                    f"token source {source.name}: cannot listen on {source.listen}: {exc.strerror or exc}"
                ) from None
            proxy.start()
            self.proxies.append(proxy)
            tallies[source.name] = tally
        return tallies

    def step(self) -> Snapshot:
        """One poll (the token tracker takes it in on this thread); the merged snapshot."""
        self.sampler.poll_once()
        return self.latest()

    def refresh_pods(self) -> None:
        """Refresh pod attribution once, on this thread (it refreshes on its own thread when started)."""
        if self.pods is not None:
            self.pods.refresh(self.sampler.latest)

    def scrape_tokens(self) -> None:
        """Scrape every token source once, on this thread."""
        if self._tokens is not None:
            self._tokens.scrape_all()

    def reconfigure(
        self,
        poll_interval_s: float,
        process_interval_s: float,
        tokens_window_s: float,
        collectors: CollectorSettings | None = None,
        cost: CostSettings | None = None,
    ) -> None:
        """New intervals, tokens window, collector switches and prices (see the module doc's threading contract)."""
        self.sampler.configure(poll_interval_s, process_interval_s)
        if self._tokens is not None:
            self._tokens.configure(tokens_window_s, cost)
        if collectors is not None and collectors != self._collectors:
            self._collectors = collectors
            self.collector.use(select(collectors))
            self.exposition.invalidate()
            self.sampler.list_processes = self._lists_processes()

    def _lists_processes(self) -> bool:
        """Whether the slow loop lists GPU processes: for the per-process series, or for a token
        source that finds its GPUs by them. Else the listing (a slow NVML call per GPU) is skipped,
        and /status shows no processes."""
        return "processes" in self._collectors.enabled or self._attributing

    def close(self) -> None:
        """Stop in order: polling, the token tracker, the counting proxies, the simulated servers, the driver."""
        self.sampler.stop(timeout_s=1.0)
        if self.kernel_log is not None:
            self.kernel_log.close()
        if self._tokens is not None:
            self._tokens.stop(timeout_s=0.5)
        if self.pods is not None:
            self.pods.stop(timeout_s=0.5)
        for proxy in self.proxies:
            proxy.stop()
        for endpoint in self.servers:
            endpoint.stop()
        if self.host.library is not None:
            self.host.library.close()  # its workload processes end with it
            use_library(None)


def open_host(options: RuntimeOptions, clock: SimClock | ManualClock | None = None) -> Host:
    """The real driver, or the scenario's simulated one (may raise ScenarioError)."""
    if options.simulate is None:
        return real_host()
    return simulated_host(
        options.simulate, options.sim_speed, clock=clock, kernel_log_path=sim_kernel_log_path(options)
    )


def sim_kernel_log_path(options: RuntimeOptions) -> str | None:
    """Where a simulated host writes its kernel log: the path ``xid_log`` names, or for ``auto`` its
    own memory; None when the kernel log is off or read from the real host."""
    if options.xid_log in ("off", "kmsg", "journal"):
        return None
    return IN_MEMORY if options.xid_log == "auto" else options.xid_log


def kernel_log(host: Host, options: RuntimeOptions) -> XidLog | None:
    """The kernel-log reader ``options.xid_log`` asks for; None when off. A simulated host's log
    counts seconds from the scenario's start (its boot); a real one's from the machine's boot."""
    if options.xid_log == "off":
        return None
    library = host.library
    sim_log = None if library is None else library.kernel_log
    if sim_log is not None:
        feed = sim_log.read if sim_log.path == IN_MEMORY else None
        return XidLog(sim_log.path, host.clock.time, sim_log.since_boot, feed=feed)
    return XidLog(options.xid_log, host.clock.time, time.monotonic)


@contextlib.contextmanager
def assemble(
    options: RuntimeOptions, clock: SimClock | ManualClock | None = None, host: Host | None = None
) -> Iterator[Runtime]:
    """Build a runtime (nothing runs until :meth:`Runtime.start`) and tear it down on exit.

    ``clock`` steps a simulated host by hand (tests, `status --simulate`); ``host`` is for a host
    built elsewhere (a test's own reader factory).
    """
    runtime = Runtime(host or open_host(options, clock), options)
    try:
        yield runtime
    finally:
        runtime.close()
