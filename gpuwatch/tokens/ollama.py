"""Ollama as a token source: its loaded models from ``/api/ps``, its tokens from the proxy's tally.

Ollama exports no metrics (its request for a ``/metrics`` endpoint has been open since 2024), so a
source with ``preset = "ollama"`` is read differently from the others. Its ``url`` is Ollama's base
URL (``http://127.0.0.1:11434``). Each scrape reads ``GET /api/ps``, Ollama's list of the models it
holds in memory with their size and the part in VRAM (docs.ollama.com/api/ps: ``models[]`` with
``name``, ``model``, ``size``, ``size_vram``, ``context_length``, ``expires_at``), which shows in
``status`` and as series. Token counts exist only in Ollama's answers: with ``listen`` set, gpuwatch
runs :class:`~gpuwatch.tokens.proxy.OllamaProxy` there and clients that talk to it are counted; the
tracker reads the proxy's :class:`~gpuwatch.tokens.proxy.Tally` as the source's counters. Without a
proxy the source has models but no token counts, never zeros.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from typing import Any

from gpuwatch.model import LoadedModel
from gpuwatch.tokens.fetch import Response
from gpuwatch.tokens.presets import TokenMetrics
from gpuwatch.tokens.proxy import Tally

PRESET = "ollama"
# What the proxy counts, named after the fields of Ollama's final answer object.
METRICS = TokenMetrics("eval_count", "prompt_eval_count")
MAX_MODELS = 256  # more loaded models than this is not an Ollama list

Fetcher = Callable[[str, float, int, Callable[[bytes], None]], Response]


def ps_url(base_url: str) -> str:
    """``/api/ps`` under Ollama's base URL (a path given in the base is kept as a prefix)."""
    parts = urllib.parse.urlsplit(base_url)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/api/ps", query=""))


def parse_ps(body: bytes) -> tuple[LoadedModel, ...]:
    """The models of an ``/api/ps`` answer; raises ValueError saying what is wrong with it."""
    try:
        document: Any = json.loads(body)
    except ValueError:
        raise ValueError("/api/ps did not answer JSON (is this Ollama?)") from None
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise ValueError('/api/ps answered without a "models" list (is this Ollama?)')
    entries = document["models"]
    if len(entries) > MAX_MODELS:
        raise ValueError(f"/api/ps listed {len(entries)} models, over {MAX_MODELS}")
    models = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("/api/ps listed a model that is not an object")
        name = entry.get("name") or entry.get("model")
        size, vram, context = entry.get("size"), entry.get("size_vram"), entry.get("context_length")
        if not isinstance(name, str) or not name or not isinstance(size, int) or not isinstance(vram, int):
            raise ValueError(f"/api/ps listed a model without a name, size and size_vram: {str(entry)[:120]}")
        if not (_count(size) and _count(vram)):
            raise ValueError(f"/api/ps listed model {name!r} with a size out of range: {size}, {vram}")
        models.append(LoadedModel(name, size, vram, context if isinstance(context, int) and _count(context) else None))
    return tuple(sorted(models, key=lambda m: m.name))


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def read_models(fetcher: Fetcher, base_url: str, timeout_s: float, max_bytes: int) -> tuple[LoadedModel, ...]:
    """Ollama's loaded models; raises FetchError (the exchange) or ValueError (the answer)."""
    body = bytearray()
    fetcher(ps_url(base_url), timeout_s, max_bytes, body.extend)
    return parse_ps(bytes(body))


def counts(tally: Tally) -> dict[str, float]:
    """The proxy's counts as token kinds."""
    prompt, generation, _ = tally.read()
    return {"generation": float(generation), "prompt": float(prompt)}
