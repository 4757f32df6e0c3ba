"""The naive peer of `bench e2e` on the demo checkpoint rebuilt from ONNX: it loads without a
trained `.run/demo-hf` and embeds images as the service does, each through its own decoding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")

from moderator.bench.naive import NaiveConfig, NaivePeer
from moderator.demo import shapes
from moderator.embed import load_model
from moderator.export.demo_checkpoint import demo_checkpoint

pytestmark = pytest.mark.export
_POLICY = Path(__file__).resolve().parents[3] / "policies" / "demo.yaml"


def test_the_naive_peer_runs_on_the_rebuilt_demo_checkpoint(tmp_path: Path) -> None:
    checkpoint = demo_checkpoint(cache=tmp_path, progress=lambda _: None)
    config = NaiveConfig("127.0.0.1:1", "in", "out", "group", checkpoint, _POLICY, device="cpu")
    peer = NaivePeer(config)  # loads model, processor and policy; connects to nothing
    runtime = load_model("demo", providers=["cpu"])
    images = [sample.image for sample in shapes.generate(6, seed=5)]
    pngs = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    theirs, ours = peer.images(images), runtime.encode_images(pngs)
    assert float(np.sum(theirs * ours, axis=1).min()) >= 0.999
    assert peer.policy.name == "demo-shapes"
