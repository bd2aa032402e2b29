"""Every preset over every file of tests/data/inference-metrics, and servers whose metrics are switched off.

Captures (``*.txt`` without ``.from-source``) are what a real server answered; ``*.from-source.txt`` files
were written from the metric definitions in a server's source where no server could be run here (see the
README next to them). Each file must have its expectation below: a new file without one fails the test.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

import pytest
from hostile_http import hostile_server
from prometheus_client.parser import text_string_to_metric_families

from gpuwatch.model import Snapshot
from gpuwatch.tokens import disabled
from gpuwatch.tokens.fetch import FetchError, fetch
from gpuwatch.tokens.parse import ExpositionError, read_counts
from gpuwatch.tokens.presets import PRESETS, TokenMetrics, detect, split_selector
from gpuwatch.tokens.source import SourceConfig
from gpuwatch.tokens.tracker import TokenTracker

DATA = Path(__file__).parent / "data" / "inference-metrics"

# file -> (preset recognised, counts, which of the preset's alternatives the file carries: 0 current, 1 first fallback)
EXPECTED: dict[str, tuple[str, dict[str, float], int]] = {
    "vllm.txt": ("vllm", {"generation": 26.0, "prompt": 39.0}, 0),
    # SGLang of 2024: no realtime_tokens_total yet, so the per-request counters (the fallback)
    "sglang.txt": ("sglang", {"generation": 7557572.0, "prompt": 8128902.0}, 1),
    # the decode tokens of realtime_tokens_total (19904), not generation_tokens_total (19312), which lags
    "sglang-realtime.from-source.txt": ("sglang", {"generation": 19904.0, "prompt": 43278.0}, 0),
    "tgi.txt": ("tgi", {"generation": 3423.0, "prompt": 662.0}, 0),
    "llamacpp.txt": ("llamacpp", {"generation": 96.0, "prompt": 28.0}, 0),
    "llamacpp-metrics-on.txt": ("llamacpp", {"generation": 60.0, "prompt": 14.0}, 0),
    "triton-trtllm.from-source.txt": ("triton", {"generation": 2560.0, "prompt": 820.0}, 0),
    "trtllm-serve.from-source.txt": ("trtllm", {"generation": 5376.0, "prompt": 9216.0}, 0),
    "lmdeploy.from-source.txt": ("lmdeploy", {"generation": 2000.0, "prompt": 1000.0}, 0),
    "dynamo-frontend.from-source.txt": ("dynamo", {"generation": 1536.0, "prompt": 3100.0}, 0),
    "nim.from-source.txt": ("nim", {"generation": 2750.0, "prompt": 6400.0}, 0),
}
NO_TOKEN_COUNTERS = {"triton.txt"}  # Triton without the TensorRT-LLM backend


def expositions() -> list[str]:
    return sorted(p.name for p in DATA.glob("*.txt"))


def test_every_file_has_an_expectation():
    assert set(expositions()) == set(EXPECTED) | NO_TOKEN_COUNTERS


@pytest.mark.parametrize("name", expositions())
def test_every_file_is_a_valid_exposition(name: str):
    assert list(text_string_to_metric_families((DATA / name).read_text()))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_preset_reads_its_servers_counters(name: str):
    preset, tokens, alternative = EXPECTED[name]
    text = (DATA / name).read_text()
    recognised = read_counts(text, None)
    assert recognised.metrics == PRESETS[preset]
    counts = read_counts(text, PRESETS[preset])
    assert counts.tokens == tokens
    assert counts.read == PRESETS[preset].alternatives()[alternative]
    assert recognised.tokens == tokens


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_no_other_preset_reads_a_servers_file_as_its_own(name: str):
    preset = EXPECTED[name][0]
    text = (DATA / name).read_text()
    for other, metrics in PRESETS.items():
        if other == preset:
            continue
        try:
            counts = read_counts(text, metrics)
        except ExpositionError:
            continue
        # the only overlaps allowed: a preset whose fallback is another server's current names
        assert counts.read in metrics.fallbacks, (other, name)


def test_triton_without_the_trtllm_backend_has_no_token_counters():
    text = (DATA / "triton.txt").read_text()
    with pytest.raises(ExpositionError, match="cannot tell which server this is"):
        read_counts(text, None)
    for preset in ("triton", "trtllm"):
        with pytest.raises(ExpositionError, match="in the response"):
            read_counts(text, PRESETS[preset])


def test_a_label_selector_and_a_source_filter_both_apply():
    text = (DATA / "sglang-realtime.from-source.txt").read_text()
    counts = read_counts(text, PRESETS["sglang"], {"tp_rank": "0"})
    assert counts.tokens == {"generation": 19904.0}  # prompt_tokens_total has no tp_rank: not counted
    with pytest.raises(ExpositionError, match=r'no sglang:realtime_tokens_total\{mode="decode"\} series with'):
        read_counts(text, PRESETS["sglang"], {"tp_rank": "1"})


def test_a_fallback_is_used_only_when_the_current_counter_is_missing():
    both = 'vllm:generation_tokens_total{a="1"} 5\nray_vllm:generation_tokens_total{a="1"} 7\n'
    assert read_counts(both, PRESETS["vllm"]).tokens == {"generation": 5.0}
    assert read_counts(both.splitlines()[1] + "\n", PRESETS["vllm"]).tokens == {"generation": 7.0}


def test_a_servers_current_names_win_over_another_presets_fallback():
    assert detect({"vllm:generation_tokens_total"}) == "vllm"  # also NIM's fallback
    assert detect({"nv_llm_output_token_len_sum"}) == "triton"  # also trtllm's
    assert detect({"generation_tokens_total"}) == "nim"
    assert detect({"sglang:generation_tokens_total"}) == "sglang"  # only a fallback matches: fine


@pytest.mark.parametrize("sample", ["a{b=c}", "a{", "1abc", 'a{b="c"} d'])
def test_a_bad_selector_is_refused(sample: str):
    with pytest.raises(ValueError, match="not a sample name"):
        split_selector(sample)


def test_every_preset_names_parse():
    for metrics in PRESETS.values():
        for alternative in metrics.alternatives():
            for spec in alternative.by_kind().values():
                split_selector(spec)
    assert isinstance(PRESETS["sglang"], TokenMetrics)


# -- metrics switched off ---------------------------------------------------------------------------------


def replay(raw: bytes):  # type: ignore[no-untyped-def]
    """A server that answers every request with ``raw``, byte for byte, then closes."""

    def behaviour(conn: socket.socket, index: int, stop: threading.Event) -> None:
        conn.sendall(raw)

    return hostile_server(behaviour)


LLAMACPP_OFF = (DATA / "llamacpp-metrics-off.http").read_bytes()
# FastAPI's answer for a route that is not mounted, as uvicorn sends it: SGLang without --enable-metrics
FASTAPI_404 = (
    b"HTTP/1.1 404 Not Found\r\ndate: Tue, 01 Dec 2026 17:00:00 GMT\r\nserver: uvicorn\r\n"
    b"content-length: 22\r\ncontent-type: application/json\r\n\r\n"
    b'{"detail":"Not Found"}'
)


def test_llama_server_without_metrics_is_recognised_from_its_captured_refusal():
    with replay(LLAMACPP_OFF) as server, pytest.raises(FetchError) as caught:
        fetch(server.url(), 2.0, 1 << 20, lambda data: None)
    assert (caught.value.status, caught.value.server) == (501, "llama.cpp")
    for preset in (None, "auto", "llamacpp"):
        hint = disabled.explain(preset, caught.value.status, caught.value.body)
        assert hint is not None and "start" in hint and "--metrics" in hint


def test_a_plain_404_is_sglang_without_enable_metrics_only_for_the_sglang_preset():
    with replay(FASTAPI_404) as server, pytest.raises(FetchError) as caught:
        fetch(server.url(), 2.0, 1 << 20, lambda data: None)
    assert disabled.explain("sglang", caught.value.status, caught.value.body) is not None
    assert "--enable-metrics" in str(disabled.explain("sglang", caught.value.status, caught.value.body))
    assert disabled.explain("vllm", caught.value.status, caught.value.body) is None
    maybe = disabled.explain("auto", caught.value.status, caught.value.body)
    assert maybe == "HTTP 404: no metrics at this URL; if this is SGLang, start it with --enable-metrics"


@pytest.mark.parametrize(
    ("raw", "preset", "flag"),
    [(LLAMACPP_OFF, "auto", "--metrics"), (FASTAPI_404, "sglang", "--enable-metrics")],
)
def test_the_tracker_names_the_flag_in_status_and_logs_it_once(raw: bytes, preset: str, flag: str, caplog):
    caplog.set_level(logging.WARNING, logger="gpuwatch.tokens.tracker")
    with replay(raw) as server:
        config = SourceConfig(url=server.url(), name="server", preset=preset, metrics=PRESETS.get(preset), gpus=(0,))
        tracker = TokenTracker([config], clock=lambda: 0.0)
        for _ in range(3):
            tracker.scrape_all()
        (status,) = tracker.observe(Snapshot(timestamp=1.0, nvml_up=True)).sources
    assert not status.up
    assert status.error is not None and f"add {flag} to its command line" in status.error
    said = [r.getMessage() for r in caplog.records if flag in r.getMessage()]
    assert len(said) == 1, said


def test_an_unrelated_refusal_keeps_its_own_words():
    assert disabled.explain("llamacpp", 503, b'{"error":{"message":"Loading model"}}') is None
    assert disabled.explain("sglang", 401, b'{"detail":"Not Found"}') is None
