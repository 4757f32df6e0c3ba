"""`moderator.service.models`: how the model settings reach every runtime, and when GPU JPEG
decoders are built."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from moderator.service import models as service_module
from moderator.service.models import load_runtimes, open_gpu_decoders
from moderator.settings import load_settings


class _GpuRuntime:
    provider = "cuda"

    def info(self) -> dict[str, Any]:
        return {"model_id": "stand-in", "provider": self.provider}


def test_every_gpu_runtime_gets_the_model_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def load_model(path: str, **options: Any) -> _GpuRuntime:
        calls.append({"path": path, **options})
        return _GpuRuntime()

    monkeypatch.setattr(service_module, "load_model", load_model)
    settings = load_settings(
        environ={
            "MODERATOR_MODEL__DEVICE_IDS": "[0, 1]",
            "MODERATOR_MODEL__ATTENTION_KERNEL": "flash",
            "MODERATOR_MODEL__INTRA_OP_THREADS": "3",
        }
    )
    asyncio.run(load_runtimes(settings))
    assert [c["device_id"] for c in calls] == [0, 1]
    for call in calls:
        assert call["attention"] == "flash"
        assert call["intra_op_threads"] == 3
        assert call["providers"] == ["cuda", "cpu"]


def _decoders(runtimes: list[Any], gpu_decode: str) -> list[Any]:
    from moderator.pipeline.decode.cpu import PreprocessSpec

    spec = PreprocessSpec.for_model(224, 224)
    return open_gpu_decoders(gpu_decode, runtimes, spec, 8)  # type: ignore[return-value]


def test_gpu_decode_on_refuses_to_start_when_the_model_runs_on_the_cpu() -> None:
    from moderator.embed import load_model
    from moderator.errors import ConfigError

    cpu = load_model("demo", providers=["cpu"])
    with pytest.raises(ConfigError, match="gpu_decode is on, but: the model runs on the CPU"):
        _decoders([cpu], "on")
    assert _decoders([cpu], "auto") == []  # goes on, decoding on the CPU
    assert _decoders([cpu], "off") == []


def test_gpu_decode_auto_falls_back_when_the_decoder_cannot_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moderator.errors import ConfigError, ModelError

    class _Runtime(_GpuRuntime):
        def info(self) -> dict[str, Any]:
            return {"device_id": 0}

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ModelError("GPU JPEG decoding needs nvImageCodec")

    monkeypatch.setattr(service_module, "GpuJpegDecoder", refuse)
    assert _decoders([_Runtime()], "auto") == []
    with pytest.raises(ConfigError, match="needs nvImageCodec"):
        _decoders([_Runtime()], "on")


def test_a_decoder_that_fails_its_warm_up_is_closed_and_treated_as_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from moderator.errors import ConfigError, ModelError

    class _Runtime(_GpuRuntime):
        def info(self) -> dict[str, Any]:
            return {"device_id": 0}

        def encode_device_pixels(self, pixels: Any) -> Any:  # handed to the warm-up
            return None

    closed: list[bool] = []

    class _Decoder:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def warm_up(self, encode: Any) -> None:
            raise ModelError("the GPU JPEG decoder failed its warm-up: no engine")

        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(service_module, "GpuJpegDecoder", _Decoder)
    with caplog.at_level(logging.INFO):
        assert _decoders([_Runtime()], "auto") == []
    assert closed == [True]
    said = [r for r in caplog.records if r.getMessage() == "JPEGs decode on the CPU"]
    assert [r.levelno for r in said] == [logging.WARNING]  # it started, then failed
    with pytest.raises(ConfigError, match="failed its warm-up: no engine"):
        _decoders([_Runtime()], "on")
    assert closed == [True, True]
