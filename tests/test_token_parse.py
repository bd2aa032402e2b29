"""Reading token counters from real inference servers' /metrics captures, and from broken ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuwatch.tokens.parse import ExpositionError, read_counts
from gpuwatch.tokens.presets import PRESETS, TokenMetrics, detect, split_selector

CAPTURES = Path(__file__).parent / "data" / "inference-metrics"

# What each capture's counters say, read by eye from the files (research/tokens-per-joule.md §2, §5).
EXPECTED = {
    "vllm.txt": ("vllm", {"generation": 26.0, "prompt": 39.0}, 1.75800682753e09),
    "sglang.txt": ("sglang", {"generation": 7557572.0, "prompt": 8128902.0}, None),
    "tgi.txt": ("tgi", {"generation": 3423.0, "prompt": 662.0}, None),
    "llamacpp.txt": ("llamacpp", {"generation": 96.0, "prompt": 28.0}, None),
}


@pytest.mark.parametrize("capture", sorted(p.name for p in CAPTURES.glob("*.txt")))
def test_every_capture_is_a_valid_exposition(capture):
    families = list(text_string_to_metric_families((CAPTURES / capture).read_text()))
    assert families


@pytest.mark.parametrize("capture", sorted(EXPECTED))
def test_token_counts_from_real_captures(capture):
    preset, tokens, start_time = EXPECTED[capture]
    text = (CAPTURES / capture).read_text()
    assert read_counts(text, None).metrics == PRESETS[preset]  # recognised
    counts = read_counts(text, PRESETS[preset])
    assert counts.tokens == tokens
    assert counts.start_time == start_time


def test_triton_without_the_trtllm_backend_has_no_token_counters():
    text = (CAPTURES / "triton.txt").read_text()
    with pytest.raises(ExpositionError, match="cannot tell which server this is"):
        read_counts(text, None)
    with pytest.raises(ExpositionError, match="no nv_llm_output_token_len_sum in the response"):
        read_counts(text, PRESETS["triton"])


VLLM_TWO_ENGINES = """\
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="a"} 100.0
vllm:generation_tokens_total{engine="1",model_name="a"} 50.0
vllm:generation_tokens_total{engine="0",model_name="b"} 7.0
vllm:prompt_tokens_total{engine="0",model_name="a"} 10.0
"""


def test_series_are_summed_across_engines_and_filtered_by_label():
    assert read_counts(VLLM_TWO_ENGINES, PRESETS["vllm"]).tokens == {"generation": 157.0, "prompt": 10.0}
    assert read_counts(VLLM_TWO_ENGINES, PRESETS["vllm"], {"model_name": "a"}).tokens == {
        "generation": 150.0,
        "prompt": 10.0,
    }


def test_a_label_filter_that_matches_nothing_says_so():
    with pytest.raises(ExpositionError, match=r'no vllm:generation_tokens_total series with \{model_name="c"\}'):
        read_counts(VLLM_TWO_ENGINES, PRESETS["vllm"], {"model_name": "c"})


def test_explicit_metric_names_without_prompt():
    counts = read_counts("my_tokens_total 5\nother 1\n", TokenMetrics("my_tokens_total"))
    assert counts.tokens == {"generation": 5.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<html><body>502 Bad Gateway</body></html>\n", "no vllm:generation_tokens_total in the response"),
        ('vllm:generation_tokens_total{engine="0" model_name=} twelve\n', "not a Prometheus text exposition"),
        ("vllm:generation_tokens_total NaN\n", "is nan, not a token count"),
        ("vllm:generation_tokens_total -3\n", "is -3, not a token count"),
        ("vllm:generation_tokens_total +Inf\n", "is inf, not a token count"),
        ("", "no vllm:generation_tokens_total in the response"),
    ],
)
def test_broken_responses_raise_exposition_errors(text, message):
    with pytest.raises(ExpositionError, match=message):
        read_counts(text, PRESETS["vllm"])


def test_detect_refuses_to_guess_between_two_servers():
    names = {split_selector(PRESETS[p].generation)[0] for p in ("vllm", "sglang")}
    assert detect(names) is None
