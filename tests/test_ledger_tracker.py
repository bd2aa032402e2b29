"""The energy ledger inside the token tracker: fake GPUs and servers, then the simulator's truth."""

from __future__ import annotations

import pytest
from test_token_tracker import FakeHost, FakeServer, make, run

from gpuwatch.analysis.ledger import CostSettings
from gpuwatch.model import Snapshot
from gpuwatch.tokens.source import SourceConfig
from gpuwatch.tokens.tracker import TokenTracker

WATTS = (150.0, 250.0)  # FakeHost's two GPUs, per poll (one second)


def test_the_source_is_given_its_gpus_energy_from_its_first_poll_on():
    server, host = FakeServer(), FakeHost()
    tracker = make(server, host, gpus=(0, 1))
    statuses = run(tracker, host, server, 30, watts=WATTS)
    assert statuses[0].ledger is None  # no previous poll to take a difference from
    # the source is up once its first scrape (after poll 1) answered: polls 2 to 30 count
    assert statuses[-1].ledger is not None
    assert statuses[-1].ledger.energy_joules == pytest.approx(sum(WATTS) * 29)
    assert statuses[-1].ledger.idle_seconds == 0.0  # tokens moved in every interval


def test_idle_time_and_energy_while_up_with_no_tokens_moving():
    server, host = FakeServer(), FakeHost()
    tracker = make(server, host, gpus=(0, 1))
    run(tracker, host, server, 10, watts=WATTS)
    idle = run(tracker, host, server, 20, watts=WATTS, tokens_per_s=0.0)[-1].ledger
    assert idle is not None
    # scrapes come one a second after each poll; the 19 intervals between the 20 idle scrapes
    # (the first pairs with the last busy one) are idle, less the newest, which the polls do not cover yet
    assert idle.idle_seconds == pytest.approx(19.0)
    assert idle.idle_joules == pytest.approx(sum(WATTS) * 19.0)
    busy = run(tracker, host, server, 10, watts=WATTS)[-1].ledger
    assert busy is not None
    assert busy.idle_seconds == pytest.approx(20.0)  # the interval to the first busy scrape moved tokens
    assert busy.idle_joules < busy.energy_joules


def test_a_source_that_goes_down_is_given_nothing_and_keeps_its_totals():
    server, host = FakeServer(), FakeHost()
    tracker = make(server, host, gpus=(0, 1))
    before = run(tracker, host, server, 10, watts=WATTS)[-1].ledger
    server.fail = "connection refused"
    down = run(tracker, host, server, 10, watts=WATTS, tokens_per_s=0.0)
    assert not down[-1].up
    # the poll right after the failed scrape still counts the source up (its scrape had not failed yet)
    assert down[-1].ledger == down[1].ledger
    assert down[-1].ledger.energy_joules == pytest.approx(before.energy_joules + sum(WATTS))
    assert down[-1].ledger.idle_seconds == before.idle_seconds  # down is not idle
    server.fail = None
    after = run(tracker, host, server, 10, watts=WATTS, tokens_per_s=0.0)[-1].ledger
    assert after.energy_joules > down[-1].ledger.energy_joules
    # idle again, but no interval spans the outage: the first good scrape came before the poll
    # that counted the source up again, so intervals start at the second; the newest waits
    assert after.idle_seconds == pytest.approx(7.0)


def test_a_gpu_that_stops_reporting_gives_nothing_for_the_gap_and_never_a_negative():
    server, host = FakeServer(), FakeHost()
    tracker = make(server, host, gpus=(0, 1))
    start = run(tracker, host, server, 5, watts=WATTS)[-1].ledger
    host.up[1] = False
    gap = run(tracker, host, server, 5, watts=WATTS)[-1].ledger
    assert gap.energy_joules == pytest.approx(start.energy_joules + WATTS[0] * 5)
    host.up[1] = True
    host.energy[1] -= 1500.0  # even if a total went back, the GPU's first poll back only starts it again
    after = run(tracker, host, server, 5, watts=WATTS)[-1].ledger
    assert after.energy_joules == pytest.approx(gap.energy_joules + WATTS[0] * 5 + WATTS[1] * 4)


class TwoServers:
    """Two vLLM-shaped servers on one fake host, told apart by port."""

    def __init__(self) -> None:
        self.servers = {"8000": FakeServer(), "8001": FakeServer()}

    def fetch(self, url, timeout_s, max_bytes, consume):  # type: ignore[no-untyped-def]
        return self.servers[url.split(":")[2].split("/")[0]].fetch(url, timeout_s, max_bytes, consume)


def test_sources_sharing_a_gpu_split_its_energy_equally_and_nothing_is_counted_twice():
    host, two = FakeHost(), TwoServers()
    sources = [
        SourceConfig(url="http://127.0.0.1:8000/metrics", name="tp", gpus=(0, 1)),
        SourceConfig(url="http://127.0.0.1:8001/metrics", name="small", gpus=(1,)),
    ]
    tracker = TokenTracker(sources, lambda: host.now, fetcher=two.fetch, attributor=lambda url, pids: pytest.fail())
    for _ in range(10):
        host.now += 1.0
        host.energy[0] += WATTS[0]
        host.energy[1] += WATTS[1]
        for server in two.servers.values():
            server.generation += 100
        published = tracker.observe(host.snapshot())
        tracker.scrape_all()
    tp, small = (s.ledger for s in published.sources)
    assert tp.energy_joules == pytest.approx((WATTS[0] + WATTS[1] / 2) * 9)
    assert tp.spent == {}  # no [cost]: nothing priced
    assert small.energy_joules == pytest.approx(WATTS[1] / 2 * 9)
    assert tp.energy_joules + small.energy_joules == pytest.approx(sum(WATTS) * 9)


def test_cost_per_million_tokens_follows_the_window_and_a_new_price_applies_at_once():
    server, host = FakeServer(), FakeHost()
    cost = CostSettings(energy_price_per_kwh=0.36, currency="EUR")
    source = SourceConfig(url="http://127.0.0.1:8000/metrics", name="llm", gpus=(0, 1))
    tracker = TokenTracker(
        [source], lambda: host.now, fetcher=server.fetch, attributor=lambda u, p: pytest.fail(), cost=cost
    )
    status = run(tracker, host, server, 30, watts=WATTS)[-1]
    assert status.currency == "EUR"
    # the ledger priced every poll's energy from the second on: 29 x 400 J at 0.36 per kWh
    assert status.ledger.spent == pytest.approx({"EUR": 29 * 400 / 3.6e6 * 0.36})
    # 400 J per 800 generated tokens: 0.5 J, i.e. 0.5 / 3.6e6 kWh x 0.36 per kWh = 5e-8 per token
    assert status.efficiency.joules_per_token["generation"] == pytest.approx(0.5)
    assert status.cost_per_million_tokens == pytest.approx({"generation": 0.05, "total": 0.05 / 3})
    tracker.configure(tracker.window_s, CostSettings(energy_price_per_kwh=0.36, pue=2.0, currency="EUR"))
    assert run(tracker, host, server, 1, watts=WATTS)[-1].cost_per_million_tokens["generation"] == pytest.approx(0.1)
    tracker.configure(tracker.window_s, CostSettings())
    unpriced = run(tracker, host, server, 1, watts=WATTS)[-1]
    assert (unpriced.cost_per_million_tokens, unpriced.currency) == ({}, None)


IDLE_SPELL = """
name = "ledger-idle"
seed = 1
[[server]]
name = "vllm"
gpus = [0, 1]
decode_tokens_per_s = 1400
prefill_tokens_per_s = 2000
used_memory_mib = 41200
[[gpu]]
profile = "rtx-a6000"
load = 0.95
load_steps = [[60, 0.0], [120, 0.95]]
[[gpu]]
profile = "rtx-a6000"
load = 0.95
load_steps = [[60, 0.0], [120, 0.95]]
"""


def test_the_ledger_matches_the_simulators_energy_and_its_idle_spell(sim, tmp_path):
    """A vLLM server on a TP pair is busy, then has no requests for a simulated minute, then is
    busy again. The ledger is held to the simulated GPUs' own energy, whatever power the physics
    gives them: energy from the first poll the source counted, idle energy inside the idle spell."""
    path = tmp_path / "ledger-idle.toml"
    path.write_text(IDLE_SPELL)
    run_ = sim(str(path))
    server = run_.host.library.servers[0]
    truth: dict[int, float] = {}
    first = None
    for t in range(1, 181):
        snapshot = run_.at(t)
        truth[t] = server.true_energy_joules()
        if first is None and snapshot.sources[0].ledger is not None:
            first = t
    assert first is not None
    ledger = snapshot.sources[0].ledger
    assert ledger.energy_joules == pytest.approx(truth[180] - truth[first - 1], rel=1e-4)
    # the spell lies between simulated 60 and 120 s; scrapes come once a second, so its edges blur by one
    assert 57.0 <= ledger.idle_seconds <= 61.0
    assert truth[119] - truth[62] <= ledger.idle_joules <= truth[121] - truth[59]
    assert ledger.idle_joules < ledger.energy_joules


def test_no_energy_no_ledger_series(sim):
    """A family NVML cannot give is absent: before the source's GPUs gave any energy, no ledger."""
    run_ = sim("inference-host")
    snapshot: Snapshot = run_.at(1)
    assert snapshot.sources[0].ledger is None


def test_gpu_hours_are_split_like_energy_between_sources_sharing_a_gpu():
    host, two = FakeHost(), TwoServers()
    sources = [
        SourceConfig(url="http://127.0.0.1:8000/metrics", name="tp", gpus=(0, 1)),
        SourceConfig(url="http://127.0.0.1:8001/metrics", name="small", gpus=(1,)),
    ]
    rent = CostSettings(gpu_hour_price=3.6)  # 0.001 per GPU-second
    tracker = TokenTracker(
        sources, lambda: host.now, fetcher=two.fetch, attributor=lambda url, pids: pytest.fail(), cost=rent
    )
    for _ in range(11):
        host.now += 1.0
        for server in two.servers.values():
            server.generation += 100
        published = tracker.observe(host.snapshot())
        tracker.scrape_all()
    tp, small = (s.ledger for s in published.sources)
    assert tp.spent == pytest.approx({"USD": 1.5 * 10 * 0.001})
    assert small.spent == pytest.approx({"USD": 0.5 * 10 * 0.001})


def test_scrapes_do_not_pile_up_while_the_gpus_report_no_energy():
    """A GPU without an energy counter gives no ledger, and its source's scrapes are not kept."""
    server, host = FakeServer(), FakeHost()
    tracker = make(server, host, gpus=(0, 1))
    host.up = [False, False]  # no reading, so no energy
    statuses = run(tracker, host, server, 50, watts=WATTS)
    assert statuses[-1].up and statuses[-1].ledger is None
    assert len(tracker._sources[0].pending) <= 2  # the one kept at the last poll, and the scrape after it
