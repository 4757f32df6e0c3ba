"""Where `bench model` and `bench e2e` find the demo's PyTorch peer checkpoint: a trained one
when it is here, else the rebuild from the shipped ONNX files, built only when a peer runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from moderator.bench import model as bench_model
from moderator.bench.model import DEMO_HF, resolve_bench_model
from moderator.embed.paths import DEMO_DIR


@pytest.fixture
def fresh_clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No `.run/demo-hf` anywhere the lookup goes, and an empty user cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench_model, "_REPO_ROOT", tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def _fake_rebuild(monkeypatch: pytest.MonkeyPatch, where: Path) -> list[Path]:
    pytest.importorskip("torch")
    from moderator.export import demo_checkpoint

    calls: list[Path] = []

    def rebuild(onnx_dir: Path, **_: object) -> Path:
        calls.append(onnx_dir)
        return where

    monkeypatch.setattr(demo_checkpoint, "demo_checkpoint", rebuild)
    return calls


def test_a_fresh_clone_gets_the_rebuilt_demo_checkpoint(
    fresh_clone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_rebuild(monkeypatch, fresh_clone / "rebuilt")
    found = resolve_bench_model("demo", progress=lambda _: None)
    assert found.hf_dir == fresh_clone / "rebuilt"
    assert calls == [DEMO_DIR]
    assert found.note is None


def test_no_rebuild_when_no_peer_runs(fresh_clone: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_rebuild(monkeypatch, fresh_clone / "rebuilt")
    found = resolve_bench_model("demo", progress=lambda _: None, peer=False)
    assert found.hf_dir is None
    assert calls == []


def test_a_trained_checkpoint_is_preferred(
    fresh_clone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_rebuild(monkeypatch, fresh_clone / "rebuilt")
    trained = fresh_clone / DEMO_HF
    trained.mkdir(parents=True)
    (trained / "config.json").write_text("{}")
    assert resolve_bench_model("demo", progress=lambda _: None).hf_dir == trained
    assert calls == []


def test_without_the_export_extra_the_peer_is_skipped_with_a_reason(
    fresh_clone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "moderator.export.demo_checkpoint", None)
    found = resolve_bench_model("demo", progress=lambda _: None, precision="fp16")
    assert found.hf_dir is None
    assert found.note is not None
    assert found.note.startswith("the shipped demo model is fp32")
    assert "without moderator[export]" in found.note


def test_bench_model_runs_the_rebuilt_peer(fresh_clone: Path) -> None:
    """The whole path on a fresh clone: rebuilt into the user cache, and a ratio printed."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from moderator.bench.model import run_model_bench

    threads = torch.get_num_threads()
    try:
        report = run_model_bench(
            "demo",
            batches=[2],
            precision="fp32",
            providers=["cpu"],
            peers=["eager"],
            seconds=0.05,
            warmup=1,
            threads=1,
            progress=lambda _: None,
        )
    finally:
        torch.set_num_threads(threads)  # the bench sets torch's global thread count
    checkpoint = Path(report.config["peer_checkpoint"])
    assert checkpoint.parent == fresh_clone / "cache" / "moderator" / "demo-hf"
    ratio = report.results["ratio"]
    assert ratio is not None
    assert ratio > 0
    assert report.rows[0]["eager_min_cosine_vs_ours"] >= 0.999
