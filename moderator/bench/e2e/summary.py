"""What `bench e2e` reports: the table's columns, the headline results (ours ÷ naive at max
load, p50/p99 at half load) and the notes that say where ours spent its time."""

from __future__ import annotations

from typing import Any, Final

from moderator.bench.e2e.measures import bound
from moderator.bench.e2e.options import E2EOptions, percentile
from moderator.bench.e2e.phases import Phase
from moderator.bench.report import Column, Report

COLUMNS: Final = [
    Column("system", "system"),
    Column("load", "load"),
    Column("answered", "events"),
    Column("seconds", "seconds"),
    Column("verdicts_s", "verdicts/s"),
    Column("offered_s", "offered/s"),
    Column("p50_ms", "p50 ms"),
    Column("p99_ms", "p99 ms"),
    Column("max_ms", "max ms"),
    Column("cpu_service_ms", "service CPU ms/ev"),
    Column("cpu_broker_ms", "broker ms/ev"),
    Column("cpu_load_ms", "load ms/ev"),
    Column("gpu_busy", "GPU busy %"),
    Column("dlq", "dlq"),
    Column("complete", "complete"),
]


def summarize(report: Report, phases: list[Phase], opts: E2EOptions) -> None:
    """Fill `report`'s rows, results and notes from the phases that ran."""
    report.rows = [_flat_usage(p.row()) for p in phases]
    by = {(p.system, p.load): p for p in phases}
    ours, naive = by.get(("ours", "max")), by.get(("naive", "max"))
    strong = by.get(("strong", "max"))
    ours_half, naive_half = by.get(("ours", "half")), by.get(("naive", "half"))
    report.results = {
        "ratio": ours.rate / naive.rate if ours and naive and naive.rate else None,
        "peer": "naive" if naive else None,
        "ours_verdicts_s": ours.rate if ours else None,
        "naive_verdicts_s": naive.rate if naive else None,
        "ratio_strong": ours.rate / strong.rate if ours and strong and strong.rate else None,
        "strong_verdicts_s": strong.rate if strong else None,
        "ours_half_load_p50_ms": percentile(ours_half.latencies_ms, 50) if ours_half else None,
        "ours_half_load_p99_ms": percentile(ours_half.latencies_ms, 99) if ours_half else None,
        "naive_half_load_p50_ms": percentile(naive_half.latencies_ms, 50) if naive_half else None,
        "naive_half_load_p99_ms": percentile(naive_half.latencies_ms, 99) if naive_half else None,
    }
    if any(not p.complete for p in phases):
        report.notes.append("some phase did not get every answer before its deadline")
    report.notes.append(
        "max load: N preloaded events, clock from ready (group joined) to the N-th answer; "
        "half load: latency = verdict record timestamp - input record timestamp"
    )
    if ours_half and ours_half.extra.get("slowest_tenth_stage_p50_ms"):
        stages = ours_half.extra["slowest_tenth_stage_p50_ms"]
        report.notes.append(
            "ours at half load, the slowest tenth of events, median ms per stage ('outside' ="
            " latency not covered by the service's total): "
            + ", ".join(f"{name} {ms:g}" for name, ms in stages.items())
        )
    if ours_half and ours_half.extra.get("batch_stage_ms"):
        report.notes.append(
            "ours at half load, per batch, all replicas, the whole phase with its warm-up (p99"
            " and largest as the bounds of their histogram buckets): "
            + ", ".join(
                f"{name} n={int(v['batches'])} mean {v['mean_ms']:g} ms"
                f" p99 {bound(v['p99_le_ms'])} largest {bound(v['max_le_ms'])}"
                for name, v in ours_half.extra["batch_stage_ms"].items()
            )
        )
    if ours_half and ours_half.extra.get("latency_by_second"):
        report.notes.append(
            "ours at half load, largest latency (ms) per second of sending, warm-up included: "
            + " ".join(f"{row['max_ms']:.0f}" for row in ours_half.extra["latency_by_second"])
        )
    if ours_half and ours_half.extra.get("loop_lag_ms"):
        lag = ours_half.extra["loop_lag_ms"]
        report.notes.append(
            f"ours at half load, event loop lag, all replicas ({int(lag['samples'])} samples):"
            f" mean {lag['mean_ms']:g} ms, p99 {bound(lag['p99_le_ms'])},"
            f" largest {bound(lag['max_le_ms'])}"
        )
    for phase in (p for p in phases if p.load == "max" and "cpu_ms_per_event" in p.extra):
        cpu = phase.extra["cpu_ms_per_event"]
        budget = phase.extra.get("stage_cpu_us_per_event") or {}
        report.notes.append(
            f"{phase.system} at max load, CPU per event: {phase.system} {cpu['service_ms']:g} ms"
            f" (event loops {cpu['service_loop_ms']:g}, other threads"
            f" {cpu['service_threads_ms']:g}, child processes"
            f" {cpu['service_decode_processes_ms']:g}), broker {cpu['broker_ms']:g}, load"
            f" generator and collector {cpu['load_ms']:g}"
            + ("; by stage, µs: " if budget else "")
            + ", ".join(f"{name} {us:g}" for name, us in budget.items() if us)
        )
    if opts.replicas > 1:
        report.notes.append(
            "replicas: the clock starts when the first is ready; verdicts_s_all_ready counts "
            "only the answers after the last one was ready (start-up rebalances left out)"
        )


def _flat_usage(row: dict[str, Any]) -> dict[str, Any]:
    """The table's CPU and GPU columns from a row's nested usage figures."""
    cpu = row.get("cpu_ms_per_event") or {}
    busy = row.get("gpu_busy_pct") or {}
    return row | {
        "cpu_service_ms": cpu.get("service_ms"),
        "cpu_broker_ms": cpu.get("broker_ms"),
        "cpu_load_ms": cpu.get("load_ms"),
        "gpu_busy": "/".join(f"{v:g}" for v in busy.values()) or None,
    }
