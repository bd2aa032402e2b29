"""Token sources on the poll's rhythm: scrape each server, find its GPUs, join tokens with energy.

The tracker is downstream of the sampler: it subscribes to the GPU snapshots
(:meth:`TokenTracker.on_snapshot`) and publishes a :class:`~gpuwatch.model.SourcesSnapshot` of its
own (:attr:`TokenTracker.latest`), which `/metrics` and `/status` merge with the GPU snapshot when
they render. Once started, a thread of the tracker's takes each GPU snapshot in
(:meth:`TokenTracker.observe`: the energy of each source's GPUs, then the sources' statuses), so the
poll thread does no token bookkeeping; and each source has a scraping thread of its own, woken after
every snapshot taken in, so a slow, dead or enormous endpoint delays nothing but its own next scrape.
Tokens lag energy by one poll (see SourcesSnapshot). No NVML call is made here.

A source's token series starts again when its server restarts, and its energy series when a GPU's
energy counter resets (driver reload), when its GPUs change, or while one of them reports no
energy. A window needs both series across its whole span, so it never spans a discontinuity of
either, and no negative or inflated rate can come out.

Each source also keeps an energy ledger (:mod:`gpuwatch.analysis.ledger` decides): at each poll its
share of its GPUs' energy and time, priced at the ``[cost]`` prices then in force, and the idle
spells between the scrapes that poll's energy now covers.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gpuwatch.analysis.counters import ResetSafeCounter, Restarts
from gpuwatch.analysis.efficiency import (
    DEFAULT_WINDOW_S,
    MIN_WINDOW_S,
    EnergyPoint,
    TokenPoint,
    window_efficiency,
)
from gpuwatch.analysis.ledger import (
    CostSettings,
    IdleSpell,
    add_share,
    cost_per_million_tokens,
    energy_deltas,
    settle,
    split_energy,
)
from gpuwatch.model import GpuStatus, LoadedModel, Snapshot, SourcesSnapshot, SourceStatus
from gpuwatch.records import SourceLedger
from gpuwatch.tokens import attribution, disabled, ollama, presets
from gpuwatch.tokens.fetch import FetchError, Response, fetch
from gpuwatch.tokens.parse import CountReader, ExpositionError, TokenCounts
from gpuwatch.tokens.proxy import Tally
from gpuwatch.tokens.source import SourceConfig

log = logging.getLogger(__name__)

RETRY_ATTRIBUTION_S = 10.0
SUMMARY_EVERY_S = 60.0  # at most one line a minute on which sources are down
SUMMARY_NAMES = 5

Fetcher = Callable[[str, float, int, Callable[[bytes], None]], Response]
Attributor = Callable[[str, Mapping[int, Sequence[int]]], attribution.Attribution]


@dataclass(slots=True)
class _Source:
    """What the tracker remembers about one source."""

    config: SourceConfig
    metrics: presets.TokenMetrics | None
    preset: str | None
    gpus: tuple[int, ...] | None  # None: not yet attributed
    tokens: deque[TokenPoint] = field(default_factory=deque)
    energy: deque[EnergyPoint] = field(default_factory=deque)
    counters: dict[str, ResetSafeCounter] = field(default_factory=dict)
    start_marker: float | str | None = None
    restarts: Restarts = field(default_factory=Restarts)
    energy_resets: tuple[int, ...] | None = None
    pids: frozenset[int] = frozenset()  # the server's process tree, when attributed automatically
    reattribute: bool = False
    next_attribution_at: float = float("-inf")
    up: bool = False
    error: str | None = "not scraped yet"
    logged_error: str | None = None
    attribution_error: str | None = None  # the last one logged
    break_reason: str | None = None
    last_scrape: float | None = None
    scrape_duration: float | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    # the energy ledger (analysis/ledger.py): its totals, its energy at each poll, scrapes to account
    ledger: SourceLedger | None = None
    attributed: deque[EnergyPoint] = field(default_factory=deque)
    pending: deque[TokenPoint] = field(default_factory=deque)
    spell: IdleSpell = field(default_factory=IdleSpell)
    models: tuple[LoadedModel, ...] = ()  # as its server lists them (Ollama)


class TokenTracker:
    """Scrapes token sources and computes their tokens per joule from the GPUs' energy counters."""

    def __init__(
        self,
        sources: Sequence[SourceConfig],
        clock: Callable[[], float],
        window_s: float = DEFAULT_WINDOW_S,
        min_window_s: float = MIN_WINDOW_S,
        fetcher: Fetcher = fetch,
        attributor: Attributor = attribution.attribute,
        cost: CostSettings | None = None,
        tallies: Mapping[str, Tally] | None = None,  # source name -> its Ollama proxy's counts
    ) -> None:
        self._tallies = dict(tallies or {})
        self._sources = [
            _Source(config=c, metrics=c.metrics, preset=None if c.metrics is None else c.preset, gpus=c.gpus)
            for c in sources
        ]
        self._clock = clock
        self.window_s = window_s
        self._min_window_s = min_window_s  # never more than the window itself (see _status)
        self._fetch = fetcher
        self._attribute = attributor
        self._lock = threading.Lock()
        self._gpu_pids: dict[int, tuple[int, ...]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._arrived = threading.Event()  # a GPU snapshot waits in _pending for the tracker's thread
        self._pending: Snapshot | None = None
        self._subscribers: list[Callable[[SourcesSnapshot], None]] = []
        self._summarised: tuple[str, ...] = ()  # the sources down at the last summary line
        self._next_summary_at = float("-inf")
        self.latest: SourcesSnapshot | None = None  # None until the first GPU snapshot is taken in
        self._cost = cost or CostSettings()
        self._gpu_energy: dict[int, tuple[float, float]] = {}  # GPU -> (reading time, reset-safe energy)

    def configure(self, window_s: float, cost: CostSettings | None = None) -> None:
        """A new efficiency window and prices (SIGHUP); safe from any thread, used from the next snapshot on."""
        with self._lock:
            self.window_s = window_s
            if cost is not None:
                self._cost = cost

    def subscribe(self, subscriber: Callable[[SourcesSnapshot], None]) -> None:
        """Called with each SourcesSnapshot, after :attr:`latest` is set (subscribe before start)."""
        self._subscribers.append(subscriber)

    # -- downstream of the sampler ------------------------------------------------------------------

    def on_snapshot(self, snapshot: Snapshot) -> None:
        """The sampler's subscriber: hand the snapshot to the tracker's thread (or, not started, take it in now)."""
        if not self._threads:
            self.observe(snapshot)
            return
        self._pending = snapshot  # a newer one replaces one not taken in yet: energy counters are cumulative
        self._arrived.set()

    def observe(self, snapshot: Snapshot) -> SourcesSnapshot:
        """Record this poll's energy for every source, wake the scrapers, publish the sources' statuses."""
        gpus = snapshot.gpus
        by_index = {g.identity.index: g for g in gpus}
        with self._lock:
            self._gpu_pids = {g.identity.index: tuple(p.pid for p in g.processes) for g in gpus if g.up}
            self._account_energy(by_index)
            for source in self._sources:
                self._record_energy(source, by_index)
                if source.pids and not any(source.pids & set(p) for p in self._gpu_pids.values()):
                    source.reattribute = True  # its processes left every GPU: restarted elsewhere?
            published = SourcesSnapshot(snapshot.timestamp, tuple(self._status(s) for s in self._sources))
            self._summarise(snapshot.timestamp)
        self.latest = published
        for source in self._sources:
            source.wake.set()
        for subscriber in self._subscribers:
            subscriber(published)
        return published

    def _record_energy(self, source: _Source, by_index: Mapping[int, GpuStatus]) -> None:
        if not source.gpus:
            return
        stamps, joules, resets = [], 0.0, []
        for index in source.gpus:
            status = by_index.get(index)
            if status is None or not status.up or status.reading is None or status.energy_joules_total is None:
                self._break(source, f"GPU {index} reports no energy", tokens=False)
                return
            stamps.append(status.reading.timestamp)
            joules += status.energy_joules_total
            resets.append(status.energy_resets)
        if source.energy_resets is not None and tuple(resets) != source.energy_resets:
            self._break(source, "a GPU's energy counter went back (driver reload or GPU reset)", tokens=False)
        source.energy_resets = tuple(resets)
        timestamp = sum(stamps) / len(stamps)
        if source.energy and timestamp <= source.energy[-1].timestamp:
            return  # a poll left behind in a hung read finished late; its readings are older
        source.energy.append(EnergyPoint(timestamp, joules))
        source.break_reason = None
        self._prune(source.energy, timestamp)

    def _account_energy(self, by_index: Mapping[int, GpuStatus]) -> None:
        """The ledger: this poll's energy of each GPU, shared among the sources up on it; then the
        idle intervals between scrapes that the energy now covers."""
        stamps, totals = {}, {}
        for index, g in by_index.items():
            if g.up and g.reading is not None and g.energy_joules_total is not None:
                stamps[index], totals[index] = g.reading.timestamp, g.energy_joules_total
        last = self._gpu_energy  # a poll left behind in a hung read may finish late: only newer readings count
        fresh = {i: total for i, total in totals.items() if i not in last or stamps[i] > last[i][0]}
        deltas = energy_deltas({i: total for i, (_, total) in last.items()}, fresh)
        gpu_seconds = {i: stamps[i] - last[i][0] for i in deltas}
        self._gpu_energy = {i: (stamps[i], totals[i]) if i in fresh else last[i] for i in totals}
        serving = {n: s.gpus for n, s in enumerate(self._sources) if s.up and s.gpus}
        shares, times = split_energy(deltas, serving), split_energy(gpu_seconds, serving)
        for n, source in enumerate(self._sources):
            share = shares.get(n)
            if share is None:  # no energy for it this poll (down, GPUs unknown or not reporting energy):
                source.attributed.clear()  # no idle interval may span the gap, and scrapes before it
                while len(source.pending) > 1:  # can never be accounted (nor pile up on a GPU without
                    source.pending.popleft()  # an energy counter)
                source.spell = IdleSpell()
                continue
            source.ledger = add_share(source.ledger, share, times[n], self._cost)
            moved = [stamps[i] for i in source.gpus or () if i in deltas]
            timestamp = sum(moved) / len(moved)
            if not source.attributed or timestamp > source.attributed[-1].timestamp:
                source.attributed.append(EnergyPoint(timestamp, source.ledger.energy_joules))
            source.ledger, done, source.spell = settle(
                source.ledger, list(source.pending), list(source.attributed), source.spell
            )
            for _ in range(done):
                source.pending.popleft()
            oldest = source.pending[0].timestamp if source.pending else source.attributed[-1].timestamp
            while len(source.attributed) > 2 and source.attributed[1].timestamp <= oldest:
                source.attributed.popleft()

    def _prune(self, series: deque[EnergyPoint] | deque[TokenPoint], newest: float) -> None:
        # Keep one window and a little more: the newest scrape may lie a poll or two behind the energy.
        while len(series) > 2 and series[1].timestamp < newest - self.window_s - 10.0:
            series.popleft()

    def _break(self, source: _Source, reason: str, tokens: bool = True) -> None:
        """Start the token series (``tokens``) or the energy series again: no window may span ``reason``."""
        (source.tokens if tokens else source.energy).clear()
        if reason != source.break_reason:
            log.info("token source %s: efficiency window starts again: %s", source.config.name, reason)
            source.break_reason = reason

    def _summarise(self, now: float) -> None:
        """A line naming the sources down, when that changed, at most once a minute: with many
        sources failing at once, their own lines are rate-limited and most would go unsaid."""
        down = tuple(s.config.name for s in self._sources if not s.up and s.logged_error is not None)
        if down == self._summarised or now < self._next_summary_at or max(len(down), len(self._summarised)) < 2:
            return
        self._summarised, self._next_summary_at = down, now + SUMMARY_EVERY_S
        if not down:
            log.info("token sources: all %d answer again", len(self._sources))
            return
        named = ", ".join(down[:SUMMARY_NAMES]) + (
            f" and {len(down) - SUMMARY_NAMES} more" if len(down) > SUMMARY_NAMES else ""
        )
        log.warning(
            "token sources: %d of %d down: %s (each one's reason in /status)", len(down), len(self._sources), named
        )

    def _status(self, source: _Source) -> SourceStatus:
        efficiency = None
        if source.up:
            efficiency = window_efficiency(
                list(source.tokens), list(source.energy), self.window_s, min(self._min_window_s, self.window_s)
            )
        return SourceStatus(
            name=source.config.name,
            url=source.config.shown_url,
            up=source.up,
            error=source.error,
            preset=source.preset,
            gpus=source.gpus or (),
            gpus_from="config" if source.config.gpus is not None else "auto",
            tokens_total={kind: c.total for kind, c in source.counters.items()},
            efficiency=efficiency,
            last_scrape_timestamp=source.last_scrape,
            scrape_duration_seconds=source.scrape_duration,
            ledger=source.ledger,
            cost_per_million_tokens={}
            if efficiency is None
            else cost_per_million_tokens(efficiency, len(source.gpus or ()), self._cost),
            currency=self._cost.currency if self._cost.priced else None,
            models=source.models,
        )

    # -- scraping -----------------------------------------------------------------------------------

    def scrape_all(self) -> None:
        """Scrape every source once, one after the other (tests, one-shot use)."""
        for source in self._sources:
            self._scrape(source)

    def _scrape(self, source: _Source) -> None:
        config = source.config
        started = self._clock()
        counts: TokenCounts | None = None
        marker: float | str | None = None
        reader = CountReader(source.metrics, config.labels)  # the body is parsed as it arrives
        try:
            if config.preset == ollama.PRESET:
                counts = self._read_ollama(source)
            else:
                response = self._fetch(config.url, config.timeout_s, config.max_bytes, reader.feed)
                counts = reader.finish()
                marker = counts.start_time if counts.start_time is not None else response.start_time_header
            error = None
        except ValueError as exc:  # an /api/ps answer that is not Ollama's
            error = str(exc)
        except FetchError as exc:
            error = disabled.explain(source.preset or config.preset, exc.status, exc.body) or str(exc)
        except ExpositionError as exc:
            error = str(exc)
        finished = self._clock()
        with self._lock:
            source.last_scrape, source.scrape_duration = finished, finished - started
            if counts is None or counts.metrics is None:
                self._down(source, error or "no token counts")
            else:
                self._take(source, counts.metrics, counts, marker, (started + finished) / 2)
            due = (
                source.config.gpus is None
                and (source.gpus is None or source.reattribute)
                and finished >= source.next_attribution_at
                and source.up
            )
            gpu_pids = dict(self._gpu_pids)
        if due:
            self._attribute_gpus(source, gpu_pids, finished)

    def _read_ollama(self, source: _Source) -> TokenCounts:
        """Ollama's loaded models, and the counts of its proxy (none without one)."""
        config = source.config
        models = ollama.read_models(self._fetch, config.url, config.timeout_s, config.max_bytes)
        with self._lock:
            source.models = models
        tally = self._tallies.get(config.name)
        tokens = {} if tally is None else ollama.counts(tally)
        return TokenCounts(tokens=tokens, metrics=ollama.METRICS, read=ollama.METRICS)

    def _down(self, source: _Source, error: str) -> None:
        source.up, source.error = False, error
        source.pending.clear()  # no idle interval spans an outage
        source.spell = IdleSpell()
        if error != source.logged_error:
            log.warning("token source %s (%s): %s", source.config.name, source.config.shown_url, error)
            source.logged_error = error

    def _take(
        self,
        source: _Source,
        metrics: presets.TokenMetrics,
        counts: TokenCounts,
        marker: float | str | None,
        timestamp: float,
    ) -> None:
        if source.metrics is None:
            source.metrics = metrics
            source.preset = next((name for name, m in presets.PRESETS.items() if m == metrics), "custom")
            log.info("token source %s: recognised %s counters", source.config.name, source.preset)
        last = {kind: counter.last_raw for kind, counter in source.counters.items()}
        restarted = marker is not None and source.start_marker is not None and marker != source.start_marker
        restart, refused, source.restarts = source.restarts.judge(timestamp, last, counts.tokens, restarted)
        if refused is not None:
            self._down(source, refused)
            return
        if restart is not None:
            self._break(source, f"the server restarted ({restart})")
            source.reattribute = source.config.gpus is None
        source.start_marker = marker
        for kind, value in counts.tokens.items():
            counter = source.counters.get(kind)
            source.counters[kind] = ResetSafeCounter(value) if counter is None else counter.advance(value)
        if counts.tokens:  # an Ollama source without a proxy has models but no counts
            source.tokens.append(TokenPoint(timestamp, dict(counts.tokens)))
            source.pending.append(TokenPoint(timestamp, {kind: c.total for kind, c in source.counters.items()}))
            self._prune(source.tokens, timestamp)
        if not source.up and source.logged_error is not None:
            log.info("token source %s answers again", source.config.name)
        source.up, source.error, source.logged_error = True, None, None

    def _attribute_gpus(self, source: _Source, gpu_pids: Mapping[int, Sequence[int]], now: float) -> None:
        """Find the source's GPUs from its listening process (psutil work, outside the lock)."""
        try:
            found = self._attribute(source.config.url, gpu_pids)
        except attribution.AttributionError as exc:
            with self._lock:
                source.next_attribution_at = now + RETRY_ATTRIBUTION_S
                if source.gpus is None and str(exc) != source.attribution_error:
                    log.warning("token source %s: cannot find its GPUs: %s", source.config.name, exc)
                    source.attribution_error = str(exc)
            return
        tree = frozenset(attribution.process_tree(found.pid))
        with self._lock:
            source.reattribute = False
            source.next_attribution_at = now + RETRY_ATTRIBUTION_S  # never more often, whatever happens
            if not found.gpus:
                return  # NVML lists processes on the slow loop; the server may not be listed yet
            source.pids = tree
            if found.gpus != source.gpus:
                log.info(
                    "token source %s runs on GPU %s (process %d listening on port %d, and its children)",
                    source.config.name,
                    ", ".join(map(str, found.gpus)),
                    found.pid,
                    attribution.port_of(source.config.url),
                )
                source.energy.clear()  # energy of other GPUs
                source.gpus, source.energy_resets = found.gpus, None

    # -- threads --------------------------------------------------------------------------------------

    def start(self) -> None:
        """The thread that takes GPU snapshots in, and one scraping thread per source."""
        threads = [threading.Thread(target=self._take_in, name="gpuwatch-tokens", daemon=True)]
        for source in self._sources:
            threads.append(
                threading.Thread(
                    target=self._run, args=(source,), name=f"gpuwatch-tokens-{source.config.name}", daemon=True
                )
            )
        self._threads = threads
        for thread in threads:
            thread.start()

    def _take_in(self) -> None:
        while True:
            self._arrived.wait()
            self._arrived.clear()
            snapshot, self._pending = self._pending, None
            if self._stop.is_set():
                return
            if snapshot is None:
                continue
            try:
                self.observe(snapshot)
            except Exception:  # a bug in one snapshot's bookkeeping must not end it
                log.exception("token sources: taking a GPU snapshot in failed")

    def _run(self, source: _Source) -> None:
        while True:
            source.wake.wait()
            source.wake.clear()
            if self._stop.is_set():
                return
            try:
                self._scrape(source)
            except Exception:  # a bug in one scrape must not end scraping
                log.exception("token source %s: scrape failed", source.config.name)

    def stop(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        self._arrived.set()
        for source in self._sources:
            source.wake.set()
        for thread in self._threads:
            thread.join(timeout_s)
