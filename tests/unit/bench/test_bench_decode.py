"""`moderator bench decode`, run tiny, and how it reports a machine without the GPU path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moderator.bench.cli import app
from moderator.bench.images import bench_images
from moderator.pipeline.decode.cpu import PreprocessSpec


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


def test_gpu_processes_fail_fast_with_the_reason_where_the_gpu_path_cannot_run() -> None:
    from moderator.bench.decode import _serve_gpu_problem, _serve_gpu_processes_rate

    problem = _serve_gpu_problem()
    if problem is None:
        pytest.skip("this machine runs serve's GPU path")
    jpegs = [b.data for b in bench_images(2, png_fraction=0.0, seed=1)]
    spec = PreprocessSpec.for_model(32, 32)
    # Every worker aborts the start barrier: no process waits out its 120 s timeout.
    with pytest.raises(RuntimeError, match="GPU decode \\(serve\\) skipped"):
        _serve_gpu_processes_rate(jpegs, spec, 0.1, 2, 2)


def test_bench_decode_on_a_machine_without_cuda_notes_it_and_keeps_the_cpu_rows(
    tmp_path: Path,
) -> None:
    from moderator.bench.decode import _serve_gpu_problem

    if _serve_gpu_problem() is None:
        pytest.skip("this machine runs serve's GPU path")
    out = tmp_path / "decode.json"
    args = ["decode", "--images", "1", "--seconds", "0.05", "--size", "32", "--workers", "1"]
    result = CliRunner().invoke(app, [*args, "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 6
    assert any("cannot run here" in n for n in data["notes"])
