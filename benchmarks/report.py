"""The results as Markdown tables, with each target of issue 8 checked against its figure."""

from __future__ import annotations

from typing import Any

from benchmarks import efficiency


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header, *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    out = [
        f"gpuwatch overhead on the simulated driver: {m['date']}, {m['cpus']} x {m['cpu_model']}, "
        f"Python {m['python']}, {m['system']}{' (quick run: figures are not meaningful)' if r['quick'] else ''}",
        "",
        f"NVML calls per GPU per poll ({r['calls']['gpus']} GPUs; slow = the poll that also runs the 10 s loop)",
        "",
    ]
    c = r["calls"]
    names = sorted(set(c["fast"]) | set(c["slow"]))
    rows = [[n, c["fast"].get(n, 0), c["slow"].get(n, 0)] for n in names]
    rows.append(["total", c["fast_total"], c["slow_total"]])
    out += [_table(["function", "fast poll", "slow poll"], rows), ""]

    out += ["CPU per GPU per poll (median of interleaved runs; values = numbers collected per GPU per poll)", ""]
    rows = []
    for gpus in sorted({row["gpus"] for row in r["cpu"]}):
        by_tool = {row["tool"]: row for row in r["cpu"] if row["gpus"] == gpus}
        ours = by_tool["gpuwatch"]
        for tool, row in by_tool.items():
            rows.append(
                [
                    gpus,
                    tool,
                    row["cpu_per_gpu_per_poll_us"],
                    row["values_per_gpu"],
                    row["cpu_per_gpu_per_poll_us"] / ours["cpu_per_gpu_per_poll_us"],
                    ours["values_per_gpu"] / row["values_per_gpu"],
                ]
            )
    out += [_table(["GPUs", "tool", "µs CPU", "values", "CPU ÷ gpuwatch", "gpuwatch values ÷"], rows), ""]

    out += ["/metrics latency (one scraper back to back; 20 scrapers each once a second at spread offsets)", ""]
    rows = [
        [
            s["gpus"],
            s["poll_interval"],
            s["scrapers"],
            s["scrapes"],
            s["p50_ms"],
            s["p99_ms"],
            s["max_ms"],
            s["bytes"],
            s["series_per_gpu"],
        ]
        for s in r["scrape"]
    ]
    out += [
        _table(["GPUs", "poll", "scrapers", "scrapes", "p50 ms", "p99 ms", "max ms", "bytes", "series/GPU"], rows),
        "",
    ]

    out += ["/metrics latency while every NVML call for GPU 0 hangs 5 s (1 Hz poll, one scraper)", ""]
    rows = [
        [h["gpus"], h["scrapes"], h["p50_ms"], h["p99_ms"], h["max_ms"], h["last_poll_advanced_s"]] for h in r["hang"]
    ]
    out += [_table(["GPUs", "scrapes", "p50 ms", "p99 ms", "max ms", "last poll advanced s"], rows), ""]

    s = r["steady"]
    out += ["Steady state of gpuwatch serve (1 Hz, scraped every 15 s)", ""]
    out += [
        _table(
            ["GPUs", "seconds", "CPU % of one core", "RSS MiB"],
            [[s["gpus"], s["seconds"], s["cpu_core_percent"], s["rss_mib"]]],
        ),
        "",
    ]

    if "efficiency" in r:
        out += ["Tokens per joule under bursty decode, against the simulator's truth", ""]
        out += [efficiency.render(r["efficiency"]), ""]

    out += ["Targets (issue 8)", "", _table(["target", "measured", "met"], targets(r))]
    return "\n".join(out)


def targets(r: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    fast = r["calls"]["fast_total"]
    rows.append(["≤ 10 NVML calls per GPU per fast poll", f"{fast:g}", _ok(fast <= 10)])
    for gpus in sorted({row["gpus"] for row in r["cpu"]}):
        by_tool = {row["tool"]: row for row in r["cpu"] if row["gpus"] == gpus}
        ours, peer = by_tool["gpuwatch"], by_tool["gpustat"]
        cpu_ok = ours["cpu_per_gpu_per_poll_us"] <= peer["cpu_per_gpu_per_poll_us"]
        values_ok = ours["values_per_gpu"] >= 3 * peer["values_per_gpu"]
        rows.append(
            [
                f"{gpus} GPUs: CPU per GPU ≤ gpustat's, with ≥ 3x its values",
                f"{ours['cpu_per_gpu_per_poll_us']:.0f} vs {peer['cpu_per_gpu_per_poll_us']:.0f} µs; "
                f"{ours['values_per_gpu']} vs {peer['values_per_gpu']} values",
                _ok(cpu_ok and values_ok),
            ]
        )
    for row in [*r["scrape"], *r["hang"]]:
        limit = 10 if row["gpus"] <= 8 else 50
        hang = " during a hang" if "hang_s" in row else ""
        rows.append(
            [
                f"p99 ≤ {limit} ms, {row['gpus']} GPUs, {row['poll_interval']} poll, {row['scrapers']} scraper(s){hang}",
                f"{row['p99_ms']:.1f} ms",
                _ok(row["p99_ms"] <= limit),
            ]
        )
    s = r["steady"]
    rows.append(
        ["≤ 1 % of one core at 1 Hz, 8 GPUs", f"{s['cpu_core_percent']:.2f} %", _ok(s["cpu_core_percent"] <= 1)]
    )
    rows.append(["resident memory ≤ 50 MiB", f"{s['rss_mib']:.1f} MiB", _ok(s["rss_mib"] <= 50)])
    return rows


def _ok(met: bool) -> str:
    return "yes" if met else "NO"
