"""`Service` pieces that need no broker: how the model settings reach every runtime."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from moderator import service as service_module
from moderator.service import Service
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
    asyncio.run(Service(settings)._load_models())
    assert [c["device_id"] for c in calls] == [0, 1]
    for call in calls:
        assert call["attention"] == "flash"
        assert call["intra_op_threads"] == 3
        assert call["providers"] == ["cuda", "cpu"]
