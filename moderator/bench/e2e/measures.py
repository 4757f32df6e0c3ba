"""Measures of a phase beyond its rate: latency per second of sending, where the slowest
events spent their time (verdict `timings_ms`), and per-batch stages, event-loop lag and batch
sizes from the replicas' Prometheus texts."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final

import httpx
import numpy as np


def latency_by_second(sent: dict[str, int], answered: dict[str, int]) -> dict[str, Any]:
    """Per second of sending, from the phase's first event, warm-up included: how many events
    were answered, their median and their largest latency (ms).
    Why: a tail spread over the whole run (a slow stage) and one from a few stalls (the events
    of one or two seconds all late) give the same p99; the seconds tell them apart."""
    if not sent:
        return {}
    begin = min(sent.values())
    seconds: dict[int, list[float]] = defaultdict(list)
    for event_id, ts in sent.items():
        if event_id in answered:
            seconds[(ts - begin) // 1000].append(float(answered[event_id] - ts))
    rows = [
        {
            "second": second,
            "answered": len(values),
            "p50_ms": round(float(np.median(values)), 1),
            "max_ms": round(max(values), 1),
        }
        for second, values in sorted(seconds.items())
    ]
    return {"latency_by_second": rows} if rows else {}


def slow_event_stages(
    latency_by_id: dict[str, float], timings_by_id: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Where the slowest tenth of events spent their time, against all events: the median of
    each verdict `timings_ms` stage, plus `outside`, the latency the service's own `total`
    does not cover: from the bench producer's send to the service handling the event (the
    broker, the consumer's fetch, waiting for a slot), and building the verdict up to the
    service producer's send (the verdict's timestamp), not the broker's write of it.
    Why: a half-load p99 says that some events are slow, not which stage holds them."""
    timed = [(ms, timings_by_id[i]) for i, ms in latency_by_id.items() if i in timings_by_id]
    if not timed:
        return {}
    with_outside = [(ms, t | {"outside": ms - t.get("total", 0.0)}) for ms, t in timed]
    # By rank, not by a percentile cut: latencies are whole milliseconds, so ties at a cut
    # could take in a fifth of the events.
    ranked = sorted(with_outside, key=lambda pair: pair[0])
    slowest = ranked[-max(1, -(-len(ranked) // 10)) :]
    return {
        "stage_p50_ms": stage_medians([t for _, t in with_outside]),
        "slowest_tenth_stage_p50_ms": stage_medians([t for _, t in slowest]),
    }


_BATCH_STAGES: Final = ("queue", "inference", "gpu_decode", "gpu_wait", "gpu_finish")


def _histograms(
    metrics_texts: Sequence[str], metric: str, label: str | None = None
) -> dict[str, dict[str, float | None]]:
    """One histogram summed over the replicas' Prometheus texts, per value of `label` (all
    under "" without one): `count`, `mean_ms`, and `p99_le_ms` / `max_le_ms`, the upper
    bounds of the buckets holding the 99th percentile and the largest sample (None past the
    last bound)."""
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    sample = re.compile(rf"^{re.escape(metric)}_(bucket|sum)(?:\{{([^}}]*)\}})? (\S+)$", re.M)
    for text in metrics_texts:
        for kind, labels, value in sample.findall(text):
            found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            key = found.get(label, "") if label else ""
            if kind == "sum":
                sums[key] = sums.get(key, 0.0) + float(value)
            else:
                le = float(found["le"])  # "+Inf" parses as inf
                counts = buckets.setdefault(key, {})
                counts[le] = counts.get(le, 0.0) + float(value)
    out: dict[str, dict[str, float | None]] = {}
    for key, counts in buckets.items():
        total = counts.get(math.inf, 0.0)
        if not total:
            continue
        bounds = sorted(counts)
        p99 = next(le for le in bounds if counts[le] >= 0.99 * total)
        top = next(le for le in bounds if counts[le] >= total)
        out[key] = {
            "count": total,
            "mean_ms": round(1000 * sums.get(key, 0.0) / total, 2),
            "p99_le_ms": None if math.isinf(p99) else round(1000 * p99, 1),
            "max_le_ms": None if math.isinf(top) else round(1000 * top, 1),
        }
    return out


def batch_stages(metrics_texts: Sequence[str]) -> dict[str, Any]:
    """Per batch, over all replicas: how many, the mean, and the p99 and largest as bucket
    bounds, for the stages the batcher times (`moderator_stage_duration_seconds`), over the
    whole phase: unlike the latencies, the warm-up window is in. `gpu_wait` counts the
    batches that did not wait too, as 0.
    Why: a queue's tail comes from some batches being slow, which per-event medians hide."""
    stages = _histograms(metrics_texts, "moderator_stage_duration_seconds", "stage")
    out = {
        stage: {"batches": v.pop("count")} | v
        for stage, v in stages.items()
        if stage in _BATCH_STAGES
    }
    return {"batch_stage_ms": out} if out else {}


def loop_lag(metrics_texts: Sequence[str]) -> dict[str, Any]:
    """How late the replicas' event loops woke, over the whole phase
    (`moderator_event_loop_lag_seconds`, ten samples a second per replica).
    Why: a loop that runs late holds up every event at once, in no stage of its own."""
    lag = _histograms(metrics_texts, "moderator_event_loop_lag_seconds").get("")
    if lag is None:
        return {}
    return {"loop_lag_ms": {"samples": lag.pop("count")} | lag}


def bound(le_ms: float | None) -> str:
    """A histogram bucket's upper bound as the note lines print it."""
    return f"<= {le_ms:g} ms" if le_ms is not None else "> 30 s"


def stage_medians(timings: list[dict[str, float]]) -> dict[str, float]:
    """Median of each `timings_ms` stage over the verdicts (where the time goes, in ours)."""
    stages = sorted({k for t in timings for k in t})
    return {s: round(float(np.median([t[s] for t in timings if s in t])), 2) for s in stages}


def batch_mean(metrics_texts: Sequence[str]) -> float | None:
    """Mean inference batch size over the replicas' Prometheus texts."""
    total = count = 0.0
    for text in metrics_texts:
        found_sum = re.search(r"^moderator_batch_size_sum ([0-9.e+-]+)$", text, re.M)
        found_count = re.search(r"^moderator_batch_size_count ([0-9.e+-]+)$", text, re.M)
        if found_sum and found_count:
            total += float(found_sum.group(1))
            count += float(found_count.group(1))
    return total / count if count else None


async def scrape(urls: Sequence[str]) -> list[str]:
    texts = []
    async with httpx.AsyncClient(timeout=5.0) as client:
        for url in urls:
            try:
                texts.append((await client.get(url)).text)
            except httpx.HTTPError:
                texts.append("")
    return texts
