"""The token tracker over fake servers and fake GPU statuses: resets, outages, attribution."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from waiting import wait_until

from gpuwatch.model import GpuIdentity, GpuProcess, GpuReading, GpuStatus, Snapshot
from gpuwatch.tokens.attribution import Attribution, AttributionError
from gpuwatch.tokens.fetch import FetchError, Response
from gpuwatch.tokens.source import SourceConfig
from gpuwatch.tokens.tracker import TokenTracker


@dataclass
class FakeServer:
    """A vLLM-shaped endpoint whose counters the test sets; ``fail`` makes the next fetches fail."""

    generation: float = 0.0
    prompt: float = 0.0
    start_time: float = 1000.0
    fail: str | None = None
    fetches: int = 0

    def fetch(self, url: str, timeout_s: float, max_bytes: int, consume: Callable[[bytes], None]) -> Response:
        self.fetches += 1
        if self.fail:
            raise FetchError(self.fail)
        consume(
            f"process_start_time_seconds {self.start_time}\n"
            f'vllm:generation_tokens_total{{engine="0"}} {self.generation}\n'
            f'vllm:prompt_tokens_total{{engine="0"}} {self.prompt}\n'.encode()
        )
        return Response(start_time_header=None)


@dataclass
class FakeHost:
    """Two GPUs drawing a fixed power; the test moves time and the server's counters together."""

    now: float = 0.0
    energy: list[float] = field(default_factory=lambda: [1000.0, 2000.0])
    resets: list[int] = field(default_factory=lambda: [0, 0])
    up: list[bool] = field(default_factory=lambda: [True, True])
    pids: dict[int, tuple[int, ...]] = field(default_factory=lambda: {0: (42,), 1: (42,)})

    def snapshot(self) -> Snapshot:
        """One poll of the two GPUs, as the sampler publishes it."""
        return Snapshot(timestamp=self.now, nvml_up=True, gpus=tuple(self.statuses()))

    def statuses(self) -> list[GpuStatus]:
        return [
            GpuStatus(
                identity=GpuIdentity(index=i, uuid=f"GPU-{i}", name="sim", pci_bus_id=f"0:{i}"),
                up=self.up[i],
                reading=GpuReading(timestamp=self.now) if self.up[i] else None,
                energy_joules_total=self.energy[i],
                energy_resets=self.resets[i],
                processes=tuple(GpuProcess(pid, "vllm", None, None) for pid in self.pids.get(i, ())),
            )
            for i in range(2)
        ]


def run(tracker, host, server, seconds, watts=(150.0, 250.0), tokens_per_s=800.0):  # type: ignore[no-untyped-def]
    """One poll and one scrape per second; returns every status the polls published."""
    published = []
    for _ in range(seconds):
        host.now += 1.0
        for i, w in enumerate(watts):
            host.energy[i] += w
        server.generation += tokens_per_s
        server.prompt += 2 * tokens_per_s
        published.append(tracker.observe(host.snapshot()).sources[0])
        tracker.scrape_all()
    return published


def make(server: FakeServer, host: FakeHost, **config) -> TokenTracker:  # type: ignore[no-untyped-def]
    source = SourceConfig(url="http://127.0.0.1:8000/metrics", name="llm", **config)
    return TokenTracker([source], lambda: host.now, fetcher=server.fetch, attributor=lambda url, pids: pytest.fail())


def test_tokens_per_joule_sums_the_energy_of_every_gpu_of_the_source():
    server, host = FakeServer(), FakeHost()
    status = run(make(server, host, gpus=(0, 1)), host, server, 70)[-1]
    assert status.up and status.preset == "vllm" and status.gpus == (0, 1)
    assert status.efficiency is not None
    assert status.efficiency.tokens_per_joule["generation"] == pytest.approx(800.0 / 400.0)
    assert status.efficiency.tokens_per_joule["prompt"] == pytest.approx(1600.0 / 400.0)
    assert status.efficiency.window_seconds == pytest.approx(60.0)


def test_a_server_restart_drops_the_window_and_keeps_the_total_rising(caplog):
    server, host = FakeServer(), FakeHost()
    tracker = make(server, host, gpus=(0, 1))
    run(tracker, host, server, 30)
    before = tracker.observe(host.snapshot()).sources[0].tokens_total["generation"]
    server.generation, server.prompt, server.start_time = 0.0, 0.0, 2000.0
    with caplog.at_level(logging.INFO, logger="gpuwatch.tokens"):
        after = run(tracker, host, server, 12)
    assert "the server restarted (its start time changed)" in caplog.text
    # The poll before the first scrape of the restarted server has not seen the restart yet; from
    # then on a new window has to fill first.
    assert [s.efficiency is None for s in after[1:11]] == [True] * 10
    assert after[-1].efficiency is not None
    assert after[-1].efficiency.tokens_per_joule["generation"] == pytest.approx(2.0)
    totals = [s.tokens_total["generation"] for s in after]
    assert totals == sorted(totals) and totals[0] >= before


def test_a_counter_that_goes_back_near_zero_with_the_same_start_time_is_a_restart_too(caplog):
    server, host = FakeServer(), FakeHost()
    tracker = make(server, host, gpus=(0, 1))
    run(tracker, host, server, 20)  # 16,000 generated tokens
    server.generation = 0.0
    with caplog.at_level(logging.INFO, logger="gpuwatch.tokens"):
        status = run(tracker, host, server, 2, tokens_per_s=100.0)[-1]  # 100: under 1 % of 16,000
    assert "the server restarted (its generation counter went back below 16000, near zero)" in caplog.text
    assert status.up and status.tokens_total["generation"] == 16000.0 + 100.0


def test_an_energy_reset_drops_the_window():
    server, host = FakeServer(), FakeHost()
    tracker = make(server, host, gpus=(0, 1))
    run(tracker, host, server, 30)
    host.resets[1] += 1  # the sampler saw GPU 1's counter go back (its total stays monotonic)
    after = run(tracker, host, server, 12)
    assert after[0].efficiency is None
    assert after[-1].efficiency is not None


def test_a_gpu_without_energy_stops_the_figure_until_a_full_window_after_it_returns():
    server, host = FakeServer(), FakeHost()
    tracker = make(server, host, gpus=(0, 1))
    run(tracker, host, server, 30)
    host.up[0] = False
    assert all(s.efficiency is None for s in run(tracker, host, server, 5))
    host.up[0] = True
    after = run(tracker, host, server, 13)
    assert after[9].efficiency is None and after[-1].efficiency is not None


def test_a_failing_source_is_down_with_its_reason_logged_once(caplog):
    server, host = FakeServer(), FakeHost()
    tracker = make(server, host, gpus=(0, 1))
    run(tracker, host, server, 20)
    server.fail = "connection refused (is the server running, with metrics enabled?)"
    with caplog.at_level(logging.INFO, logger="gpuwatch.tokens"):
        down = run(tracker, host, server, 5)
        server.fail = None
        back = run(tracker, host, server, 2)
    assert all(not s.up and s.efficiency is None for s in down[1:])
    assert down[-1].error == server.fail or "connection refused" in (down[-1].error or "")
    assert caplog.text.count("connection refused") == 1
    assert "token source llm answers again" in caplog.text
    assert back[-1].up


def test_auto_attribution_finds_the_gpus_and_looks_again_after_a_restart():
    server, host = FakeServer(), FakeHost(pids={0: (42,), 1: (7,)})
    asked: list[dict[int, tuple[int, ...]]] = []

    def attribute(url, gpu_pids):  # type: ignore[no-untyped-def]
        asked.append(dict(gpu_pids))
        listening = 42 if len(asked) == 1 else 43
        return Attribution(gpus=tuple(i for i, pids in gpu_pids.items() if listening in pids), pid=listening)

    source = SourceConfig(url="http://127.0.0.1:8000/metrics", name="llm")
    tracker = TokenTracker([source], lambda: host.now, fetcher=server.fetch, attributor=attribute)
    status = run(tracker, host, server, 15)[-1]
    assert status.gpus == (0,) and status.gpus_from == "auto" and len(asked) == 1
    # The server restarts onto both GPUs.
    host.pids = {0: (43,), 1: (43,)}
    server.generation, server.start_time = 0.0, 3000.0
    status = run(tracker, host, server, 3)[-1]
    assert status.gpus == (0, 1) and len(asked) == 2
    assert run(tracker, host, server, 30)[-1].gpus == (0, 1) and len(asked) == 2


def test_auto_attribution_that_fails_says_what_to_do_and_retries_later(caplog):
    server, host = FakeServer(), FakeHost()
    calls = []

    def attribute(url, gpu_pids):  # type: ignore[no-untyped-def]
        calls.append(host.now)
        raise AttributionError("the process listening on port 8000 belongs to another user; set gpus = [...]")

    source = SourceConfig(url="http://127.0.0.1:8000/metrics", name="llm")
    tracker = TokenTracker([source], lambda: host.now, fetcher=server.fetch, attributor=attribute)
    with caplog.at_level(logging.WARNING, logger="gpuwatch.tokens"):
        status = run(tracker, host, server, 25)[-1]
    assert status.up and status.gpus == () and status.efficiency is None
    assert calls == [1.0, 11.0, 21.0]
    assert caplog.text.count("set gpus = [...]") == 1


def test_a_stuck_scrape_never_holds_up_the_poll():
    """The scraping thread blocks in its fetch; observe() (the poll) carries on regardless."""
    release, entered = threading.Event(), threading.Event()
    host = FakeHost()

    def stuck(url: str, timeout_s: float, max_bytes: int, consume: Callable[[bytes], None]) -> Response:
        entered.set()
        release.wait(10)
        raise FetchError("released")

    source = SourceConfig(url="http://127.0.0.1:8000/metrics", name="llm", gpus=(0, 1))
    tracker = TokenTracker([source], lambda: host.now, fetcher=stuck, attributor=lambda u, p: pytest.fail())
    tracker.start()
    try:
        tracker.observe(host.snapshot())
        assert entered.wait(5)
        for _ in range(100):
            host.now += 1
            assert tracker.observe(host.snapshot()).sources[0].error == "not scraped yet"
    finally:
        release.set()
        tracker.stop()


def test_a_sources_snapshot_has_this_polls_energy_and_the_tokens_scraped_after_the_poll_before():
    """The one-poll lag between energy and tokens, as published."""
    server, host = FakeServer(), FakeHost()
    tracker = make(server, host, gpus=(0, 1))
    host.now, server.generation = 1.0, 800.0
    first = tracker.observe(host.snapshot())
    assert first.gpu_timestamp == 1.0 and first.sources[0].tokens_total == {}  # nothing scraped yet
    tracker.scrape_all()  # the scrape the poll at 1 s woke
    host.now, server.generation = 2.0, 1600.0  # the server counts on; the next scrape follows the next poll
    second = tracker.observe(host.snapshot())
    assert second.gpu_timestamp == 2.0 and second.sources[0].tokens_total["generation"] == 800.0
    assert tracker.latest is second


def test_once_started_the_tracker_takes_snapshots_in_on_its_own_thread():
    server, host = FakeServer(), FakeHost()
    tracker = make(server, host, gpus=(0, 1))
    threads: list[str] = []
    tracker.subscribe(lambda published: threads.append(threading.current_thread().name))
    tracker.start()
    try:
        host.now = 1.0
        tracker.on_snapshot(host.snapshot())  # what the poll thread calls: a hand-off, no bookkeeping
        assert wait_until(lambda: tracker.latest is not None)
        assert threads == ["gpuwatch-tokens"]
        assert tracker.latest is not None and tracker.latest.gpu_timestamp == 1.0
    finally:
        tracker.stop()
