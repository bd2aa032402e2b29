"""The models a token source's server holds in memory, where it lists them (Ollama's ``/api/ps``).

A server that lists none (every preset but ``ollama``) gives no series here, never zeros.
"""

from __future__ import annotations

from collections.abc import Callable

from gpuwatch.exporter.families import Families
from gpuwatch.model import LoadedModel, Snapshot

# Its switch (the collectors branch's gpuwatch/collectors.py reads these): on by default, and its line
# in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "the models each token source's server has loaded and their GPU memory (Ollama's /api/ps)"

# name, HELP, and the value of a loaded model
GAUGES: tuple[tuple[str, str, Callable[[LoadedModel], int]], ...] = (
    (
        "gpuwatch_source_model_memory_bytes",
        "Memory a model loaded by the token source's server takes, GPU and system memory together "
        "(Ollama's /api/ps size).",
        lambda m: m.size_bytes,
    ),
    (
        "gpuwatch_source_model_vram_bytes",
        "The part of a loaded model's memory in GPU memory (Ollama's /api/ps size_vram); "
        "below gpuwatch_source_model_memory_bytes, the model runs partly on the CPU.",
        lambda m: m.vram_bytes,
    ),
)


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for source in snapshot.sources:
        for model in source.models:
            for name, help_text, value in GAUGES:
                f.gauge(name, help_text, float(value(model)), source=source.name, model=model.name)
    return f
