"""The ledger in the /status document and the `gpuwatch status` table."""

from __future__ import annotations

from gpuwatch.model import Snapshot, SourceStatus
from gpuwatch.records import Efficiency, SourceLedger
from gpuwatch.status import render_table, to_document

EFFICIENCY = Efficiency(
    window_seconds=60.0,
    joules=36_000.0,
    tokens={"generation": 72_000.0, "prompt": 108_000.0},
    tokens_per_joule={"generation": 2.0, "prompt": 3.0},
    joules_per_token={"generation": 0.5, "prompt": 1 / 3, "total": 0.2},
)
PRICED = SourceStatus(
    name="vllm",
    url="http://127.0.0.1:8000/metrics",
    up=True,
    preset="vllm",
    gpus=(0, 1),
    efficiency=EFFICIENCY,
    ledger=SourceLedger(energy_joules=7_200_000.0, idle_seconds=600.0, idle_joules=90_000.0),
    cost_per_million_tokens={"generation": 0.05, "total": 0.02},
    currency="EUR",
)
FRESH = SourceStatus(name="llama", url="http://127.0.0.1:8080/metrics", up=True, gpus=(2,))


def test_status_document_carries_the_ledger_and_cost():
    doc = to_document(Snapshot(timestamp=1.0, nvml_up=True, sources=(PRICED, FRESH)))
    priced, fresh = doc["sources"]
    assert (priced["energy_joules_total"], priced["idle_seconds_total"], priced["idle_joules_total"]) == (
        7_200_000.0,
        600.0,
        90_000.0,
    )
    assert priced["cost_per_million_tokens_by_kind"] == {"generation": 0.05, "total": 0.02}
    assert priced["currency"] == "EUR"
    assert priced["joules_per_token_by_kind"]["total"] == 0.2
    # before its GPUs gave energy, and without a price: null and empty, never zeros
    assert (fresh["energy_joules_total"], fresh["idle_joules_total"], fresh["currency"]) == (None, None, None)
    assert fresh["cost_per_million_tokens_by_kind"] == {}


def test_status_table_shows_a_ledger_row_per_source_that_has_one():
    table = render_table(to_document(Snapshot(timestamp=1.0, nvml_up=True, sources=(PRICED, FRESH))))
    header, *rows = table.split("\n\n")[-1].splitlines()
    assert header.startswith("SOURCE  ENERGY    IDLE   IDLE ENERGY  J/GEN TOKEN  J/TOKEN  COST/M GEN  COST/M TOKENS")
    assert rows == ["vllm    2.00 kWh  600 s  90.0 kJ      0.5 J        0.2 J    0.05 EUR    0.02 EUR"]
