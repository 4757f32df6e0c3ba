"""Pieces of `bench e2e` that need no broker: the events it sends and its percentiles."""

from __future__ import annotations

import base64
import json

import pytest

from moderator.bench.e2e import _Pool, percentile
from moderator.bench.images import bench_images
from moderator.events import parse_event


def test_bench_events_are_events_the_service_accepts() -> None:
    images = bench_images(2, seed=3, width=64, height=48, png_fraction=0.5)
    pool = _Pool(
        [base64.b64encode(i.data) for i in images],
        [b"http://127.0.0.1:1/0.jpg", b"http://127.0.0.1:1/1.png"],
        url_fraction=0.25,
    )
    kinds = []
    for index in range(100):
        value = pool.event(index, f"evt-{index}")
        json.loads(value)  # well-formed JSON
        event = parse_event(value, [], max_bytes=20 * 1024 * 1024)
        assert event.id == f"evt-{index}"
        assert event.surface == "upload"
        if event.image_bytes is not None:
            assert event.image_bytes == images[index % 2].data
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
