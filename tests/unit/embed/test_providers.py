"""Provider selection: only providers that can run here are asked for, CPU quietly otherwise."""

from __future__ import annotations

import logging

import pytest

from moderator.embed.providers import cuda_device_count, select_providers
from moderator.errors import ConfigError

no_gpu = pytest.mark.skipif(cuda_device_count() > 0, reason="this machine has a GPU")


@no_gpu
def test_cuda_request_on_a_cpu_machine_gives_cpu_without_error_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        chosen = select_providers(["tensorrt", "cuda", "cpu"])
    assert [p.name for p in chosen] == ["cpu"]
    assert [p.ort_name for p in chosen] == ["CPUExecutionProvider"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2  # one line per skipped provider, saying why


@no_gpu
def test_gpu_only_request_on_a_cpu_machine_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="add 'cpu'"):
        select_providers(["cuda"])


def test_unknown_provider() -> None:
    with pytest.raises(ConfigError, match="unknown execution provider 'rocm'"):
        select_providers(["rocm", "cpu"])


def test_duplicates_are_dropped() -> None:
    assert [p.name for p in select_providers(["cpu", "cpu"])] == ["cpu"]
