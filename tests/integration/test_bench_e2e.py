"""`moderator bench e2e` against the real broker, tiny and without the peer: every phase
runs and reports positive figures. A smoke test, never a timing assertion."""

from __future__ import annotations

from moderator.bench.e2e import E2EOptions, run_e2e_bench


async def test_bench_e2e_runs_tiny_against_the_broker(kafka_bootstrap: str) -> None:
    options = E2EOptions(
        model="demo",
        events=20,
        broker=kafka_bootstrap,
        peers=(),
        duration=2.0,
        unique=3,
        partitions=2,
        providers=["cpu"],
        timeout=120.0,
    )
    data = (await run_e2e_bench(options, progress=lambda _: None)).as_dict()
    assert data["bench"] == "e2e"
    assert data["ratio"] is None  # no peer
    rows = {(r["system"], r["load"]): r for r in data["rows"]}
    assert set(rows) == {("ours", "max"), ("ours", "half")}
    peak, half = rows[("ours", "max")], rows[("ours", "half")]
    assert peak["complete"]
    assert peak["answered"] == 20
    assert peak["dlq"] == 0
    assert peak["verdicts_s"] > 0
    assert peak["mean_batch"] >= 1
    # No cache in the bench: parse, hash and decode are one "prepare" trip.
    assert {"prepare", "inference", "total"} <= set(peak["stage_p50_ms"])
    assert half["complete"]
    assert half["answered"] == half["events"] > 0
    assert half["latency_samples"] > 0
    assert 0 < half["p50_ms"] <= half["p99_ms"]
    # Where the slowest tenth of events waited, next to all of them.
    assert {"total", "outside"} <= set(half["stage_p50_ms"])
    assert {"total", "outside"} <= set(half["slowest_tenth_stage_p50_ms"])
    assert data["ours_half_load_p99_ms"] == half["p99_ms"]
    assert data["environment"]["versions"]["aiokafka"]
