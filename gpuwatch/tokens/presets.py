"""Where each inference server keeps its token counters (research: tokens-per-joule.md §2.8).

Names are the *sample* names as exposed, so a histogram's ``_sum`` works as well as a counter's
``_total``. Every server here restarts its counters at zero when its process restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("generation", "prompt")


@dataclass(frozen=True, slots=True)
class TokenMetrics:
    """The samples that count a server's tokens, by kind."""

    generation: str
    prompt: str | None = None

    def by_kind(self) -> dict[str, str]:
        names = {"generation": self.generation}
        if self.prompt is not None:
            names["prompt"] = self.prompt
        return names


PRESETS: dict[str, TokenMetrics] = {
    # Counted every engine step; prompt tokens include prefix-cache hits.
    "vllm": TokenMetrics("vllm:generation_tokens_total", "vllm:prompt_tokens_total"),
    # Counted when a request finishes, so short windows see steps.
    "sglang": TokenMetrics("sglang:generation_tokens_total", "sglang:prompt_tokens_total"),
    # No token counters: the sums of the per-request histograms.
    "tgi": TokenMetrics("tgi_request_generated_tokens_sum", "tgi_request_input_length_sum"),
    # Generated tokens are added when a slot finishes; prompt tokens exclude cached ones.
    "llamacpp": TokenMetrics("llamacpp:tokens_predicted_total", "llamacpp:prompt_tokens_total"),
    # The TensorRT-LLM backend's per-request histograms.
    "triton": TokenMetrics("nv_llm_output_token_len_sum", "nv_llm_input_token_len_sum"),
    "trtllm": TokenMetrics("trtllm_generation_tokens_total", "trtllm_prompt_tokens_total"),
    "lmdeploy": TokenMetrics("lmdeploy:generation_tokens_total", "lmdeploy:prompt_tokens_total"),
}

AUTO = "auto"


def detect(sample_names: set[str]) -> str | None:
    """The preset whose generation counter appears among ``sample_names``, if exactly one does."""
    found = [name for name, metrics in PRESETS.items() if metrics.generation in sample_names]
    return found[0] if len(found) == 1 else None
