"""A GPU's thermal limits, whichever way its driver reports them.

Real cards answer in four ways (shared/research/real-cards.md, tests/data/captures/):

* **absolute** thresholds only (`nvmlDeviceGetTemperatureThreshold`: A6000 98/95/93, A100 92/89/85);
* **T.Limit** only: offsets from the T.Limit point (field ids 193-196: L40S shutdown -5, slowdown -2,
  max operating 0; H100/H200 -8/-2/0; RTX 4090 -7/-2/0) and, from R570, the current distance to
  that point (`nvmlDeviceGetMarginTemperature`, nvidia-smi's "GPU T.Limit Temp");
* **both** (an H800 at R525);
* **neither**, or T.Limit offsets without the margin query (an Ada card on a driver before R570).

The T.Limit point is the max-operating point: a T.Limit offset of -2 (slowdown) means 2 °C past it.
So the margin (degrees left before the max-operating point) means the same on every card, and where a
card gives offsets and a margin but no absolute thresholds, its absolute thresholds follow:
``point = temperature + margin`` and ``threshold = point - offset``.
"""

from __future__ import annotations

from collections.abc import Mapping

# How each threshold series was obtained (the `gpuwatch status` document says it per GPU).
ABSOLUTE = "absolute"  # the driver's own absolute thresholds
TLIMIT = "tlimit"  # the driver's margin, and absolute thresholds derived from its T.Limit offsets
MARGIN_ONLY = "margin"  # the driver's margin, no offsets: no absolute thresholds
NONE = "none"  # nothing to compare the temperature with


def margin_celsius(
    temperature: float | None, reported_margin: float | None, thresholds: Mapping[str, float]
) -> float | None:
    """Degrees left before the max-operating point: the driver's margin where it answers, else
    max_operating minus the GPU temperature; None when neither can be had."""
    if reported_margin is not None:
        return reported_margin
    limit = thresholds.get("max_operating")
    if limit is None or temperature is None:
        return None
    return float(limit - temperature)


def thresholds_celsius(
    temperature: float | None,
    reported_margin: float | None,
    absolute: Mapping[str, float],
    tlimit: Mapping[str, float],
) -> Mapping[str, float]:
    """Absolute thresholds in °C: the driver's where it gives them; for the GPU thresholds it does
    not give, derived from the T.Limit offsets (see the module doc). The memory's T.Limit offset is
    relative to the memory's own point, which no query gives, so it is never derived."""
    if temperature is None or reported_margin is None or not tlimit:
        return absolute
    point = temperature + reported_margin
    derived = {name: point - offset for name, offset in tlimit.items() if name != "memory_max" and name not in absolute}
    return {**absolute, **derived} if derived else absolute


def reference(absolute: Mapping[str, float], tlimit: Mapping[str, float], reported_margin: float | None) -> str:
    """Which of the four ways (module doc) this GPU's temperature is judged by."""
    if "max_operating" in absolute:
        return ABSOLUTE
    if reported_margin is not None:
        return TLIMIT if tlimit else MARGIN_ONLY
    return NONE
