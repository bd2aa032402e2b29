"""The models a token source's server holds in memory, where it lists them (Ollama's ``/api/ps``).

A server that lists none (every preset but ``ollama``) gives no series here, never zeros.
"""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.model import Snapshot


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    for source in snapshot.sources:
        for model in source.models:
            f.gauge(
                "gpuwatch_source_model_memory_bytes",
                "Memory a model loaded by the token source's server takes, GPU and system memory together "
                "(Ollama's /api/ps size).",
                float(model.size_bytes),
                source=source.name,
                model=model.name,
            )
            f.gauge(
                "gpuwatch_source_model_vram_bytes",
                "The part of a loaded model's memory in GPU memory (Ollama's /api/ps size_vram); "
                "below gpuwatch_source_model_memory_bytes, the model runs partly on the CPU.",
                float(model.vram_bytes),
                source=source.name,
                model=model.name,
            )
    return f
