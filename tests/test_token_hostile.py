"""Token sources that attack: dripped heads, endless 100 Continue and trailers, a dense 16 MiB
exposition, counters that alternate, credentials in the URL, hundreds of failing sources.

Every server here is a raw socket on 127.0.0.1 (tests/hostile_http.py); every bound on time is
generous against the deadline it checks, so a loaded machine only makes the margins smaller.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests
from hostile_http import (
    answer,
    dense_exposition,
    dripping_headers,
    endless_continue,
    endless_trailers,
    hostile_server,
    vllm_counters,
)
from serving import serve
from test_token_tracker import FakeHost, FakeServer, make, run
from waiting import wait_until

from gpuwatch.logsetup import RateLimit
from gpuwatch.tokens.fetch import FetchError, fetch
from gpuwatch.tokens.parse import MAX_TOKENS, CountReader, ExpositionError, read_counts
from gpuwatch.tokens.presets import PRESETS
from gpuwatch.tokens.source import SourceConfig, redact_url
from gpuwatch.tokens.tracker import TokenTracker

TIMEOUT_S = 0.5
MIB = 1024 * 1024


def _ignore(data: bytes) -> None:
    pass


@pytest.mark.parametrize("behaviour", [dripping_headers, endless_continue, endless_trailers])
def test_the_deadline_covers_the_whole_exchange(behaviour):  # type: ignore[no-untyped-def]
    """Each of these sends something every 10-50 ms, far within a per-read timeout of 0.5 s."""
    with hostile_server(behaviour) as server:
        started = time.monotonic()
        with pytest.raises(FetchError, match=f"no complete response within {TIMEOUT_S:g} s"):
            fetch(server.url(), TIMEOUT_S, 16 * MIB, _ignore)
        assert time.monotonic() - started < TIMEOUT_S + 4.0  # generous: the deadline is 0.5 s


def test_a_dense_exposition_is_summed_as_it_arrives_within_32_mib(tmp_path: Path):
    """16 MiB of 200,000 token series, fetched and parsed in a fresh process: its peak RSS grows by
    at most 32 MiB (it grew by 318 MB when the lines were kept and handed to a full parser)."""
    body = dense_exposition()
    assert 15 * MIB < len(body) <= 16 * MIB
    probe = tmp_path / "probe.py"
    probe.write_text(
        textwrap.dedent(
            """
            import resource, sys, time
            from gpuwatch.tokens.fetch import fetch
            from gpuwatch.tokens.parse import CountReader
            from gpuwatch.tokens.presets import PRESETS
            reader = CountReader(PRESETS["vllm"])
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            started = time.monotonic()
            fetch(sys.argv[1], 60.0, 16 * 1024 * 1024, reader.feed)
            counts = reader.finish()
            took = time.monotonic() - started
            grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
            print(counts.tokens["generation"], grew, took)
            """
        )
    )
    with hostile_server(answer(lambda i: body)) as server:
        out = subprocess.run(
            [sys.executable, str(probe), server.url()], capture_output=True, text=True, timeout=120, check=True
        ).stdout.split()
    tokens, grew_mib, took_s = float(out[0]), float(out[1]), float(out[2])
    assert tokens == 200_000
    assert grew_mib <= 32, f"peak RSS grew by {grew_mib:.1f} MiB (took {took_s:.2f} s)"


def test_parsing_spends_the_sources_deadline():
    """The same exposition with a deadline no machine can parse 200,000 series in: the source is down."""
    body = dense_exposition()
    with hostile_server(answer(lambda i: body)) as server:
        reader = CountReader(PRESETS["vllm"])
        with pytest.raises(FetchError, match=r"no complete response within 0\.05 s"):
            fetch(server.url(), 0.05, 16 * MIB, reader.feed)


def test_a_long_line_is_skipped_unless_it_is_a_token_sample():
    reader = CountReader(PRESETS["vllm"])
    for _ in range(40):  # a 2.5 MiB comment, in pieces
        reader.feed(b"# " + b"x" * 65536)
    reader.feed(b'\nvllm:generation_tokens_total{engine="0"} 7\n')
    assert reader.finish().tokens == {"generation": 7.0}
    reader = CountReader(PRESETS["vllm"])
    with pytest.raises(ExpositionError, match="token sample over 65536 bytes"):
        reader.feed(b'vllm:generation_tokens_total{pad="' + b"p" * 70000)


@pytest.mark.parametrize(
    ("value", "message"),
    [("1e308", r"over 1e\+15"), ("1000000000000001", r"over 1e\+15"), ("NaN", "is nan"), ("-Inf", "is -inf")],
)
def test_absurd_token_counts_are_refused(value: str, message: str):
    with pytest.raises(ExpositionError, match=message):
        read_counts(f"vllm:generation_tokens_total {value}\n", PRESETS["vllm"])


def test_a_sum_of_plausible_series_above_the_limit_is_refused():
    text = "".join(f'vllm:generation_tokens_total{{engine="{i}"}} {MAX_TOKENS}\n' for i in range(2))
    with pytest.raises(ExpositionError, match="the sum of its series"):
        read_counts(text, PRESETS["vllm"])


# -- counters that alternate ---------------------------------------------------------------------


@pytest.mark.parametrize("low", [1000.0, 0.0])
def test_a_counter_that_alternates_high_and_low_is_not_counted_as_resets(low: float, caplog):
    """3,357 and ``low`` in turn, the start time unchanged, for 25 s (this gave 10.8 M tokens):
    a fall to 1000 is never believed; a fall to 0 looks like a restart, believed once a minute at most."""
    server, host = FakeServer(generation=3357.0), FakeHost()
    tracker = make(server, host, gpus=(0, 1))
    values = itertools.cycle([3357.0, low])
    statuses = []
    with caplog.at_level(logging.INFO, logger="gpuwatch.tokens"):
        for _ in range(25):
            server.generation = next(values)
            statuses += run(tracker, host, server, 1, tokens_per_s=0.0)
    total = tracker.observe(host.snapshot()).sources[0].tokens_total["generation"]
    assert total <= 2 * 3357.0
    if low:
        assert total == 3357.0
        assert "went back below 3357 but its start time did not change; reading refused" in caplog.text
        assert sum(not s.up for s in statuses) >= 10
    assert all(s.efficiency is None or s.efficiency.tokens_per_joule["generation"] < 1 for s in statuses)


def test_a_fall_that_stays_down_is_a_restart_after_three_scrapes(caplog):
    """A server without a start time restarts and counts on from 500 (more than 1 % of 3,000)."""
    server, host = FakeServer(generation=0.0, start_time=float("nan")), FakeHost()
    tracker = make(server, host, gpus=(0, 1))
    run(tracker, host, server, 30, tokens_per_s=100.0)  # 3,000 tokens
    server.generation = 400.0
    with caplog.at_level(logging.INFO, logger="gpuwatch.tokens"):
        statuses = run(tracker, host, server, 4, tokens_per_s=100.0)
    assert [s.up for s in statuses[1:]] == [False, False, True]
    assert "and stayed below it for 3 scrapes" in caplog.text
    # The old total carried, and every token since the restart counted.
    assert statuses[-1].tokens_total["generation"] == 3000.0 + 700.0


# -- the documented minimum window -----------------------------------------------------------------


def test_the_minimum_window_of_10_s_publishes_with_scrapes_at_uneven_moments():
    """Scrapes 0.1-0.8 s after each poll: a window of exactly 10 s is never spanned, and yet a
    figure comes once the window is full."""
    server, host = FakeServer(), FakeHost()
    jitter = itertools.cycle([0.1, 0.5, 0.3, 0.8])
    source = SourceConfig(url="http://127.0.0.1:8000/metrics", name="llm", gpus=(0, 1))
    scrape_at = {"t": 0.0}
    tracker = TokenTracker(
        [source],
        lambda: scrape_at["t"],
        window_s=10.0,
        fetcher=server.fetch,
        attributor=lambda url, pids: pytest.fail(),
    )
    published = []
    for _ in range(30):
        host.now += 1.0
        host.energy[0] += 150.0
        host.energy[1] += 250.0
        published.append(tracker.observe(host.snapshot()).sources[0])
        scrape_at["t"] = host.now + next(jitter)
        server.generation = 800.0 * scrape_at["t"]  # tokens at 800/s, read at the scrape's moment
        tracker.scrape_all()
    figures = [s.efficiency for s in published[12:]]
    assert all(e is not None for e in figures)
    for e in figures:
        assert e is not None and 5.0 <= e.window_seconds <= 10.0
        assert e.tokens_per_joule["generation"] == pytest.approx(2.0, rel=0.01)


# -- many failing sources --------------------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_300_failing_sources_are_summarised_not_dropped():
    """The rate limit lets five 'token source … failed' lines through; a summary names the rest."""
    host, now = FakeHost(), {"t": 0.0}
    servers = [FakeServer(fail="connection refused") for _ in range(300)]
    sources = [SourceConfig(url=f"http://127.0.0.1:{9000 + i}/metrics", name=f"s{i}", gpus=(0,)) for i in range(300)]

    def fetch_for(url, timeout_s, max_bytes, consume):  # type: ignore[no-untyped-def]
        return servers[int(url.split(":")[2].split("/")[0]) - 9000].fetch(url, timeout_s, max_bytes, consume)

    tracker = TokenTracker(sources, lambda: now["t"], fetcher=fetch_for, attributor=lambda u, p: pytest.fail())
    handler = _Lines()
    handler.addFilter(RateLimit(clock=lambda: now["t"]))
    logger = logging.getLogger("gpuwatch.tokens")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # whatever other tests left on the root logger
    try:
        for second in range(1, 130):
            now["t"] = host.now = float(second)
            if second == 100:
                for server in servers[:250]:
                    server.fail = None
            tracker.observe(host.snapshot())
            tracker.scrape_all()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    failures = [line for line in handler.lines if line.endswith("): connection refused")]
    summaries = [line for line in handler.lines if line.startswith("token sources:")]
    assert len(failures) == 5  # rate-limited, as before
    assert (
        summaries[0] == "token sources: 300 of 300 down: s0, s1, s2, s3, s4 and 295 more (each one's reason in /status)"
    )
    assert summaries[1].startswith("token sources: 50 of 300 down: s250, s251")
    assert len(summaries) == 2


# -- credentials in the URL ------------------------------------------------------------------------


def test_redacted_urls():
    assert redact_url("http://user:s3cret@host:8000/metrics") == "http://user:xxxxx@host:8000/metrics"
    assert redact_url("https://tok3n@host/metrics?x=1") == "https://xxxxx@host/metrics?x=1"
    assert redact_url("http://host:8000/metrics") == "http://host:8000/metrics"


def test_url_credentials_are_sent_as_basic_auth_and_never_shown(caplog):
    with hostile_server(answer(lambda i: vllm_counters(5.0) if i == 0 else b"<html>")) as server:
        url, shown = server.url("prometheus:s3cr%40t@"), server.url("prometheus:xxxxx@")
        source = SourceConfig(url=url, name="llm", gpus=(0, 1))
        host = FakeHost()
        tracker = TokenTracker([source], lambda: host.now, attributor=lambda u, p: pytest.fail())
        with caplog.at_level(logging.INFO, logger="gpuwatch.tokens"):
            tracker.observe(host.snapshot())
            tracker.scrape_all()
            tracker.scrape_all()  # the second answer is garbage: logged with the URL
            status = tracker.observe(host.snapshot()).sources[0]
    assert b"Authorization: Basic cHJvbWV0aGV1czpzM2NyQHQ=" in server.requests[0]  # prometheus:s3cr@t
    assert status.url == shown
    assert "s3cr" not in caplog.text and shown in caplog.text


# -- through the real process ----------------------------------------------------------------------


def test_the_daemon_marks_hostile_sources_down_and_keeps_serving(tmp_path: Path):
    """gpuwatch serve with a dripping, an endlessly continuing, a dense and a password-protected
    alternating source: each is down or refused within its timeout, with a line in the log, and
    the password appears nowhere."""
    alternating = answer(lambda i: vllm_counters(3357.0 if i % 2 == 0 else 1000.0))
    body = dense_exposition()
    with (
        hostile_server(dripping_headers) as drip,
        hostile_server(endless_continue) as cont,
        hostile_server(answer(lambda i: body)) as dense,
        hostile_server(alternating) as alt,
    ):
        config = tmp_path / "gpuwatch.toml"
        tables = [
            ("drip", drip.url(), "0.5s"),
            ("continue", cont.url(), "0.5s"),
            ("dense", dense.url(), "0.05s"),
            ("alternating", alt.url("gpuwatch:hunter2@"), "2s"),
        ]
        config.write_text(
            "".join(f'[[tokens]]\nname = "{n}"\nurl = "{u}"\ntimeout = "{t}"\ngpus = [0]\n' for n, u, t in tables)
        )
        with serve(tmp_path, "--simulate", "healthy", "--config", str(config), "--poll-interval", "250ms") as d:
            for name in ("drip", "continue", "dense"):
                d.wait_for_log(f"token source {name} (", timeout_s=15)
            d.wait_for_log("reading refused", timeout_s=15)

            def states() -> dict[str, dict[str, object]]:
                return {s["name"]: s for s in requests.get(d.url + "/status", timeout=5).json()["sources"]}

            assert wait_until(lambda: all(s["error"] != "not scraped yet" for s in states().values()))
            status = states()
            for name in ("drip", "continue", "dense"):
                assert status[name]["up"] is False and "no complete response" in str(status[name]["error"])
            metrics = requests.get(d.url + "/metrics", timeout=5).text
            assert 'gpuwatch_source_up{source="drip"} 0.0' in metrics
            assert 'gpuwatch_source_up{source="continue"} 0.0' in metrics
            assert 'gpuwatch_source_up{source="dense"} 0.0' in metrics
            total = [
                line
                for line in metrics.splitlines()
                if line.startswith('gpuwatch_tokens_total{kind="generation",source="alternating"')
            ]
            assert total and float(total[0].split()[-1]) <= 3357.0
            everything = requests.get(d.url + "/status", timeout=5).text + metrics + d.stderr
            assert "hunter2" not in everything
            assert "gpuwatch:xxxxx@" in everything
            assert d.proc.poll() is None
