"""CLIP → ONNX export: parity with PyTorch, fusions, fp16, the real architectures, and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")

from moderator.embed import load_model  # noqa: E402
from moderator.embed.manifest import read_manifest  # noqa: E402
from moderator.errors import ModelError  # noqa: E402
from moderator.export.clip import export_clip  # noqa: E402
from moderator.export.random_clip import clip_config, save_random_clip  # noqa: E402

pytestmark = pytest.mark.export

TEXTS = ["a photo of a cat", "two small red circle", "x", "a drawing of a large white house"]


def _quiet(_: str) -> None:
    pass


def _torch_images(checkpoint: Path, pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
    """HF CLIP on the processor's normalization of these (already cropped) pixels."""
    model = transformers.CLIPModel.from_pretrained(checkpoint).eval()
    proc = json.loads((checkpoint / "preprocessor_config.json").read_text())
    x = torch.from_numpy(pixels).float() / 255.0
    x = (x - torch.tensor(proc["image_mean"])) / torch.tensor(proc["image_std"])
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=x.permute(0, 3, 1, 2)).pooler_output
        out = model.visual_projection(pooled)
    return (out / out.norm(dim=-1, keepdim=True)).numpy()


def _torch_texts(checkpoint: Path, texts: list[str]) -> NDArray[np.float32]:
    """HF CLIP with HF's tokenizer, padded HF's way (pad id, attention mask)."""
    model = transformers.CLIPModel.from_pretrained(checkpoint).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = model.text_model(**batch).pooler_output
        out = model.text_projection(pooled)
    return (out / out.norm(dim=-1, keepdim=True)).numpy()


def _min_cosine(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


def _pixels(n: int, size: int, seed: int = 1) -> NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_clip(tmp_path_factory.mktemp("tiny"), clip_config("tiny"))


@pytest.fixture(scope="module")
def tiny_legacy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # OpenAI's configs say eos_token_id=2 and pad with eos: HF then pools at argmax(ids).
    config = clip_config("tiny", legacy_eos=True)
    return save_random_clip(tmp_path_factory.mktemp("legacy"), config, pad_is_eos=True)


@pytest.mark.parametrize("variant", ["first_eos", "argmax"])
def test_fp32_export_matches_pytorch(
    variant: str, tiny: Path, tiny_legacy: Path, tmp_path: Path
) -> None:
    checkpoint = tiny if variant == "first_eos" else tiny_legacy
    out = export_clip(str(checkpoint), tmp_path / "onnx", progress=_quiet)
    manifest = read_manifest(out)
    assert manifest.eos_pooling == variant
    assert manifest.precision == "fp32"
    assert manifest.optimized.applied
    # Every layer of both towers fused: 2 layers each in the tiny config.
    assert manifest.optimized.fused["vision"]["Attention"] == 2
    assert manifest.optimized.fused["text"]["Attention"] == 2
    assert manifest.optimized.fused["text"]["SkipLayerNormalization"] >= 2

    runtime = load_model(out, providers=("cpu",))
    pixels = _pixels(4, 32)
    assert _min_cosine(runtime.encode_pixels(pixels), _torch_images(checkpoint, pixels)) >= 0.9999
    assert _min_cosine(runtime.encode_texts(TEXTS), _torch_texts(checkpoint, TEXTS)) >= 0.9999
    model = transformers.CLIPModel.from_pretrained(checkpoint)
    assert runtime.logit_scale == pytest.approx(model.logit_scale.exp().item())


def test_text_embedding_does_not_depend_on_batch_padding(tiny_legacy: Path, tmp_path: Path) -> None:
    runtime = load_model(
        export_clip(str(tiny_legacy), tmp_path, progress=_quiet), providers=("cpu",)
    )
    alone = runtime.encode_texts(["a cat"])
    padded = runtime.encode_texts(["a cat", "a drawing of two small red circle on a white house"])
    np.testing.assert_allclose(alone[0], padded[0], atol=1e-5)


def test_fp16_export_keeps_float32_io_and_matches_pytorch(tiny: Path, tmp_path: Path) -> None:
    out = export_clip(str(tiny), tmp_path, precision="fp16", progress=_quiet)
    manifest = read_manifest(out)
    assert manifest.precision == "fp16"
    graph = onnx.load(str(out / "vision.onnx")).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [i for i in graph.initializer if len(i.dims) == 2]
    assert weights
    assert all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    # The CPU provider runs these graphs (ORT inserts fp32 casts around ops lacking fp16
    # kernels), so this measures fp16 weights and most fp16 ops, not every one.
    runtime = load_model(out, providers=("cpu",))
    pixels = _pixels(4, 32)
    images = runtime.encode_pixels(pixels)
    assert images.dtype == np.float32
    assert _min_cosine(images, _torch_images(tiny, pixels)) >= 0.999
    assert _min_cosine(runtime.encode_texts(TEXTS), _torch_texts(tiny, TEXTS)) >= 0.999


@pytest.fixture(scope="module")
def tiny_biased(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with non-zero fc1 biases (HF initialises every bias at zero)."""
    out = tmp_path_factory.mktemp("biased")
    for item in tiny.iterdir():
        shutil.copy(item, out)
    model = transformers.CLIPModel.from_pretrained(tiny)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            bias = layer.mlp.fc1.bias
            bias.copy_(torch.randn(bias.shape, generator=generator) * 0.5)
    model.save_pretrained(out)
    return out


def _fc1_inputs(path: Path) -> list[str]:
    """Op type feeding each QuickGelu's MatMul (Concat when the bias is folded in)."""
    graph = onnx.load(str(path)).graph
    made_by = {out: node for node in graph.node for out in node.output}
    found = []
    for node in graph.node:
        if node.op_type != "QuickGelu":
            continue
        producer = made_by[node.input[0]]
        if producer.op_type == "Add":  # the bias add HF's layout keeps
            producer = next(made_by[i] for i in producer.input if i in made_by)
        assert producer.op_type == "MatMul"
        found.append(made_by[producer.input[0]].op_type)
    return found


@pytest.mark.parametrize(
    ("precision", "fold", "folded"),
    [("fp16", None, True), ("fp16", False, False), ("fp32", None, False), ("fp32", True, True)],
)
def test_fc1_bias_folds_into_the_matmul_on_fp16_by_default(
    tiny_biased: Path, tmp_path: Path, precision: Any, fold: bool | None, folded: bool
) -> None:
    out = export_clip(
        str(tiny_biased), tmp_path, precision=precision, fold_mlp_bias=fold, progress=_quiet
    )
    manifest = read_manifest(out)
    assert manifest.optimized.mlp_bias_folded == (2 if folded else 0)
    # Left out of unfolded manifests, which older services (extra="forbid") still read.
    raw = json.loads((out / "manifest.json").read_text())["optimized"]
    assert ("mlp_bias_folded" in raw) == folded
    inputs = _fc1_inputs(out / "vision.onnx")
    assert len(inputs) == 2
    assert all((op == "Concat") == folded for op in inputs), inputs
    runtime = load_model(out, providers=("cpu",))
    pixels = _pixels(4, 32)
    bar = 0.9999 if precision == "fp32" else 0.999
    assert _min_cosine(runtime.encode_pixels(pixels), _torch_images(tiny_biased, pixels)) >= bar


def test_fc1_bias_fold_is_refused_for_int8_before_anything_is_written(
    tiny: Path, tmp_path: Path
) -> None:
    out = export_clip(str(tiny), tmp_path, progress=_quiet)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ModelError, match="int8"):
        export_clip(str(tiny), out, precision="int8", fold_mlp_bias=True, progress=_quiet)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # still loadable


def test_folding_leaves_the_checkpoint_modules_alone(tiny_biased: Path) -> None:
    from moderator.export.checkpoint import load_checkpoint, read_preprocess
    from moderator.export.towers import VisionGraph

    ckpt = load_checkpoint(str(tiny_biased), _quiet)
    graph = VisionGraph(ckpt.model, read_preprocess(ckpt), fold_mlp_bias=True)
    original = ckpt.model.vision_model.encoder.layers[0]
    assert type(original.mlp).__name__ == "CLIPMLP"
    assert type(graph.encoder.layers[0].mlp).__name__ == "_BiasFoldedMLP"
    # The copy shares the weights instead of duplicating them.
    assert graph.encoder.layers[0].self_attn.q_proj.weight is original.self_attn.q_proj.weight


def test_int8_export_quantizes_the_image_tower_only(tiny: Path, tmp_path: Path) -> None:
    out = export_clip(str(tiny), tmp_path, precision="int8", progress=_quiet)
    manifest = read_manifest(out)
    assert manifest.precision == "int8"
    vision_ops = {n.op_type for n in onnx.load(str(out / "vision.onnx")).graph.node}
    text_ops = {n.op_type for n in onnx.load(str(out / "text.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in vision_ops or "QAttention" in vision_ops
    assert not text_ops & {"DynamicQuantizeLinear", "MatMulInteger", "QAttention"}
    assert manifest.parity["vision"] >= 0.99
    assert manifest.parity["text"] >= 0.9999
    runtime = load_model(out, providers=("cpu",))
    pixels = _pixels(4, 32)
    assert _min_cosine(runtime.encode_pixels(pixels), _torch_images(tiny, pixels)) >= 0.99
    assert _min_cosine(runtime.encode_texts(TEXTS), _torch_texts(tiny, TEXTS)) >= 0.9999


def test_unoptimized_export_has_only_standard_ops(tiny: Path, tmp_path: Path) -> None:
    out = export_clip(str(tiny), tmp_path, optimize=False, opset=18, progress=_quiet)
    manifest = read_manifest(out)
    assert not manifest.optimized.applied
    assert manifest.opset == 18
    for name in ("vision.onnx", "text.onnx"):
        model = onnx.load(str(out / name))
        assert model.ir_version <= 10
        assert {n.domain for n in model.graph.node} <= {""}, name
    assert manifest.parity["vision"] >= 0.9999
    assert manifest.parity["text"] >= 0.9999


def test_patch_embedding_is_one_matmul_on_nhwc_pixels(tiny: Path, tmp_path: Path) -> None:
    """No Conv and no NCHW transpose of the input: the patch embedding is reshape + MatMul."""
    out = export_clip(str(tiny), tmp_path, optimize=False, progress=_quiet)
    graph = onnx.load(str(out / "vision.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "Conv" not in ops
    first = next(n for n in graph.node if "pixels" in n.input)
    assert first.op_type == "Cast"  # uint8 pixels go straight to the patch reshape
    assert read_manifest(out).parity["vision"] >= 0.9999


def test_manifest_describes_the_export(tiny: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    out = export_clip(str(tiny), tmp_path, progress=lines.append, name="tiny-clip")
    manifest = read_manifest(out)
    assert manifest.model_id == "tiny-clip"
    assert manifest.source.id == str(tiny.resolve())
    assert manifest.source.revision is None
    assert (manifest.image_size, manifest.resize_shortest_edge, manifest.embed_dim) == (32, 32, 32)
    assert manifest.context_length == 16
    assert (manifest.bos_token_id, manifest.eos_token_id, manifest.pad_token_id) == (1022, 1023, 0)
    assert manifest.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert set(manifest.files) == {"vision.onnx", "text.onnx", "tokenizer.json"}
    assert {"torch", "transformers", "onnx", "onnxruntime", "moderator"} <= set(manifest.versions)
    assert any("fused Attention=2" in line for line in lines)
    assert any("parity" in line for line in lines)


def test_clip_bpe_tokenizer_round_trips_through_tokenizer_json(tmp_path: Path) -> None:
    """transformers' own CLIPTokenizer class (byte-level BPE), as OpenAI's checkpoints ship."""
    config = clip_config("tiny", legacy_eos=True)
    checkpoint = save_random_clip(tmp_path / "ckpt", config, tokenizer="clip-bpe")
    out = export_clip(str(checkpoint), tmp_path / "onnx", progress=_quiet)
    runtime = load_model(out, providers=("cpu",))
    hf = transformers.AutoTokenizer.from_pretrained(checkpoint)
    assert type(hf).__name__ == "CLIPTokenizer"
    texts = ["A  Photo of a CAT!!", "Café — 2 dogs", "it's a red\tcircle", "", "ümlaut ß 猫"]
    for text in texts:
        assert runtime.count_tokens(text) == len(hf(text)["input_ids"]), text
    assert _min_cosine(runtime.encode_texts(texts), _torch_texts(checkpoint, texts)) >= 0.9999


# --- the real architectures -----------------------------------------------------------------


def test_vit_b32_end_to_end(tmp_path: Path) -> None:
    """Full ViT-B/32 geometry and depth (random weights), optimized, loaded by the runtime.

    ~150 M parameters: the slowest test here (about a minute on two cores), kept because it
    is the only one that shows every one of the 12 layers per tower fusing at real size.
    """
    config = clip_config("ViT-B/32", legacy_eos=True)
    checkpoint = save_random_clip(tmp_path / "ckpt", config, pad_is_eos=True)
    out = export_clip(str(checkpoint), tmp_path / "onnx", progress=_quiet)
    manifest = read_manifest(out)
    fused = manifest.optimized.fused
    assert fused["vision"]["Attention"] == 12
    assert fused["text"]["Attention"] == 12
    assert fused["vision"]["QuickGelu"] == 12
    assert fused["text"]["QuickGelu"] == 12
    assert fused["vision"]["SkipLayerNormalization"] + fused["vision"]["LayerNormalization"] >= 25
    assert manifest.parity["vision"] >= 0.9999
    assert manifest.parity["text"] >= 0.9999
    assert (manifest.image_size, manifest.embed_dim, manifest.context_length) == (224, 512, 77)

    runtime = load_model(out, providers=("cpu",))
    embeddings = runtime.encode_pixels(_pixels(2, 224))
    assert embeddings.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert runtime.count_tokens("a photo of a cat") == 7  # 5 words + bos + eos
    assert runtime.encode_texts(["a photo of a cat"]).shape == (1, 512)


@pytest.mark.parametrize(
    ("arch", "dim", "fused_layers"),
    [("ViT-B/16", 512, 2), ("ViT-L/14", 768, 2)],
)
def test_larger_architectures_export(
    arch: str, dim: int, fused_layers: int, tmp_path: Path
) -> None:
    """Real widths, heads, patch sizes and token counts (197 and 257 tokens), 2 layers deep.

    Depth repeats one layer pattern, so 2 layers show what 12 or 24 would (ViT-L/14 in full
    is ~430 M parameters and minutes to export here); the full B/32 test covers depth.
    """
    checkpoint = save_random_clip(tmp_path / "ckpt", clip_config(arch, layers=2))
    out = export_clip(str(checkpoint), tmp_path / "onnx", progress=_quiet)
    manifest = read_manifest(out)
    assert manifest.embed_dim == dim
    assert manifest.image_size == 224
    assert manifest.optimized.fused["vision"]["Attention"] == fused_layers
    assert manifest.optimized.fused["text"]["Attention"] == fused_layers
    pixels = _pixels(2, 224)
    runtime = load_model(out, providers=("cpu",))
    assert _min_cosine(runtime.encode_pixels(pixels), _torch_images(checkpoint, pixels)) >= 0.9999


# --- errors ---------------------------------------------------------------------------------


def test_missing_local_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        export_clip(str(tmp_path / "nope"), tmp_path / "out", progress=_quiet)


def test_file_instead_of_directory(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        export_clip(str(tmp_path / "model.bin"), tmp_path / "out", progress=_quiet)


def test_directory_that_is_no_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a transformers checkpoint"):
        export_clip(str(tmp_path), tmp_path / "out", progress=_quiet)


def test_checkpoint_that_is_not_clip(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="'bert' model, not CLIP"):
        export_clip(str(tmp_path), tmp_path / "out", progress=_quiet)


def test_hub_id_without_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no request leaves the process
    with pytest.raises(ModelError, match=r"could not download .*no network\? use a local dir"):
        export_clip("moderator-tests/no-such-clip", tmp_path, progress=_quiet)


def test_eos_that_matches_neither_convention(tmp_path: Path) -> None:
    config = clip_config("tiny")
    config.text_config.eos_token_id = 5
    checkpoint = save_random_clip(tmp_path / "ckpt", config)
    with pytest.raises(ModelError, match="eos_token_id 5 is not the tokenizer's eos 1023"):
        export_clip(str(checkpoint), tmp_path / "out", progress=_quiet)


def test_crop_that_does_not_fit_the_vision_tower(tiny: Path, tmp_path: Path) -> None:
    checkpoint = Path(shutil.copytree(tiny, tmp_path / "ckpt"))
    path = checkpoint / "preprocessor_config.json"
    processor: dict[str, Any] = json.loads(path.read_text())
    processor["crop_size"] = {"height": 48, "width": 48}
    path.write_text(json.dumps(processor))
    with pytest.raises(ModelError, match="does not match the vision tower"):
        export_clip(str(checkpoint), tmp_path / "out", progress=_quiet)


def test_tokenizer_without_bos_eos_is_refused(tiny: Path, tmp_path: Path) -> None:
    checkpoint = Path(shutil.copytree(tiny, tmp_path / "ckpt"))
    path = checkpoint / "tokenizer.json"
    data = json.loads(path.read_text())
    data["post_processor"] = None  # the HF tokenizer then adds no bos/eos
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="does not reproduce the checkpoint's tokenizer"):
        export_clip(str(checkpoint), tmp_path / "out", progress=_quiet)
