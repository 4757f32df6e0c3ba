"""A tiny exported CLIP for runtime tests, built once per session (needs the export extra)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from moderator.export.clip import export_clip
    from moderator.export.random_clip import clip_config, save_random_clip

    checkpoint = save_random_clip(tmp_path_factory.mktemp("checkpoint"), clip_config("tiny"))
    return export_clip(str(checkpoint), tmp_path_factory.mktemp("model"), progress=lambda _: None)


@pytest.fixture
def cuda_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """`load_model` believes the CUDA provider was chosen (no GPU here): the tests then stand
    in for the sessions themselves and record what they are asked for."""
    from moderator.embed import runtime as runtime_module
    from moderator.embed.providers import Provider

    monkeypatch.setattr(
        runtime_module,
        "select_providers",
        lambda *a, **k: [Provider("cuda", "CUDAExecutionProvider")],
    )
