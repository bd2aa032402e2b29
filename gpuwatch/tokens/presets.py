"""Where each inference server keeps its token counters (research: tokens-per-joule.md §2.8).

Names are the *sample* names as exposed, so a histogram's ``_sum`` works as well as a counter's
``_total``. A name may carry a label selector, ``sglang:realtime_tokens_total{mode="decode"}``:
then only series with those labels count. Every server here restarts its counters at zero when its
process restarts.

A preset names the counters of the server's current release first and, in ``fallbacks``, the ones
of older releases (or of the same engine behind another front end). A response is read with the
first of them whose generation counter it carries, so one preset serves a fleet of mixed versions.
Each name below cites where it was read: the server's own source where it could be fetched, the
research note (which cites the source file and version it read) otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("generation", "prompt")

_SELECTOR = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*",?)*)\})?')
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"\\]*)"')


@dataclass(frozen=True, slots=True)
class TokenMetrics:
    """The samples that count a server's tokens, by kind; ``fallbacks`` for older releases, tried in order."""

    generation: str
    prompt: str | None = None
    fallbacks: tuple[TokenMetrics, ...] = ()

    def by_kind(self) -> dict[str, str]:
        names = {"generation": self.generation}
        if self.prompt is not None:
            names["prompt"] = self.prompt
        return names

    def alternatives(self) -> tuple[TokenMetrics, ...]:
        """This pair of counters first, then each fallback's."""
        return (self, *self.fallbacks)


def split_selector(sample: str) -> tuple[str, dict[str, str]]:
    """``name{a="b"}`` as ``("name", {"a": "b"})``; raises ValueError for anything else."""
    match = _SELECTOR.fullmatch(sample)
    if match is None:
        raise ValueError(f'{sample!r} is not a sample name with an optional {{label="value"}} selector')
    return match.group(1), dict(_PAIR.findall(match.group(2) or ""))


def _older(generation: str, prompt: str | None = None) -> TokenMetrics:
    return TokenMetrics(generation, prompt)


PRESETS: dict[str, TokenMetrics] = {
    # vllm/v1/metrics/loggers.py (vLLM 0.33.0, research §2.1): counted every engine step; prompt tokens
    # include prefix-cache hits (vllm:prompt_tokens_cached_total and vllm:prompt_tokens_by_source_total
    # {source=local_compute|local_cache_hit|external_kv_transfer} break them down; not read here). The same
    # two names go back to V0 (vllm-project/vllm docs/source/design/v1/metrics.md lists them for v0).
    # Fallback: vLLM under Ray Serve, whose names carry a ray_ prefix (DataDog's ray_vllm_metrics.txt fixture).
    "vllm": TokenMetrics(
        "vllm:generation_tokens_total",
        "vllm:prompt_tokens_total",
        (_older("ray_vllm:generation_tokens_total", "ray_vllm:prompt_tokens_total"),),
    ),
    # sglang/srt/observability/metrics_collector.py (sglang 0.5.23, research §2.2): realtime_tokens_total
    # moves every scheduler log interval (mode=decode is generated tokens); prompt_tokens_total and
    # generation_tokens_total only when a request finishes. Releases before realtime_tokens_total (2024-25)
    # have only the latter. Off unless the server runs with --enable-metrics.
    "sglang": TokenMetrics(
        'sglang:realtime_tokens_total{mode="decode"}',
        "sglang:prompt_tokens_total",
        (_older("sglang:generation_tokens_total", "sglang:prompt_tokens_total"),),
    ),
    # TGI docs/source/reference/metrics.md (research §2.3): no token counters, so the sums of the
    # per-request histograms, observed when a request ends (generated) and when it is validated (input).
    "tgi": TokenMetrics("tgi_request_generated_tokens_sum", "tgi_request_input_length_sum"),
    # llama.cpp tools/server/server-task.cpp @0c1e570 (research §2.4, and the live capture here): generated
    # tokens are added when a slot finishes; prompt tokens exclude cached ones. Off unless --metrics.
    "llamacpp": TokenMetrics("llamacpp:tokens_predicted_total", "llamacpp:prompt_tokens_total"),
    # Triton with the TensorRT-LLM backend (tensorrtllm_backend custom metrics, research §2.5): the
    # per-request histograms; Triton core alone has no token counters.
    "triton": TokenMetrics("nv_llm_output_token_len_sum", "nv_llm_input_token_len_sum"),
    # trtllm-serve: NVIDIA/TensorRT-LLM tensorrt_llm/metrics/collector.py @050f80de (MetricsCollector,
    # metric_prefix "trtllm_"), served at /prometheus/metrics. Fallback: TensorRT-LLM behind Triton (the
    # backend's histograms, as the triton preset).
    "trtllm": TokenMetrics(
        "trtllm_generation_tokens_total",
        "trtllm_prompt_tokens_total",
        (_older("nv_llm_output_token_len_sum", "nv_llm_input_token_len_sum"),),
    ),
    # lmdeploy/metrics/loggers.py (lmdeploy 0.18.0, research §2.6): per-iteration counters.
    "lmdeploy": TokenMetrics("lmdeploy:generation_tokens_total", "lmdeploy:prompt_tokens_total"),
    # NVIDIA Dynamo's frontend: ai-dynamo/dynamo lib/runtime/src/metrics/prometheus_names.rs @4415465
    # (frontend_service: OUTPUT_TOKENS_TOTAL "output_tokens_total", a counter updated as tokens stream out;
    # INPUT_SEQUENCE_TOKENS "input_sequence_tokens", a per-request histogram; prefix "dynamo_frontend").
    # Fallback: releases before output_tokens_total, with only the output_sequence_tokens histogram.
    "dynamo": TokenMetrics(
        "dynamo_frontend_output_tokens_total",
        "dynamo_frontend_input_sequence_tokens_sum",
        (_older("dynamo_frontend_output_sequence_tokens_sum", "dynamo_frontend_input_sequence_tokens_sum"),),
    ),
    # NVIDIA NIM for LLMs at /v1/metrics: unprefixed prompt_tokens_total / generation_tokens_total (NIM's
    # metrics reference, docs.nvidia.com/nim/large-language-models, "get metrics"). NIM 2.x runs vLLM
    # underneath and exposes its names: the fallback.
    "nim": TokenMetrics(
        "generation_tokens_total",
        "prompt_tokens_total",
        (_older("vllm:generation_tokens_total", "vllm:prompt_tokens_total"),),
    ),
}

AUTO = "auto"


def _generation_names(metrics: TokenMetrics, primary: bool) -> set[str]:
    chosen = (metrics,) if primary else metrics.fallbacks
    return {split_selector(m.generation)[0] for m in chosen}


def detect(sample_names: set[str]) -> str | None:
    """The preset whose generation counter appears among ``sample_names``, if exactly one does.

    A preset's own current counter wins over another preset's fallback: vLLM's names are NIM's fallback,
    and a vLLM server is recognised as vllm, not nim.
    """
    for primary in (True, False):
        found = [name for name, m in PRESETS.items() if _generation_names(m, primary) & sample_names]
        if found:
            return found[0] if len(found) == 1 else None
    return None
