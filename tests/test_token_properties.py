"""Properties of the token-source reader and the efficiency window, over generated inputs."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwatch.analysis.efficiency import EnergyPoint, TokenPoint, window_efficiency
from gpuwatch.tokens.parse import ExpositionError, read_counts
from gpuwatch.tokens.presets import PRESETS

VLLM = PRESETS["vllm"]
counts = st.integers(min_value=0, max_value=10**12).map(float)
series = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["0", "1"]), counts, counts), min_size=1, max_size=6
)


def exposition(rows: list[tuple[str, str, float, float]], noise: int) -> str:
    lines = [
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
    ]
    for model, engine, generation, _ in rows:
        lines.append(f'vllm:generation_tokens_total{{engine="{engine}",model_name="{model}"}} {generation!r}')
    for model, engine, _, prompt in rows:
        lines.append(f'vllm:prompt_tokens_total{{engine="{engine}",model_name="{model}"}} {prompt!r}')
    lines += [f'vllm:generation_tokens_created{{n="{i}"}} 1.7e9' for i in range(noise)]
    lines += [f'vllm:iteration_tokens_total_bucket{{le="{i}"}} {i}' for i in range(noise)]
    return "\n".join(lines) + "\n"


@given(rows=series, model=st.sampled_from(["a", "b", "c", None]), noise=st.integers(0, 5))
def test_the_counts_are_the_sums_of_the_matching_series(rows, model, noise):
    unique = {(m, e): (g, p) for m, e, g, p in rows}  # one sample per label set, as a server writes
    text = exposition([(m, e, g, p) for (m, e), (g, p) in unique.items()], noise)
    matching = [(g, p) for (m, _), (g, p) in unique.items() if model is None or m == model]
    labels = {} if model is None else {"model_name": model}
    if not matching:
        try:
            read_counts(text, VLLM, labels)
        except ExpositionError as exc:
            assert "check the label filter" in str(exc)
            return
        raise AssertionError("a filter matching nothing must be an error")
    result = read_counts(text, VLLM, labels)
    assert result.tokens == {"generation": sum(g for g, _ in matching), "prompt": sum(p for _, p in matching)}


@settings(max_examples=300)
@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_any_text_gives_sane_counts_or_an_exposition_error(text):
    for body in (text, "vllm:generation_tokens_total" + text):
        try:
            result = read_counts(body, VLLM)
        except ExpositionError:
            continue
        assert all(math.isfinite(v) and v >= 0 for v in result.tokens.values())


steps = st.lists(st.tuples(st.floats(0.1, 5.0), st.floats(0.0, 1e4), st.floats(0.0, 1e4)), min_size=2, max_size=80)


@given(steps=steps, offset=st.floats(0.0, 0.99), window=st.floats(10.0, 120.0))
def test_any_monotonic_series_gives_nothing_or_a_finite_non_negative_figure(steps, offset, window):
    t, joules, tokens = 0.0, 0.0, 0.0
    energy, scrapes = [], []
    for dt, d_joules, d_tokens in steps:
        t += dt
        joules += d_joules
        tokens += d_tokens
        energy.append(EnergyPoint(t, joules))
        scrapes.append(TokenPoint(t + offset * dt, {"generation": tokens}))
    result = window_efficiency(scrapes, energy, window_s=window)
    if result is None:
        return
    # At least the minimum window, or half of a window the scrapes fill as far as they can.
    assert min(10.0, window / 2) <= result.window_seconds <= window
    assert result.joules > 0
    for value in [*result.tokens_per_joule.values(), *result.joules_per_token.values()]:
        assert math.isfinite(value) and value >= 0
