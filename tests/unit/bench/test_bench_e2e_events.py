"""Pieces of `bench e2e` that need no broker: the events it sends, its percentiles, and the
stage breakdown of slow events."""

from __future__ import annotations

import json

import pytest

from moderator.bench.e2e import percentile
from moderator.bench.e2e.load import Pool
from moderator.bench.e2e.measures import (
    batch_stages,
    latency_by_second,
    loop_lag,
    slow_event_stages,
)
from moderator.bench.images import bench_images
from moderator.pipeline.events import parse_event


@pytest.mark.parametrize("encoding", ["json", "binary"])
def test_bench_events_are_events_the_service_accepts(encoding: str) -> None:
    images = bench_images(2, seed=3, width=64, height=48, png_fraction=0.5)
    pool = Pool(
        [i.data for i in images],
        [f"image/{i.format.lower()}" for i in images],
        [b"http://127.0.0.1:1/0.jpg", b"http://127.0.0.1:1/1.png"],
        url_fraction=0.25,
        encoding=encoding,
    )
    kinds = []
    for index in range(100):
        value, headers = pool.event(index, f"evt-{index}")
        if encoding == "json" or not headers:
            json.loads(value)  # well-formed JSON
        event = parse_event(value, headers, max_bytes=20 * 1024 * 1024)
        assert event.id == f"evt-{index}"
        assert event.surface == "upload"
        if event.image_bytes is not None:
            assert event.image_bytes == images[index % 2].data
            assert (value == images[index % 2].data) == (encoding == "binary")
            kinds.append("inline")
        else:
            assert (
                event.image_url
                == f"http://127.0.0.1:1/{index % 2}.{'jpg' if index % 2 == 0 else 'png'}"
            )
            kinds.append("url")
    assert kinds.count("url") == 25


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([float(v) for v in range(1, 101)], 50) == pytest.approx(50.5)
    assert percentile([float(v) for v in range(1, 101)], 99) == pytest.approx(99.01)


def test_slow_events_stages_show_where_the_tail_waits() -> None:
    # 20 events: 18 fast ones handled in 10 ms; 2 slow ones whose 1 s was spent queued for a
    # batch, and 1 fast-handled event that waited 500 ms before the service saw it.
    latency = {f"e{i}": 20.0 for i in range(17)} | {"late": 520.0, "s1": 1010.0, "s2": 1030.0}
    timings = {f"e{i}": {"queue": 2.0, "total": 10.0} for i in range(17)}
    timings |= {"late": {"queue": 2.0, "total": 10.0}}
    timings |= {"s1": {"queue": 990.0, "total": 1000.0}, "s2": {"queue": 1010.0, "total": 1020.0}}
    out = slow_event_stages(latency, timings | {"unanswered": {"total": 1.0}})
    assert out["stage_p50_ms"] == {"outside": 10.0, "queue": 2.0, "total": 10.0}
    slow = out["slowest_tenth_stage_p50_ms"]  # the tenth at or over the 90th percentile
    assert slow == {"outside": 10.0, "queue": 1000.0, "total": 1010.0}
    assert slow_event_stages(latency, {}) == {}  # the peer's verdicts carry no timings


def test_batch_stages_sum_the_replicas_histograms() -> None:
    from prometheus_client import generate_latest

    from moderator.service.metrics import Metrics

    texts = []
    for decode_seconds in ([0.004] * 99 + [0.8], [0.004] * 100):  # two replicas
        metrics = Metrics()
        for seconds in decode_seconds:
            metrics.stage_seconds.labels("gpu_decode").observe(seconds)
        metrics.stage_seconds.labels("score").observe(0.001)  # per event: not a batch stage
        texts.append(generate_latest(metrics.registry).decode())
    stages = batch_stages([*texts, ""])  # a replica that did not answer
    assert set(stages["batch_stage_ms"]) == {"gpu_decode"}
    decode = stages["batch_stage_ms"]["gpu_decode"]
    assert decode["batches"] == 200
    assert decode["mean_ms"] == round(1000 * (199 * 0.004 + 0.8) / 200, 2)
    assert decode["p99_le_ms"] == 5.0  # 199 of 200 in the 5 ms bucket
    assert decode["max_le_ms"] == 1000.0  # the 0.8 s batch
    assert batch_stages([]) == {}
    slow = Metrics()
    slow.stage_seconds.labels("gpu_wait").observe(45.0)  # past the last bucket bound
    waited = batch_stages([generate_latest(slow.registry).decode()])["batch_stage_ms"]
    assert waited == {
        "gpu_wait": {"batches": 1, "mean_ms": 45000.0, "p99_le_ms": None, "max_le_ms": None}
    }


def test_loop_lag_sums_the_replicas_samples() -> None:
    from prometheus_client import generate_latest

    from moderator.service.metrics import Metrics

    texts = []
    for lags in ([0.0002] * 150, [0.0002] * 49 + [0.3]):  # one replica stalled once
        metrics = Metrics()
        for seconds in lags:
            metrics.loop_lag.observe(seconds)
        metrics.stage_seconds.labels("gpu_decode").observe(0.004)  # another histogram
        texts.append(generate_latest(metrics.registry).decode())
    lag = loop_lag(texts)["loop_lag_ms"]
    assert lag["samples"] == 200
    assert lag["mean_ms"] == round(1000 * (199 * 0.0002 + 0.3) / 200, 2)
    assert lag["p99_le_ms"] == 1.0  # 199 of 200 in the first bucket
    assert lag["max_le_ms"] == 500.0
    assert loop_lag(["", "no metrics here"]) == {}


def test_latency_by_second_shows_a_stall_as_its_own_second() -> None:
    sent = {f"e{i}": 10_000 + 100 * i for i in range(30)}  # ten a second for three seconds
    answered = {k: ts + 20 for k, ts in sent.items()}
    for i in range(10, 15):  # half of the second second waited behind a stall
        answered[f"e{i}"] = sent[f"e{i}"] + 900
    del answered["e29"]  # unanswered: counted nowhere
    rows = latency_by_second(sent, answered)["latency_by_second"]
    assert [row["second"] for row in rows] == [0, 1, 2]
    assert [row["answered"] for row in rows] == [10, 10, 9]
    assert [row["max_ms"] for row in rows] == [20.0, 900.0, 20.0]
    assert rows[1]["p50_ms"] == 460.0  # five at 20 ms, five at 900 ms
    assert latency_by_second({}, {}) == {}
