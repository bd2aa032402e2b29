"""Token counters of a real llama.cpp ``llama-server`` add up to what its completions report.

The server is built from the llama.cpp vendored in the pinned ``llama-cpp-python`` sdist (tests/llama_server.py; the
first build takes minutes, later runs reuse the cached binary) and loads a tiny random-weight Llama written here.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import skip_outside_ci
from llama_server import (
    cache_dir,
    cached_llama_server,
    llama_server_binary,
    missing_build_tools,
    running_llama_server,
    write_tiny_llama,
)
from prometheus_client.parser import text_string_to_metric_families

from gpuwatch.model import Snapshot
from gpuwatch.tokens.source import SourceConfig
from gpuwatch.tokens.tracker import TokenTracker

pytestmark = [pytest.mark.llama_server, pytest.mark.slow]

N_PREDICT = 24


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a running llama-server with the tiny model and two slots."""
    binary = cached_llama_server()
    if binary is None:
        missing = missing_build_tools()
        if missing:
            skip_outside_ci(
                f"no llama-server in {cache_dir()}, and none can be built: {missing}",
                f"cannot build llama-server: {missing}; .ci/run should have installed them",
            )
        binary = llama_server_binary()
    directory = tmp_path_factory.mktemp("llama")
    model = write_tiny_llama(directory / "tiny-llama.gguf")
    with running_llama_server(binary, model, directory) as url:
        yield url


@dataclass(frozen=True)
class TokenCounters:
    prompt_tokens: float  # evaluated by the model
    prompt_tokens_cached: float  # reused from the KV cache, not evaluated
    generated_tokens: float


def read_token_counters(url: str) -> TokenCounters:
    """The server's token counters read independently of gpuwatch (prometheus_client's parser on the whole text)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    return TokenCounters(
        prompt_tokens=samples["llamacpp:prompt_tokens_total"],
        prompt_tokens_cached=samples["llamacpp:prompt_tokens_cached_total"],
        generated_tokens=samples["llamacpp:tokens_predicted_total"],
    )


def complete(url: str, prompt: str) -> dict[str, Any]:
    body = {"prompt": prompt, "n_predict": N_PREDICT, "temperature": 0, "seed": 42, "ignore_eos": True}
    request = urllib.request.Request(
        url + "/completion", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        result: dict[str, Any] = json.load(response)
    return result


def test_token_counters_match_the_completions(llama_server: str, sim: Any) -> None:
    before = read_token_counters(llama_server)
    assert before == TokenCounters(0, 0, 0)
    # gpuwatch watches the real server as a token source on a simulated GPU: preset recognised, GPU 0 configured.
    run = sim("healthy", tokens=(SourceConfig(url=llama_server + "/metrics", name="llama", gpus=(0,)),))
    run.at(1)

    story = "once upon a time there lived a gpu"
    responses = [
        complete(llama_server, story),
        # the same prompt with more after it: its prefix comes from the KV cache of the slot that served the first
        complete(llama_server, story + " with memory and power"),
        complete(llama_server, "hello world, the server is on"),
    ]
    # two at once, one per slot (-np 2)
    with ThreadPoolExecutor(2) as pool:
        responses += pool.map(lambda prompt: complete(llama_server, prompt), ["the model and the token", "the gpu"])

    assert [r["tokens_predicted"] for r in responses] == [N_PREDICT] * len(responses)  # ignore_eos: never stops early
    generated = sum(r["tokens_predicted"] for r in responses)
    evaluated = sum(r["timings"]["prompt_n"] for r in responses)
    cached = sum(r["timings"]["cache_n"] for r in responses)
    assert cached > 0, "the second request should have reused the first one's prompt from the cache"
    # tokens_evaluated is the whole prompt, cached part included
    assert evaluated + cached == sum(r["tokens_evaluated"] for r in responses)

    after = read_token_counters(llama_server)
    assert after == TokenCounters(prompt_tokens=evaluated, prompt_tokens_cached=cached, generated_tokens=generated)

    source = run.through(2, 15).sources[0]
    assert (source.up, source.preset, source.gpus) == (True, "llamacpp", (0,)), source.error
    assert source.tokens_total == {"generation": generated, "prompt": evaluated}
    efficiency = source.efficiency
    assert efficiency is not None and efficiency.tokens == {"generation": generated, "prompt": evaluated}
    # From the scrape before the completions (1 s) to the newest scrape the polls cover (14 s).
    assert efficiency.window_seconds == pytest.approx(13)
    assert 0 < efficiency.joules < 13 * 1.05 * 300  # 13 s of one RTX A6000 under its 300 W cap
    assert efficiency.tokens_per_joule["generation"] == pytest.approx(generated / efficiency.joules)


def test_a_server_without_metrics_is_named_with_the_flag_to_add(tmp_path: Path) -> None:
    binary = cached_llama_server()
    if binary is None:
        pytest.skip(f"no llama-server in {cache_dir()} (the test above builds it)")
    model = write_tiny_llama(tmp_path / "tiny-llama.gguf")
    with running_llama_server(binary, model, tmp_path, slots=1, metrics=False) as url:
        config = SourceConfig(url=url + "/metrics", name="llama", gpus=(0,))  # preset auto
        tracker = TokenTracker([config], clock=time.monotonic)
        tracker.scrape_all()
        (source,) = tracker.observe(Snapshot(timestamp=1.0, nvml_up=True)).sources
    assert not source.up
    assert source.error == (
        "HTTP 501: llama-server serves no metrics unless started with --metrics; add --metrics to its command line"
    )
