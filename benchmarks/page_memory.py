"""``python -m benchmarks.page_memory``: what the live page's ring buffer costs, at 8 and 64 GPUs.

Memory, not time: the ring (:class:`gpuwatch.page.history.History`) is filled to capacity with
snapshots of N GPUs, and ``tracemalloc`` counts the bytes it holds (the snapshots it took in are
gone by then). Also the size of ``/api/page``'s full load (what a browser fetches when it opens the
page) and of one poll's update, as JSON and gzipped as the server sends it to a browser.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import tracemalloc

from gpuwatch.model import GpuIdentity, GpuReading, GpuStatus, Snapshot
from gpuwatch.page.history import History
from gpuwatch.records import Verdict


def _snapshot(timestamp: float, gpus: int) -> Snapshot:
    statuses = []
    for index in range(gpus):
        reading = GpuReading(
            timestamp,
            temperature_celsius=60.0 + index % 20,
            temperature_margin_celsius=30.0,
            power_watts=250.0 + (timestamp % 50),
            power_limit_watts=300.0,
            clocks_hertz={"sm": 1.98e9},
            memory_used_bytes=40 * 2**30,
            clock_event_reasons=frozenset({"sw_power_cap"}),
        )
        identity = GpuIdentity(index=index, uuid=f"GPU-{index}", name="sim", pci_bus_id=f"0000:{index:02x}:00.0")
        statuses.append(GpuStatus(identity, up=True, reading=reading, verdict=Verdict("ok", (), {})))
    return Snapshot(timestamp=timestamp, nvml_up=True, gpus=tuple(statuses))


def measure(gpus: int, poll_interval_s: float) -> dict[str, float]:
    """Bytes the full ring holds, and the JSON sizes of a full load and of one poll's update."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    history = History(poll_interval_s)
    t = 1_800_000_000.0
    for _ in range(history.capacity + 10):  # past capacity: the ring has wrapped
        history.on_snapshot(_snapshot(t, gpus))
        t += poll_interval_s
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    full = json.dumps(history.since(), separators=(",", ":")).encode()
    update = json.dumps(history.since(t - 1.5 * poll_interval_s), separators=(",", ":")).encode()
    return {
        "gpus": gpus,
        "poll_interval_s": poll_interval_s,
        "points": history.capacity,
        "ring_bytes": held,
        "full_load_json_bytes": len(full),
        "full_load_gzip_bytes": len(gzip.compress(full, compresslevel=1)),
        "update_json_bytes": len(update),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.page_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = [measure(gpus, poll) for poll in (1.0, 0.5) for gpus in (8, 64)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| GPUs | poll | points per GPU | ring buffer | /api/page full load (gzip) | one poll's update |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['gpus']} | {r['poll_interval_s']:g} s | {r['points']} | {r['ring_bytes'] / 1024:.0f} KiB "
            f"| {r['full_load_json_bytes'] / 1024:.0f} KiB ({r['full_load_gzip_bytes'] / 1024:.0f} KiB) "
            f"| {r['update_json_bytes'] / 1024:.1f} KiB |"
        )


if __name__ == "__main__":
    main()
