"""`moderator bench model`, run tiny: the JSON has its fields and the figures are positive.

A smoke test, never a timing assertion: the bench prints figures, tests only check it runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from moderator.bench.cli import app


def test_bench_model_runs_tiny_and_reports_json(tmp_path: Path) -> None:
    out = tmp_path / "model.json"
    result = CliRunner().invoke(
        app,
        [
            "model",
            *("--model", "demo", "--batch", "1,2", "--seconds", "0.05", "--warmup", "1"),
            *("--peers", "none", "--providers", "cpu", "--json", "--out", str(out)),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data == json.loads(out.read_text())
    assert data["bench"] == "model"
    assert data["ratio"] is None  # no peer asked for
    assert [r["batch"] for r in data["rows"]] == [1, 2]
    for row in data["rows"]:
        assert row["ours_img_s"] > 0
        assert row["ours_ms"] > 0
    assert data["config"]["provider"] == "cpu"
    assert data["config"]["timing_includes_host_to_device"] is True
    assert data["config"]["attention_kernel"] is None  # a CPU run has no CUDA kernel to pick
    assert data["environment"]["cpu_count"] >= 1


def test_device_pixels_on_a_cpu_provider_is_a_clear_config_error() -> None:
    result = CliRunner().invoke(
        app,
        [
            "model",
            *("--model", "demo", "--batch", "1", "--seconds", "0.01", "--peers", "none"),
            *("--providers", "cpu", "--pixels", "device"),
        ],
    )
    assert result.exit_code == 2
    assert "--pixels device needs a GPU provider" in result.output


def test_unknown_pixels_place_is_refused() -> None:
    result = CliRunner().invoke(
        app, ["model", "--model", "demo", "--providers", "cpu", "--pixels", "pinned"]
    )
    assert result.exit_code == 2
    assert "--pixels must be one of ['host', 'device']" in result.output


def test_unknown_attention_kernel_is_refused() -> None:
    result = CliRunner().invoke(
        app, ["model", "--model", "demo", "--providers", "cpu", "--attention", "fastest"]
    )
    assert result.exit_code == 2
    assert "--attention must be one of ['efficient', 'flash', 'cudnn', 'auto']" in result.output
