"""The demo's PyTorch checkpoint rebuilt from its shipped ONNX files: it computes what the
ONNX graphs compute, the naive peer can load it, and a rebuild is byte-for-byte repeatable."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")

from moderator.demo import shapes  # noqa: E402
from moderator.embed import load_model  # noqa: E402
from moderator.embed.manifest import read_manifest  # noqa: E402
from moderator.embed.paths import DEMO_DIR  # noqa: E402
from moderator.errors import ModelError  # noqa: E402
from moderator.export import demo_checkpoint as dc  # noqa: E402
from moderator.export.parity import min_cosine, torch_image_embeddings  # noqa: E402

pytestmark = pytest.mark.export

PROMPTS = [
    "a photo of a red circle",
    "a blue star",
    "the triangle is yellow",
    "a white square on a plain background",
    "a red star sticker on a laptop",  # words outside the vocabulary become <unk>
]


def _quiet(_: str) -> None:
    pass


def _digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dc.demo_checkpoint(cache=tmp_path_factory.mktemp("cache"), progress=_quiet)


@pytest.fixture(scope="module")
def runtime() -> Any:
    return load_model("demo", providers=["cpu"])


@pytest.fixture(scope="module")
def hf_clip(rebuilt: Path) -> Any:
    return transformers.CLIPModel.from_pretrained(rebuilt).eval()


def test_image_embeddings_match_the_onnx_model_on_demo_shapes(hf_clip: Any, runtime: Any) -> None:
    samples = list(shapes.generate(8, seed=3, size=runtime.image_size))
    pixels = np.stack([np.asarray(s.image.convert("RGB"), np.uint8) for s in samples])
    manifest = runtime.manifest
    ours = torch_image_embeddings(hf_clip, pixels, manifest.mean, manifest.std)
    assert min_cosine(ours, runtime.encode_pixels(pixels)) >= 0.999


def test_text_embeddings_match_through_the_hf_tokenizer(
    rebuilt: Path, hf_clip: Any, runtime: Any
) -> None:
    """As the naive peer embeds prompts: its own tokenizer, HF padding and attention mask."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(rebuilt)
    batch = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = hf_clip.text_model(**batch).pooler_output
        embeds = hf_clip.text_projection(pooled)
    ours = torch.nn.functional.normalize(embeds, dim=-1).numpy()
    assert min_cosine(ours, runtime.encode_texts(PROMPTS)) >= 0.999


def test_the_naive_peer_processor_loads_and_tokenizes_like_the_runtime(
    rebuilt: Path, runtime: Any
) -> None:
    processor = transformers.CLIPProcessor.from_pretrained(rebuilt)
    for prompt in PROMPTS:
        ids = processor(text=[prompt])["input_ids"][0]
        assert list(ids) == runtime._tokenizer.ids(prompt)
    config = json.loads((rebuilt / "preprocessor_config.json").read_text())
    manifest = runtime.manifest
    assert config["image_mean"] == pytest.approx(list(manifest.mean))
    assert config["image_std"] == pytest.approx(list(manifest.std))
    assert config["crop_size"] == {"height": manifest.image_size, "width": manifest.image_size}


def test_config_and_logit_scale_come_from_the_export(hf_clip: Any) -> None:
    manifest = read_manifest(DEMO_DIR)
    vision, text = hf_clip.config.vision_config, hf_clip.config.text_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size) == (64, 8, 128)
    assert (vision.num_hidden_layers, vision.num_attention_heads) == (4, 4)
    assert (text.num_hidden_layers, text.max_position_embeddings, text.vocab_size) == (3, 32, 31)
    assert text.eos_token_id == manifest.eos_token_id  # first-eos pooling, as exported
    assert hf_clip.logit_scale.exp().item() == pytest.approx(manifest.logit_scale, rel=1e-6)


def test_a_rebuild_is_byte_identical(rebuilt: Path, tmp_path: Path) -> None:
    again = dc.rebuild_checkpoint(DEMO_DIR, tmp_path / "again")
    assert _digests(again) == _digests(rebuilt)
    # The training run's own model.safetensors (MODEL_CARD.md): every weight came back exactly.
    trained = "a2c607864dd75e05ba25108e6a40e20efb439d65c4618b3b1502bb6537063fd4"
    assert _digests(rebuilt)["model.safetensors"] == trained
    marker = json.loads((rebuilt / dc.MARKER).read_text())
    assert marker["source_sha256"] == read_manifest(DEMO_DIR).sha256


def test_the_cache_is_keyed_by_the_model_and_reused(
    rebuilt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rebuilt.name == f"{read_manifest(DEMO_DIR).sha256[:16]}-r{dc.REBUILD_REVISION}"
    assert [p.name for p in rebuilt.parent.iterdir()] == [rebuilt.name]  # no partial left

    def refuse(*_: object) -> Path:
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(dc, "rebuild_checkpoint", refuse)
    assert dc.demo_checkpoint(cache=rebuilt.parent, progress=_quiet) == rebuilt


def test_the_default_cache_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert dc.demo_checkpoint_cache() == tmp_path / "moderator" / "demo-hf"


def test_a_failed_rebuild_leaves_nothing_that_looks_like_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(onnx_dir: Path, out: Path) -> Path:
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise ModelError("boom")

    monkeypatch.setattr(dc, "rebuild_checkpoint", fail)
    with pytest.raises(ModelError, match="boom"):
        dc.demo_checkpoint(cache=tmp_path, progress=_quiet)
    assert list(tmp_path.iterdir()) == []


def test_non_fp32_exports_are_refused(tmp_path: Path) -> None:
    copy = shutil.copytree(DEMO_DIR, tmp_path / "demo")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["precision"] = "fp16"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="only unfolded fp32 exports"):
        dc.clip_from_onnx(copy)


def test_a_weight_no_module_takes_is_an_error(tmp_path: Path) -> None:
    copy = shutil.copytree(DEMO_DIR, tmp_path / "demo")
    model = onnx.load(str(copy / "text.onnx"))
    stray = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), name="stray")
    model.graph.initializer.append(stray)
    onnx.save(model, str(copy / "text.onnx"))
    with pytest.raises(ModelError, match=r"text\.onnx: weights no module takes: \['stray'\]"):
        dc.clip_from_onnx(copy)


def test_current_exporter_layout_round_trips(tmp_path: Path) -> None:
    """`export_clip` today folds the normalization into an NHWC patch MatMul and dedups equal
    weights: the rebuild gives back the checkpoint's weights (class token and position 0 only
    as their sum, the one way they enter the model)."""
    from moderator.export.clip import export_clip
    from moderator.export.random_clip import clip_config, save_random_clip

    checkpoint = save_random_clip(tmp_path / "hf", clip_config("tiny"))
    exported = export_clip(str(checkpoint), tmp_path / "onnx", progress=_quiet)
    original = transformers.CLIPModel.from_pretrained(checkpoint).eval().state_dict()
    rebuilt = dc.clip_from_onnx(exported).state_dict()
    assert set(rebuilt) == set(original)
    cls, pos = (
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.position_embedding.weight",
    )
    for key in sorted(set(original) - {cls, pos}):
        torch.testing.assert_close(rebuilt[key], original[key], atol=1e-5, rtol=1e-4, msg=key)
    torch.testing.assert_close(rebuilt[pos][1:], original[pos][1:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        rebuilt[cls] + rebuilt[pos][0], original[cls] + original[pos][0], atol=1e-5, rtol=1e-4
    )


@settings(max_examples=40, deadline=None)
@given(
    patch=st.integers(1, 4),
    dim=st.integers(1, 6),
    tokens=st.integers(1, 5),
    mean=st.tuples(*[st.floats(0.0, 1.0)] * 3),
    std=st.tuples(*[st.floats(0.05, 1.0)] * 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_unfolding_inverts_the_exporters_folding(
    patch: int,
    dim: int,
    tokens: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    seed: int,
) -> None:
    """Fold as `VisionGraph` does (x/255 − mean)/std into the patch weights and positions;
    unfolding gives the convolution and the positions back."""
    rng = np.random.default_rng(seed)
    conv = rng.normal(size=(dim, 3, patch, patch))
    positions = rng.normal(size=(tokens + 1, dim))
    cls = rng.normal(size=dim)
    scale = (np.asarray(std) * 255.0).reshape(1, 3, 1, 1)
    offset = (np.asarray(mean) * 255.0).reshape(1, 3, 1, 1)
    weight = conv / scale
    folded = positions.copy()
    folded[1:] += -(conv * offset / scale).sum(axis=(1, 2, 3))
    folded[0] += cls
    tower = dc._Tower()
    tower.put("patch.weight", weight.transpose(2, 3, 1, 0).reshape(-1, dim).T)
    tower.put("positions", folded)

    class Manifest:
        pass

    manifest: Any = Manifest()
    manifest.mean, manifest.std = mean, std
    dc._unfold_patches(tower, manifest)
    w = tower.weights
    np.testing.assert_allclose(w["embeddings.patch_embedding.weight"], conv, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        w["embeddings.position_embedding.weight"][1:], positions[1:], rtol=1e-3, atol=1e-3
    )
    np.testing.assert_allclose(
        w["embeddings.class_embedding"] + w["embeddings.position_embedding.weight"][0],
        cls + positions[0],
        rtol=1e-4,
        atol=1e-4,
    )
    assert not w["embeddings.position_embedding.weight"][0].any()
