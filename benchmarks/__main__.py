"""``python -m benchmarks [--quick] [--json PATH]``: measure gpuwatch's overhead and print a table.

Everything runs on the simulated driver library (no GPU needed): NVML calls per poll, CPU per GPU
per poll against gpustat and nvitop, ``/metrics`` latency (also during an NVML hang), the
steady-state CPU and memory of ``gpuwatch serve``, and the accuracy of tokens per joule against
1 Hz power polling (:mod:`benchmarks.efficiency`). ``--quick`` runs each part briefly, to check that
the benchmark works (CI), not how fast anything is.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import calls, cpu, efficiency, report, scrape, steady


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run that checks the benchmark works")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results.json"), help="where to write results")
    args = parser.parse_args(argv)
    q = args.quick

    results: dict[str, Any] = {
        "machine": machine(),
        "quick": q,
        "command": " ".join(["python -m benchmarks", *(argv or sys.argv[1:])]),
    }
    _step("NVML calls per poll")
    results["calls"] = calls.measure()
    _step("CPU per GPU per poll: gpuwatch, gpustat, nvitop")
    results["cpu"] = cpu.compare([1, 8] if q else [1, 8, 64], repeats=1 if q else 5)
    _step("/metrics latency")
    results["scrape"] = scrape.latency_matrix(
        [8] if q else [8, 64], ["1s"] if q else ["1s", "100ms"], [1, 20], seconds=1.5 if q else 10.0
    )
    _step("/metrics latency during an NVML hang")
    results["hang"] = [scrape.during_hang(gpus, seconds=2.0 if q else 8.0) for gpus in ([8] if q else [8, 64])]
    _step("steady-state daemon CPU and memory")
    results["steady"] = steady.measure(8, seconds=3.0 if q else 60.0, warm_up_s=1.0 if q else steady.WARM_UP_S)
    _step("tokens per joule under bursty decode: energy counter vs 1 Hz power polling")
    with tempfile.TemporaryDirectory() as folder:
        results["efficiency"] = efficiency.compare(180 if q else 1200, Path(folder))

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(report.render(results))
    print(f"\nJSON: {args.json}")
    return 0


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def _step(what: str) -> None:
    print(f"--- {what}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
