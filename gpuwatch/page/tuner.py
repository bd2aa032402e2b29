"""A power-limit tuner result (``gpuwatch tune power-limit --json``) for the live page, checked strictly.

The format is the tuner's (issue 18 item 4)::

    {"gpus": [0, 1], "source": "vllm", "original_limits_watts": {"0": 300.0, "1": 300.0},
     "restored": true,
     "points": [{"limit_watts": 200.0, "tokens_per_second": 1210.0, "tokens_per_joule": 3.1,
                 "power_watts": 390.0}, ...],
     "recommended": {"limit_watts": 250.0, "throughput_ratio": 0.978, "energy_ratio": 0.84}}

``source`` is null when the tuner measured the GPUs' own work; ``original_limits_watts`` may be a
mapping by GPU index or a list in the order of ``gpus``; ``recommended`` may be null (no limit kept
the throughput asked for). Every key above must be there with a value of its type; a value that is
wrong is refused with the file, the key and the value. Keys the page does not draw are ignored, so a
newer tuner's additions do not break an older page.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuwatch.config import ConfigError, read_text_file

POINT_KEYS = ("limit_watts", "tokens_per_second", "tokens_per_joule", "power_watts")
RECOMMENDED_KEYS = ("limit_watts", "throughput_ratio", "energy_ratio")


class TunerResultError(ConfigError):
    """A tuner result file that cannot be shown; the message names the file, the key and the value."""


def load(path: str | Path) -> dict[str, Any]:
    """The checked result, as the page's JSON carries it; raises :class:`TunerResultError`."""
    path = Path(path)
    what = "tuner result"
    try:
        text = read_text_file(path, what)
    except ConfigError as exc:
        raise TunerResultError(str(exc)) from None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, and an integer over 4300 digits
        raise TunerResultError(f"{what} {path}: not valid JSON: {exc}") from None
    return _check(doc, f"{what} {path}")


def _check(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise TunerResultError(f"{where}: expected a JSON object (gpuwatch tune power-limit --json), got {_kind(doc)}")
    for key in ("gpus", "source", "original_limits_watts", "restored", "points", "recommended"):
        if key not in doc:
            raise TunerResultError(f"{where}: key {key!r} is missing")
    gpus = doc["gpus"]
    if not isinstance(gpus, list) or not gpus or not all(_index(g) for g in gpus):
        raise _bad(where, "gpus", gpus, "expected a non-empty list of GPU indices")
    if doc["source"] is not None and not isinstance(doc["source"], str):
        raise _bad(where, "source", doc["source"], "expected a source name or null")
    if not isinstance(doc["restored"], bool):
        raise _bad(where, "restored", doc["restored"], "expected true or false")
    originals = _originals(doc["original_limits_watts"], gpus, where)
    points = doc["points"]
    if not isinstance(points, list) or not points:
        raise _bad(where, "points", points, "expected a non-empty list of measured limits")
    checked_points = [_point(p, f"points[{n}]", where) for n, p in enumerate(points)]
    limits = [p["limit_watts"] for p in checked_points]
    if len(set(limits)) != len(limits):
        raise _bad(where, "points", limits, "two points have the same limit_watts")
    recommended = doc["recommended"]
    if recommended is not None:
        if not isinstance(recommended, dict):
            raise _bad(where, "recommended", recommended, "expected an object or null")
        recommended = {k: _number(recommended, k, "recommended", where) for k in RECOMMENDED_KEYS}
        if recommended["limit_watts"] not in limits:
            raise _bad(
                where, "recommended.limit_watts", recommended["limit_watts"], "not the limit of any of the points"
            )
    return {
        "gpus": gpus,
        "source": doc["source"],
        "original_limits_watts": originals,
        "restored": doc["restored"],
        "points": sorted(checked_points, key=lambda p: p["limit_watts"]),
        "recommended": recommended,
    }


def _originals(value: Any, gpus: list[int], where: str) -> dict[str, float]:
    key = "original_limits_watts"
    if isinstance(value, list) and len(value) == len(gpus):
        value = {str(g): v for g, v in zip(gpus, value, strict=True)}
    if not isinstance(value, dict):
        raise _bad(where, key, value, "expected the limit of each GPU in gpus, by index or in order")
    if sorted(value) != sorted(str(g) for g in gpus):
        raise _bad(where, key, value, f"expected a limit for each of GPUs {gpus} and no other")
    return {index: _number(value, index, key, where) for index in value}


def _point(point: Any, key: str, where: str) -> dict[str, float | None]:
    if not isinstance(point, dict):
        raise _bad(where, key, point, f"expected an object with {', '.join(POINT_KEYS)}")
    checked: dict[str, float | None] = {}
    for name in POINT_KEYS:
        # a limit whose source served nothing in its dwell has no tokens figures; it still has a power
        nullable = name.startswith("tokens_")
        if nullable and point.get(name, 0) is None:
            checked[name] = None
        else:
            checked[name] = _number(point, name, key, where)
    return checked


def _number(table: dict[str, Any], name: str, key: str, where: str) -> float:
    if name not in table:
        raise TunerResultError(f"{where}: key {key}.{name} is missing")
    value = table[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise _bad(where, f"{key}.{name}", value, "expected a number, 0 or more")
    return float(value)


def _index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)


def _bad(where: str, key: str, value: Any, why: str) -> TunerResultError:
    shown = json.dumps(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return TunerResultError(f"{where}: key {key!r}: value {shown}: {why}")


@dataclass
class TunerFile:
    """The result file the page shows, read again whenever it changes (a new tuner run rewrites it);
    one that cannot be read or checked is shown as its error, not a stale curve."""

    path: Path
    _stamp: tuple[int, int, int] | None = None
    _shown: dict[str, Any] | None = None

    def current(self) -> dict[str, Any]:
        """``{"path", "result"}`` or ``{"path", "error"}``."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError as exc:
            return {"path": str(self.path), "error": f"tuner result {self.path}: cannot read it: {exc.strerror}"}
        if stamp != self._stamp or self._shown is None:
            try:
                self._shown = {"path": str(self.path), "result": load(self.path)}
            except TunerResultError as exc:
                self._shown = {"path": str(self.path), "error": str(exc)}
            self._stamp = stamp
        return self._shown
