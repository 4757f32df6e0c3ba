"""The ONNX Runtime encoder on a tiny exported CLIP: shapes, normalization, errors, providers."""

from __future__ import annotations

import io
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from moderator.embed import ClipRuntime, load_model
from moderator.embed import runtime as runtime_module
from moderator.embed.manifest import read_manifest
from moderator.embed.paths import DEMO_DIR, resolve_model_path
from moderator.embed.providers import Provider, cuda_device_count
from moderator.embed.runtime import _provider_options
from moderator.errors import DecodeError, ModelError, TextTooLong
from moderator.pipeline.decode.cpu import decode_image
from moderator.types import AttentionKernel

SIZE, DIM, CONTEXT = 32, 32, 16  # the tiny export's geometry


@pytest.fixture(scope="module")
def runtime(tiny_model: Path) -> ClipRuntime:
    return load_model(tiny_model, providers=("cpu",))


def _png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.skipif(cuda_device_count() > 0, reason="this machine has a GPU")
def test_default_providers_fall_back_to_cpu_quietly(
    tiny_model: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.DEBUG):
        runtime = load_model(tiny_model)  # asks for ("cuda", "cpu")
    assert runtime.provider == "cpu"
    assert runtime.info()["providers"] == ["CPUExecutionProvider"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # onnxruntime logs on stderr itself ("[E:onnxruntime:..."), outside Python logging.
    err = capfd.readouterr().err
    assert "[E:" not in err
    assert "Error" not in err


def test_encode_pixels_gives_unit_float32_rows(runtime: ClipRuntime) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    out = runtime.encode_pixels(pixels)
    assert out.shape == (5, DIM)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # batch composition does not change a row
    np.testing.assert_allclose(runtime.encode_pixels(pixels[2:3])[0], out[2], atol=1e-5)


def test_encode_pixels_refuses_wrong_arrays(runtime: ClipRuntime) -> None:
    with pytest.raises(ValueError, match="uint8"):
        runtime.encode_pixels(np.zeros((1, SIZE, SIZE, 3), np.float32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \(n, 32, 32, 3\)"):
        runtime.encode_pixels(np.zeros((1, 3, SIZE, SIZE), np.uint8))
    assert runtime.encode_pixels(np.zeros((0, SIZE, SIZE, 3), np.uint8)).shape == (0, DIM)


def test_encode_texts(runtime: ClipRuntime) -> None:
    out = runtime.encode_texts(["a photo of a cat", "a red circle", ""])
    assert out.shape == (3, DIM)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert runtime.encode_texts([]).shape == (0, DIM)


def test_too_long_text_raises_and_is_never_truncated(runtime: ClipRuntime) -> None:
    fits = " ".join(["cat"] * (CONTEXT - 2))
    assert runtime.count_tokens(fits) == CONTEXT
    assert runtime.encode_texts([fits]).shape == (1, DIM)
    with pytest.raises(TextTooLong) as info:
        runtime.encode_texts(["a cat", fits + " dog"])
    assert (info.value.tokens, info.value.limit) == (CONTEXT + 1, CONTEXT)


def test_encode_images_decodes_like_the_pipeline(runtime: ClipRuntime) -> None:
    images = [_png(48, 40, (200, 30, 30)), _png(32, 64, (10, 120, 250))]
    out = runtime.encode_images(images)
    pixels = np.stack([decode_image(b, runtime.preprocess) for b in images])
    np.testing.assert_allclose(out, runtime.encode_pixels(pixels), atol=1e-6)
    assert runtime.encode_images([]).shape == (0, DIM)
    with pytest.raises(DecodeError):
        runtime.encode_images([images[0], b"not an image"])


def test_encoder_properties_and_info(runtime: ClipRuntime, tiny_model: Path) -> None:
    assert runtime.image_size == SIZE
    assert runtime.context_length == CONTEXT
    assert runtime.logit_scale > 0
    assert len(runtime.sha256) == 64
    info = runtime.info()
    assert info["provider"] == "cpu"
    assert info["precision"] == "fp32"
    assert info["sha256"] == runtime.sha256
    assert info["model_id"] == runtime.model_id
    assert info["device_id"] is None
    assert info["path"] == str(tiny_model)


def test_io_binding_path_gives_the_plain_run_results(
    runtime: ClipRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU path (IO binding) exercised on CPU memory: same API calls, same numbers."""
    pixels = np.random.default_rng(2).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    texts = ["a photo of a cat", "a red circle"]
    plain_images, plain_texts = runtime.encode_pixels(pixels), runtime.encode_texts(texts)
    monkeypatch.setattr(runtime, "_bind_device", "cpu")
    np.testing.assert_allclose(runtime.encode_pixels(pixels), plain_images, atol=1e-6)
    np.testing.assert_allclose(runtime.encode_texts(texts), plain_texts, atol=1e-6)


def test_concurrent_callers_get_the_same_answers(runtime: ClipRuntime) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    expected = runtime.encode_pixels(pixels)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: runtime.encode_pixels(pixels), range(8)))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-6)


def test_modified_file_is_refused_at_load(tiny_model: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    path = copy / "tokenizer.json"
    path.write_text(path.read_text() + "\n")  # still a valid tokenizer, different bytes
    with pytest.raises(ModelError, match=r"tokenizer\.json .* does not match its manifest hash"):
        load_model(copy, providers=("cpu",))
    assert load_model(copy, providers=("cpu",), verify=False).provider == "cpu"


def test_resolve_model_path(tmp_path: Path, tiny_model: Path) -> None:
    assert resolve_model_path(str(tiny_model)) == tiny_model
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_path(tmp_path / "missing")
    with pytest.raises(ModelError, match="not an exported model"):
        resolve_model_path(tmp_path)
    if (DEMO_DIR / "manifest.json").is_file():
        assert resolve_model_path("demo") == DEMO_DIR
    else:
        with pytest.raises(ModelError, match="demo model is not installed"):
            resolve_model_path("demo")


class _DeviceArray:
    """Stands in for a CUDA array: only the interface `encode_device_pixels` reads."""

    def __init__(self, shape: tuple[int, ...], typestr: str = "|u1", strides: object = None):
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "data": (0, False),
            "strides": strides,
            "version": 3,
        }


def test_device_pixels_need_a_gpu_provider(runtime: ClipRuntime) -> None:
    with pytest.raises(ModelError, match="need a GPU provider; this runtime runs on cpu"):
        runtime.encode_device_pixels(_DeviceArray((1, SIZE, SIZE, 3)))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((1, SIZE, SIZE, 3), np.uint8), "exposes no __cuda_array_interface__"),
        (_DeviceArray((1, SIZE, SIZE, 3), typestr="<f4"), "must be uint8"),
        (_DeviceArray((1, 3, SIZE, SIZE)), "must have shape"),
        (_DeviceArray((2, SIZE, SIZE, 3), strides=(3, 2 * SIZE * 3, 6, 1)), "C-contiguous"),
    ],
)
def test_device_pixels_are_checked_before_binding(
    runtime: ClipRuntime, monkeypatch: pytest.MonkeyPatch, array: object, message: str
) -> None:
    monkeypatch.setattr(runtime, "_bind_device", "cuda")  # as if CUDA ran the graph
    with pytest.raises(ValueError, match=message):
        runtime.encode_device_pixels(array)


@pytest.mark.parametrize(
    ("shape", "strides", "expected"),
    [
        ((2, 4, 4, 3), None, True),
        ((2, 4, 4, 3), (48, 12, 3, 1), True),
        ((1, 4, 4, 3), (999, 12, 3, 1), True),  # a size-1 dimension's stride is free
        ((2, 4, 4, 3), (48, 3, 12, 1), False),
        ((2, 4, 4, 3), (48, 12, 3), False),  # strides of the wrong length
    ],
)
def test_c_contiguity_of_device_arrays(
    shape: tuple[int, ...], strides: tuple[int, ...] | None, expected: bool
) -> None:
    from moderator.embed.runtime import _c_contiguous

    assert _c_contiguous(shape, strides) is expected


@pytest.mark.parametrize(
    ("attention", "sdpa"), [("efficient", "2"), ("flash", "1"), ("cudnn", "8"), ("auto", None)]
)
def test_cuda_attention_kernel_becomes_the_sdpa_kernel_option(
    attention: AttentionKernel, sdpa: str | None, tiny_model: Path
) -> None:
    """ORT's `sdpa_kernel` bit flags; "auto" leaves the option out so ORT chooses."""
    manifest = read_manifest(tiny_model)
    cuda = Provider("cuda", "CUDAExecutionProvider")
    options = _provider_options(
        cuda, device_id=1, manifest=manifest, profile=None, attention=attention
    )
    assert options.get("sdpa_kernel") == sdpa
    assert options["device_id"] == "1"
    cpu = Provider("cpu", "CPUExecutionProvider")
    options = _provider_options(
        cpu, device_id=0, manifest=manifest, profile=None, attention=attention
    )
    assert options == {}


def test_attention_kernel_is_reported_only_for_gpus(tiny_model: Path) -> None:
    runtime = load_model(tiny_model, providers=("cpu",), attention="flash")
    assert runtime.info()["attention_kernel"] is None


def test_load_model_hands_the_attention_kernel_to_the_cuda_provider(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, cuda_chosen: None
) -> None:
    """No GPU here: stand in for provider selection, record what the session is asked for."""
    asked: list[Any] = []

    def session(path: str, **kwargs: Any) -> None:
        asked.append(kwargs["providers"])
        raise RuntimeError("recorded; no CUDA on this machine")

    monkeypatch.setattr(runtime_module.ort, "InferenceSession", session)
    with pytest.raises(ModelError, match="recorded"):
        load_model(tiny_model, providers=("cuda",), device_id=2)
    assert asked == [[("CUDAExecutionProvider", {"device_id": "2", "sdpa_kernel": "2"})]]


def test_cuda_graphs_are_a_cuda_provider_option_only(tiny_model: Path) -> None:
    manifest = read_manifest(tiny_model)
    cuda = Provider("cuda", "CUDAExecutionProvider")
    options = _provider_options(
        cuda, device_id=0, manifest=manifest, profile=None, attention="auto", cuda_graph=True
    )
    assert options == {"device_id": "0", "enable_cuda_graph": "1"}
    cpu = Provider("cpu", "CPUExecutionProvider")
    options = _provider_options(
        cpu, device_id=0, manifest=manifest, profile=None, attention="auto", cuda_graph=True
    )
    assert options == {}


def test_cuda_graphs_asked_for_on_the_cpu_change_nothing(tiny_model: Path) -> None:
    plain = load_model(tiny_model, providers=("cpu",))
    asked = load_model(tiny_model, providers=("cpu",), cuda_graphs=True)
    assert asked.info()["cuda_graphs"] is False
    pixels = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    pixels = pixels[:, : plain.image_size, : plain.image_size]
    np.testing.assert_array_equal(asked.encode_pixels(pixels), plain.encode_pixels(pixels))


def test_load_model_asks_the_cuda_provider_for_graphs_on_the_image_tower_only(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, cuda_chosen: None
) -> None:
    """No GPU here: record the sessions asked for. The text tower opens on the CPU for real;
    the image tower cannot, so the graph attempt fails, `load_model` falls back to a plain
    session, and that one fails too."""
    asked: list[Any] = []
    real_session = runtime_module.ort.InferenceSession

    def session(path: str, **kwargs: Any) -> Any:
        asked.append((Path(path).name, kwargs["providers"][0][1]))
        if Path(path).name == "vision.onnx":
            raise RuntimeError("recorded; no CUDA on this machine")
        return real_session(path, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(runtime_module.ort, "InferenceSession", session)
    with pytest.raises(ModelError, match="recorded"):
        load_model(tiny_model, providers=("cuda",), cuda_graphs=True, attention="auto")
    graphs = {"device_id": "0", "enable_cuda_graph": "1"}
    assert asked == [
        ("text.onnx", {"device_id": "0"}),
        ("vision.onnx", graphs),  # the graph attempt fails ...
        ("vision.onnx", {"device_id": "0"}),  # ... and the plain session is tried after it
    ]


def test_warm_up_runs_every_batch_size_only_on_a_gpu_without_graphs(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch size's first CUDA run sets up its kernels; `serve` meets every size up to
    `max_batch`. With graphs every bucket was captured at load; on the CPU one size will do."""
    runtime = load_model(tiny_model, providers=("cpu",))
    sizes: list[int] = []
    monkeypatch.setattr(runtime, "encode_pixels", lambda pixels: sizes.append(len(pixels)))
    runtime.warm_up(4)
    assert sizes == [1]
    monkeypatch.setattr(ClipRuntime, "provider", property(lambda self: "cuda"))
    sizes.clear()
    runtime.warm_up(4)
    assert sizes == [1, 2, 3, 4]
    monkeypatch.setattr(runtime, "_graphs", object())  # stands for graphs captured at load
    sizes.clear()
    runtime.warm_up(4)
    assert sizes == [1]
