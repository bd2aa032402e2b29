"""Servers whose token metrics are switched off: recognised from how they refuse, with the flag to add.

An inference server started without its metrics flag still answers on its port, so the scrape fails
with an HTTP error that on its own says little ("HTTP 501", "HTTP 404"). This module turns the
refusals of the servers that keep their metrics off by default into a sentence naming the flag. It is
pure: the tracker hands it what the refusal carried (:class:`~gpuwatch.tokens.fetch.FetchError`).

What each server answers, and where that is from:

* llama.cpp ``llama-server`` without ``--metrics``: ``501 Not Implemented``, ``Server: llama.cpp``,
  body ``{"error":{"code":501,"message":"This server does not support metrics endpoint. Start it
  with `--metrics`","type":"not_supported_error"}}`` (captured from the build in tests/llama_server.py:
  tests/data/inference-metrics/llamacpp-metrics-off.http). Recognised by its body whatever the preset.
* SGLang without ``--enable-metrics``: the route is never mounted (``add_prometheus_middleware`` runs
  only ``if server_args.enable_metrics``, sglang/srt/entrypoints/http_server.py), so FastAPI's default
  ``404`` with ``{"detail":"Not Found"}``. That answer is every FastAPI app's, so it is read as SGLang's
  only for a source whose preset is ``sglang``; for one still to be recognised (``auto``) the flag is
  named as a possibility.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MetricsOff:
    """How one server refuses ``/metrics`` while its metrics are switched off."""

    server: str  # as people call it
    flag: str  # what to add to its command line
    status: int
    body_has: bytes  # a piece of the refusal's body that says so
    preset_only: str | None = None  # the refusal is generic: believe it only for this preset


KNOWN = (
    MetricsOff("llama-server", "--metrics", 501, b"does not support metrics endpoint"),
    MetricsOff("SGLang", "--enable-metrics", 404, b'"detail":"Not Found"', preset_only="sglang"),
)


def explain(preset: str | None, status: int | None, body: bytes) -> str | None:
    """The sentence for a refusal of a server whose metrics are off, or None if it is not one."""
    for known in KNOWN:
        if status != known.status or known.body_has.replace(b" ", b"") not in body.replace(b" ", b""):
            continue
        if known.preset_only is not None and preset != known.preset_only:
            if preset in (None, "auto"):  # not recognised yet: say it, as a possibility
                return f"HTTP {status}: no metrics at this URL; if this is {known.server}, start it with {known.flag}"
            continue
        return (
            f"HTTP {status}: {known.server} serves no metrics unless started with {known.flag}; "
            f"add {known.flag} to its command line"
        )
    return None
