"""A token source as configured: where its counters are, which of them, and which GPUs it runs on.

In the config file, one ``[[tokens]]`` table per inference server::

    [[tokens]]
    url = "http://127.0.0.1:8000/metrics"   # required; user:password@ is sent as basic auth
    name = "llama-70b"          # default: the preset, or host:port
    preset = "vllm"             # vllm, sglang, tgi, llamacpp, triton, trtllm, lmdeploy, dynamo, nim, ollama, or auto (default)
    generation_metric = "..."   # instead of a preset: the sample that counts generated tokens
    prompt_metric = "..."       # and, optionally, prompt tokens
    labels = { model_name = "meta-llama/Llama-3.1-70B" }   # only series with these labels
    gpus = [0, 1]               # or "auto" (default): found from the process listening on the port
    timeout = "2s"              # for the whole exchange: connect, head, body, parsing
    max_bytes = 16777216        # a larger response is refused

Ollama (``preset = "ollama"``, gpuwatch/tokens/ollama.py) has no metrics: ``url`` is its base URL
(``http://127.0.0.1:11434``), whose ``/api/ps`` lists the loaded models, and ``listen`` runs a
transparent proxy in front of its API that counts the tokens of the answers passing through::

    [[tokens]]
    url = "http://127.0.0.1:11434"
    preset = "ollama"
    listen = "127.0.0.1:11435"  # point clients here (OLLAMA_HOST=127.0.0.1:11435)

On the command line, ``--tokens URL`` (repeatable) adds a source with every default.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuwatch.tokens import ollama
from gpuwatch.tokens.presets import AUTO, PRESETS, TokenMetrics
from gpuwatch.tokens.proxy import parse_listen

DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
KEYS = (
    "url",
    "name",
    "preset",
    "generation_metric",
    "prompt_metric",
    "labels",
    "gpus",
    "timeout",
    "max_bytes",
    "listen",
)


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One inference server whose tokens gpuwatch counts."""

    url: str  # may carry user:password@, sent as basic authentication; never shown (shown_url)
    name: str
    preset: str = AUTO  # a PRESETS key, "ollama", "auto" (recognised at the first scrape), or "custom"
    metrics: TokenMetrics | None = None  # None until an "auto" preset is recognised
    labels: Mapping[str, str] = field(default_factory=dict)
    gpus: tuple[int, ...] | None = None  # None: found from the server's processes
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_bytes: int = DEFAULT_MAX_BYTES
    listen: str | None = None  # preset "ollama": where its counting proxy listens (host:port)

    @property
    def shown_url(self) -> str:
        """The URL with its credentials masked: what ``/status`` and the log show."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """``url`` with a password masked (``user:xxxxx@``, as Go's ``URL.Redacted`` and Prometheus show
    it) and a user name alone, often an API token, masked too (``xxxxx@``)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:xxxxx" if colon else "xxxxx"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{masked}@{hostport}"))


def check_url(url: Any) -> str:
    """``url`` if it is an http(s) URL with a host; raises ValueError otherwise."""
    if not isinstance(url, str):
        raise ValueError("expected a URL such as 'http://127.0.0.1:8000/metrics'")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected a URL such as 'http://127.0.0.1:8000/metrics'")
    try:
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        raise ValueError("the port is not a number between 0 and 65535") from None
    return url


def default_name(url: str, preset: str) -> str:
    if preset not in (AUTO, "custom"):
        return preset
    parts = urllib.parse.urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def from_url(url: str) -> SourceConfig:
    """A source from ``--tokens URL``: preset recognised at the first scrape, GPUs found automatically."""
    return SourceConfig(url=check_url(url), name=default_name(url, AUTO))


def from_table(table: Mapping[str, Any], parse_duration: Any) -> SourceConfig:
    """A source from a ``[[tokens]]`` table; raises ``KeyError(key, message)`` naming the bad key."""
    for key in table:
        if key not in KEYS:
            raise KeyError(key, f"unknown key (known: {', '.join(KEYS)})")
    if "url" not in table:
        raise KeyError("url", "required: the server's metrics URL, e.g. 'http://127.0.0.1:8000/metrics'")
    url = _checked("url", table["url"], check_url)
    generation, prompt = table.get("generation_metric"), table.get("prompt_metric")
    if generation is not None or prompt is not None:
        if "preset" in table:
            raise KeyError("preset", "give either a preset or generation_metric/prompt_metric, not both")
        if not isinstance(generation, str) or not generation:
            raise KeyError("generation_metric", "required with prompt_metric: the sample counting generated tokens")
        if prompt is not None and (not isinstance(prompt, str) or not prompt):
            raise KeyError("prompt_metric", "expected a sample name")
        preset = "custom"
        metrics: TokenMetrics | None = TokenMetrics(generation, prompt)
    else:
        preset = table.get("preset", AUTO)
        if preset != AUTO and preset not in PRESETS and preset != ollama.PRESET:
            known = ", ".join([*PRESETS, ollama.PRESET, AUTO])
            raise KeyError("preset", f"{preset!r} is not a preset (known: {known})")
        metrics = ollama.METRICS if preset == ollama.PRESET else PRESETS.get(preset)
    listen = table.get("listen")
    if listen is not None:
        if preset != ollama.PRESET:
            raise KeyError("listen", 'a counting proxy is for Ollama only: set preset = "ollama"')
        _checked("listen", listen, _listen)
    name = table.get("name", default_name(url, preset))
    if not isinstance(name, str) or not name:
        raise KeyError("name", "expected a non-empty string")
    return SourceConfig(
        url=url,
        name=name,
        preset=preset,
        metrics=metrics,
        labels=_checked("labels", table.get("labels", {}), _labels),
        gpus=_checked("gpus", table.get("gpus", AUTO), _gpus),
        timeout_s=_checked("timeout", table.get("timeout", DEFAULT_TIMEOUT_S), lambda v: _timeout(v, parse_duration)),
        max_bytes=_checked("max_bytes", table.get("max_bytes", DEFAULT_MAX_BYTES), _max_bytes),
        listen=listen,
    )


def _checked(key: str, value: Any, check: Any) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        shown = redact_url(value) if key == "url" and isinstance(value, str) else value
        raise KeyError(key, f"value {shown!r}: {exc}") from None


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError('expected a table of label = "value", e.g. { model_name = "llama" }')
    return dict(value)


def _gpus(value: Any) -> tuple[int, ...] | None:
    if value == AUTO:
        return None
    if not isinstance(value, list) or not value:
        raise ValueError('expected "auto" or a list of GPU indices, e.g. [0, 1]')
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        raise ValueError('expected "auto" or a list of GPU indices, e.g. [0, 1]')
    if len(set(value)) != len(value):
        raise ValueError("a GPU is listed twice")
    return tuple(sorted(value))


def _timeout(value: Any, parse_duration: Any) -> float:
    seconds = float(parse_duration(value))
    if not 0.05 <= seconds <= 60:
        raise ValueError("out of range: must be between 0.05 s and 60 s")
    return seconds


def _listen(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected host:port to listen on, e.g. '127.0.0.1:11435'")
    if parse_listen(value)[1] == 0:
        raise ValueError("port 0 would be a different free port each start; give the port clients use")
    return value


def _max_bytes(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 1024**3:
        raise ValueError("expected a whole number of bytes between 1024 and 1073741824")
    return value
