"""Manifest parsing and file verification: a modified or missing file is named, not loaded."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from moderator.embed.manifest import (
    Manifest,
    Optimization,
    Source,
    file_sha256,
    model_sha256,
    read_manifest,
    verify_files,
)
from moderator.errors import ModelError


def _write_model(directory: Path) -> Manifest:
    (directory / "vision.onnx").write_bytes(b"vision graph")
    (directory / "text.onnx").write_bytes(b"text graph")
    (directory / "tokenizer.json").write_text("{}")
    files = {p.name: file_sha256(p) for p in directory.iterdir()}
    manifest = Manifest(
        format_version=1,
        source=Source(id="local", revision=None),
        model_id="test",
        embed_dim=4,
        image_size=8,
        resize_shortest_edge=8,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        context_length=8,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        eos_pooling="first_eos",
        logit_scale=100.0,
        precision="fp32",
        opset=17,
        optimized=Optimization(applied=False),
        files=files,
        sha256=model_sha256(files),
        exported_at=datetime.now(UTC),
    )
    manifest.write(directory)
    return manifest


def test_round_trip(tmp_path: Path) -> None:
    written = _write_model(tmp_path)
    assert read_manifest(tmp_path) == written
    verify_files(tmp_path, written)


def test_model_hash_covers_names_and_contents() -> None:
    base = model_sha256({"a": "1", "b": "2"})
    assert base == model_sha256({"b": "2", "a": "1"})  # order of the mapping is irrelevant
    assert base != model_sha256({"a": "1", "b": "3"})
    assert base != model_sha256({"a": "1", "c": "2"})


def test_modified_file_is_named(tmp_path: Path) -> None:
    manifest = _write_model(tmp_path)
    (tmp_path / "text.onnx").write_bytes(b"text graph, patched")
    with pytest.raises(ModelError, match=r"model file text\.onnx .* does not match"):
        verify_files(tmp_path, manifest)


def test_missing_file_is_named(tmp_path: Path) -> None:
    manifest = _write_model(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"tokenizer\.json is missing"):
        verify_files(tmp_path, manifest)


def test_edited_manifest_hash_is_caught(tmp_path: Path) -> None:
    manifest = _write_model(tmp_path)
    forged = manifest.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(ModelError, match="sha256 does not match its file list"):
        verify_files(tmp_path, forged)


def test_unreadable_manifests(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no manifest\.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ModelError, match=r"invalid manifest: .*model_id"):
        read_manifest(tmp_path)


def test_newer_format_is_refused_with_advice(tmp_path: Path) -> None:
    _write_model(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["format_version"] = 2
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="newer than this moderator reads"):
        read_manifest(tmp_path)
