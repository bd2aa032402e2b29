"""Tokens per joule under bursty decode: gpuwatch's energy-counter method against 1 Hz power polling.

``python -m benchmarks.efficiency [--quick]``

A simulated vLLM server on two GPUs whose work comes in random on/off spells (decode waves as
requests come and go). Each simulated second gpuwatch polls and, 0.4 s later, scrapes the server
(so the energy at the scrape is interpolated between polls, as in the daemon). Beside it, an
nvidia-smi-style script (``while true; do nvidia-smi --query-gpu=power.draw …; sleep 1; done``)
reads ``nvmlDeviceGetPowerUsage`` of both GPUs every 1.02 s (one second of sleep plus the ~20 ms an
nvidia-smi process takes), counts each reading for 1.02 s, and divides the same true tokens by
that energy. Both are compared, window by window (60 s, every 10 s), with the simulator's true
tokens and true energy.

On the RTX A6000 the power reading is a 1 s average, so 1 Hz polling sees all of the time; on an
A100 (GA100) it is an instant reading, one 0.25 s step of the simulator out of four: the gap the
SC'24 paper measured on real A100/H100s (research/tokens-per-joule.md §1.4).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml

from gpuwatch.runtime import RuntimeOptions, assemble
from gpuwatch.sim.clock import ManualClock

WINDOW_S = 60
SCRAPE_OFFSET_S = 0.4
SCRIPT_PERIOD_S = 1.02


def scenario_text(profile: str) -> str:
    gpu = f'[[gpu]]\nprofile = "{profile}"\nload = 0.9\nburst_on_s = 1.5\nburst_off_s = 1.0\nburst_low = 0.1\n'
    return f'name = "bursty-decode-{profile}"\nseed = 11\n[[server]]\nname = "vllm"\ngpus = [0, 1]\n' + gpu + gpu


@dataclass
class _Window:
    truth: float
    gpuwatch: float
    power_polling: float


def measure(profile: str, seconds: int, folder: Path) -> dict[str, Any]:
    path = folder / f"bursty-{profile}.toml"
    path.write_text(scenario_text(profile))
    clock = ManualClock()
    with assemble(RuntimeOptions(simulate=str(path), tokens_window_s=WINDOW_S), clock=clock) as rt:
        rt.start(threads=False)
        library = rt.host.library
        assert library is not None
        server = library.servers[0]
        rt.step()  # opens NVML (pynvml initialised below it)
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in (0, 1)]
        truth: dict[int, tuple[float, float]] = {}
        samples: list[tuple[float, float]] = []  # the script's (time, joules counted for that reading)
        windows: list[_Window] = []
        events = sorted(
            [(float(t), "poll") for t in range(1, seconds + 1)]
            + [(t + SCRAPE_OFFSET_S, "scrape") for t in range(1, seconds + 1)]
            + [(k * SCRIPT_PERIOD_S, "script") for k in range(1, int(seconds / SCRIPT_PERIOD_S) + 1)]
        )
        for at, kind in events:
            clock.advance(at - clock.sim_seconds())
            if kind == "script":
                watts = sum(pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0 for h in handles)
                samples.append((at, watts * SCRIPT_PERIOD_S))
                continue
            if kind == "scrape":
                rt.scrape_tokens()
                with library.lock:
                    library.advance()
                    truth[round(at - SCRAPE_OFFSET_S)] = (server.true_tokens["generation"], server.true_energy_joules())
                continue
            t = round(at)
            efficiency = rt.step().sources[0].efficiency
            if t % 10 or t <= WINDOW_S + 2 or efficiency is None:
                continue
            # gpuwatch's window ends at the scrape before this poll, 0.6 s before it.
            end, start = t - 1, t - 1 - WINDOW_S
            true_tokens = truth[end][0] - truth[start][0]
            true_joules = truth[end][1] - truth[start][1]
            script_joules = sum(j for ts, j in samples if start + SCRAPE_OFFSET_S < ts <= end + SCRAPE_OFFSET_S)
            windows.append(
                _Window(
                    truth=true_tokens / true_joules,
                    gpuwatch=efficiency.tokens_per_joule["generation"],
                    power_polling=true_tokens / script_joules,
                )
            )
    return {
        "profile": profile,
        "simulated_seconds": seconds,
        "windows": len(windows),
        "true_tokens_per_joule": statistics.mean(w.truth for w in windows),
        "gpuwatch": _errors([(w.gpuwatch, w.truth) for w in windows]),
        "power_polling_1hz": _errors([(w.power_polling, w.truth) for w in windows]),
    }


def _errors(pairs: list[tuple[float, float]]) -> dict[str, float]:
    errors = [100.0 * (estimate - truth) / truth for estimate, truth in pairs]
    return {
        "mean_abs_error_pct": statistics.mean(abs(e) for e in errors),
        "max_abs_error_pct": max(abs(e) for e in errors),
        "mean_error_pct": statistics.mean(errors),
    }


def compare(seconds: int, folder: Path) -> list[dict[str, Any]]:
    return [measure(profile, seconds, folder) for profile in ("rtx-a6000", "a100")]


def render(rows: list[dict[str, Any]]) -> str:
    header = "| GPUs | true tok/J | method | mean abs error | max abs error | mean error (bias) |"
    lines = [header, "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        for method, label in (("gpuwatch", "gpuwatch (energy counter)"), ("power_polling_1hz", "1 Hz power polling")):
            e = row[method]
            lines.append(
                f"| 2x {row['profile']} | {row['true_tokens_per_joule']:.3f} | {label} | "
                f"{e['mean_abs_error_pct']:.2f} % | {e['max_abs_error_pct']:.2f} % | {e['mean_error_pct']:+.2f} % |"
            )
    windows = rows[0]["windows"]
    return "\n".join(lines) + f"\n({windows} windows of {WINDOW_S} s per row, bursty decode, simulated)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.efficiency", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 simulated minutes instead of 20")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        rows = compare(180 if args.quick else 1200, Path(folder))
    print(render(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
