"""The GPU decoder without a GPU: it fails as a `ModelError`, which the service falls back on.

The decoder itself is exercised by tests/gpu (run on the GPU machine); the resize graphs it
runs are checked on the CPU in test_resize.py.
"""

from __future__ import annotations

import onnxruntime as ort
import pytest

from moderator.errors import ModelError
from moderator.pipeline.decode.cpu import PreprocessSpec
from moderator.pipeline.decode.gpu import GpuJpegDecoder

SPEC = PreprocessSpec.for_model(224, 224)


def test_decoder_says_what_is_missing_on_a_machine_without_it() -> None:
    try:
        import nvidia.nvimgcodec  # noqa: F401
    except ImportError:
        with pytest.raises(ModelError, match="nvImageCodec"):
            GpuJpegDecoder(SPEC)
    else:  # installed: without a GPU it must still fail as a ModelError, not crash
        if "CUDAExecutionProvider" in ort.get_available_providers():
            pytest.skip("a GPU may be present: tests/gpu covers the decoder")
        with pytest.raises(ModelError):
            GpuJpegDecoder(SPEC)


def test_a_warm_up_failure_of_any_kind_is_a_model_error() -> None:
    """The service falls back to CPU decoding on `ModelError` only: nvImageCodec's, CUDA's and
    ONNX Runtime's own exception types must not escape the warm-up."""
    decoder = GpuJpegDecoder.__new__(GpuJpegDecoder)  # no GPU here: only what warm_up reads
    decoder.spec = SPEC
    decoder.max_batch = 4

    def decode(items: list[bytes]) -> None:
        assert len(items) == 4
        assert all(item.startswith(b"\xff\xd8\xff") for item in items)  # JPEGs
        raise RuntimeError("nvImageCodec: no hardware decoder")

    decoder.decode = decode  # type: ignore[method-assign,assignment]
    with pytest.raises(ModelError, match="failed its warm-up: nvImageCodec: no hardware"):
        decoder.warm_up()
