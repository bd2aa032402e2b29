"""Token sources: whether each answers, its tokens, its GPUs, its tokens per joule, its energy ledger and cost."""

from __future__ import annotations

from gpuwatch.exporter.families import Families
from gpuwatch.model import Snapshot, SourceStatus

# Its switch (gpuwatch/collectors.py): whether it runs without flags, and its line in --help and the README.
DEFAULT_ENABLED = True
DESCRIPTION = "whether each token source answers, its tokens, its GPUs and its tokens per joule"


def collect(snapshot: Snapshot) -> Families:
    f = Families()
    uuids = {g.identity.index: g.identity.uuid for g in snapshot.gpus}
    for source in snapshot.sources:
        name = source.name
        f.gauge(
            "gpuwatch_source_up",
            "Whether the token source's latest scrape gave token counts (1) or failed (0; the log says why).",
            1.0 if source.up else 0.0,
            source=name,
        )
        for kind, total in source.tokens_total.items():
            f.counter(
                "gpuwatch_tokens",
                "Tokens the source's server reported (kind generation or prompt), carried across server restarts.",
                total,
                source=name,
                kind=kind,
            )
        for gpu in source.gpus:
            f.gauge(
                "gpuwatch_source_gpu_info",
                "A GPU that serves the token source (from the config, or found from the server's processes).",
                1.0,
                source=name,
                gpu=str(gpu),
                uuid=uuids.get(gpu, ""),
            )
        f.gauge(
            "gpuwatch_source_scrape_duration_seconds",
            "How long the latest scrape of the token source took.",
            source.scrape_duration_seconds,
            source=name,
        )
        _ledger(f, source)
        efficiency = source.efficiency
        if efficiency is None:
            continue
        f.gauge(
            "gpuwatch_tokens_window_seconds",
            "Span of the window behind gpuwatch_tokens_per_joule (up to the configured tokens_window).",
            efficiency.window_seconds,
            source=name,
        )
        for kind, value in efficiency.tokens_per_joule.items():
            f.gauge(
                "gpuwatch_tokens_per_joule",
                "Tokens over the window divided by the energy counters' increase on all of the source's GPUs "
                "(0 when no tokens were made).",
                value,
                source=name,
                kind=kind,
            )
        for kind, value in efficiency.joules_per_token.items():
            f.gauge(
                "gpuwatch_joules_per_token",
                "Energy on all of the source's GPUs over the window divided by its tokens (absent when none).",
                value,
                source=name,
                kind=kind,
            )
        for kind, value in source.cost_per_million_tokens.items():
            f.gauge(
                "gpuwatch_source_cost_per_million_tokens",
                "Price of a million tokens (kind generation or total) over the window behind gpuwatch_joules_per_token: "
                "its energy x [cost] pue at energy_price_per_kwh, plus gpu_hour_price per GPU of the source.",
                value,
                source=name,
                kind=kind,
                currency=source.currency or "",
            )
    return f


def _ledger(f: Families, source: SourceStatus) -> None:
    """The energy ledger's counters (analysis/ledger.py); absent until the source's GPUs gave energy."""
    ledger = source.ledger
    if ledger is None:
        return
    f.counter(
        "gpuwatch_source_energy_joules",
        "Energy of the source's GPUs while it was up, from their reset-safe energy counters; "
        "a GPU serving several sources is shared equally among them.",
        ledger.energy_joules,
        source=source.name,
    )
    f.counter(
        "gpuwatch_source_idle_seconds",
        "Time the source was up with none of its token counters moving, in spells of 5 s or more between scrapes.",
        ledger.idle_seconds,
        source=source.name,
    )
    f.counter(
        "gpuwatch_source_idle_joules",
        "The part of gpuwatch_source_energy_joules_total spent while the source was idle (up, no tokens moving).",
        ledger.idle_joules,
        source=source.name,
    )
    for currency, spent in ledger.spent.items():
        f.counter(
            "gpuwatch_source_cost",
            "What the source's share of its GPUs' energy (x [cost] pue, at energy_price_per_kwh) and GPU time "
            "(at gpu_hour_price) cost, at the prices in force at each poll.",
            spent,
            source=source.name,
            currency=currency,
        )
