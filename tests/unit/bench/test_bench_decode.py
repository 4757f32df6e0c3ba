"""`moderator bench decode`, run tiny, and the GPU path's geometry checked on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from moderator.bench.cli import app
from moderator.bench.images import bench_images
from moderator.decode import PreprocessSpec, decode_image


def test_bench_decode_runs_tiny_and_reports_json(tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    result = CliRunner().invoke(
        app,
        [
            "decode",
            *("--images", "1", "--seconds", "0.05", "--size", "32", "--workers", "1"),
            *("--no-gpu", "--json", "--out", str(out)),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["bench"] == "decode"
    assert {(r["path"], r["format"]) for r in data["rows"]} == {
        (path, fmt)
        for path in ("cpu 1 core", "cpu all cores", "cpu pool submit")
        for fmt in ("JPEG", "PNG")
    }
    assert all(r["img_s"] > 0 for r in data["rows"])
    assert data["ratio"] is None
    assert any("GPU decode skipped" in n for n in data["notes"])


def test_gpu_preprocess_matches_decode_image_geometry_on_cpu() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("torchcodec")
    from moderator.bench.decode import gpu_preprocess

    spec = PreprocessSpec.for_model(32, 40)
    images = [i.data for i in bench_images(2, seed=4, width=160, height=120, png_fraction=0)]
    ours = np.stack([decode_image(b, spec) for b in images]).astype(np.float64)
    theirs = gpu_preprocess(images, spec, device="cpu").numpy()
    assert theirs.shape == (2, 32, 32, 3)
    assert theirs.dtype == np.uint8
    # Same crop window and resize: only resampling details differ (a level or two).
    assert np.abs(theirs - ours).mean() < 2.0
