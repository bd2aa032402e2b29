"""The overhead benchmark still runs end to end (``python -m benchmarks --quick``).

It checks that the benchmark works and prints every part, never how fast anything is: timings
belong to the benchmark's table, not to assertions.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_quick_benchmark_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    # find_spec, not import: importing gpustat patches pynvml for every later test in this process.
    missing = [name for name in ("gpustat", "nvitop") if importlib.util.find_spec(name) is None]
    if missing:
        message = f"{', '.join(missing)} not installed: pip install -e '.[bench]'"
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run installs the bench extra)")
        pytest.skip(message)
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for heading in (
        "NVML calls per GPU per poll",
        "CPU per GPU per poll",
        "/metrics latency",
        "hangs 5 s",
        "Steady state",
        "Tokens per joule under bursty decode",
        "1 Hz power polling",
        "Targets",
    ):
        assert heading in result.stdout
    results = json.loads(out.read_text())
    assert results["calls"]["fast_total"] > 0
    assert {row["tool"] for row in results["cpu"]} == {"gpuwatch", "gpustat", "nvitop"}
    assert all(row["values_per_gpu"] > 0 for row in results["cpu"])
    assert all(row["scrapes"] > 0 and row["series_per_gpu"] > 0 for row in results["scrape"])
    assert results["hang"][0]["scrapes"] > 0
    assert results["steady"]["rss_mib"] > 0
    assert [row["profile"] for row in results["efficiency"]] == ["rtx-a6000", "a100"]
    assert all(row["windows"] > 0 for row in results["efficiency"])


def test_quick_proxy_benchmark_prints_its_table(tmp_path: Path) -> None:
    out = tmp_path / "proxy.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.proxy", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "added by the proxy at p99" in result.stdout
    results = json.loads(out.read_text())
    assert results["proxy_counted"] == {"prompt": 12, "generation": 80, "answers": 4}  # 4 streams of 20 chunks
