"""Which ONNX Runtime execution providers can really run here, checked before asking for them.

onnxruntime-gpu lists CUDA and TensorRT as "available" on any machine because the wheel ships
their provider libraries; asking for one on a machine without a GPU or without the CUDA
libraries makes ORT log an ERROR and fall back. We check first, so a CPU machine quietly gets
CPU and a GPU machine with broken libraries gets one clear line saying which library is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import onnxruntime as ort

from moderator.errors import ConfigError

__all__ = ["ORT_NAMES", "Provider", "cuda_device_count", "select_providers"]

log = logging.getLogger(__name__)

ORT_NAMES: Final = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
SHORT_NAMES: Final = {v: k for k, v in ORT_NAMES.items()}

# Provider libraries inside onnxruntime/capi; loading one resolves its whole dependency list
# (cudart, cublasLt, curand, cudnn; nvinfer for TensorRT), the same way ORT will load it.
_PROVIDER_LIBRARY: Final = {
    "cuda": "libonnxruntime_providers_cuda.so",
    "tensorrt": "libonnxruntime_providers_tensorrt.so",
}
_SHARED_LIBRARY: Final = "libonnxruntime_providers_shared.so"
_CUDA_SUCCESS: Final = 0


@dataclass(frozen=True)
class Provider:
    """One provider to ask ORT for: `name` is ours ("cuda"), `ort_name` is ORT's."""

    name: str
    ort_name: str


def cuda_device_count() -> int:
    """GPUs the NVIDIA driver reports; 0 without a driver. Never raises."""
    count, _ = _driver_devices()
    return count


@functools.cache
def _driver_devices() -> tuple[int, str | None]:
    """(device count, why none) from the driver API, which needs no CUDA toolkit."""
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        driver = ctypes.CDLL(name)
    except OSError:
        return 0, f"no NVIDIA driver ({name} not found)"
    if (rc := driver.cuInit(0)) != _CUDA_SUCCESS:
        return 0, f"the NVIDIA driver found no usable GPU (cuInit error {rc})"
    count = ctypes.c_int(0)
    if (rc := driver.cuDeviceGetCount(ctypes.byref(count))) != _CUDA_SUCCESS:
        return 0, f"cuDeviceGetCount error {rc}"
    return count.value, None if count.value else "the NVIDIA driver reports no GPU"


@functools.cache
def _preload_cuda_libraries() -> None:
    """Let ORT load the CUDA/cuDNN libraries pip installed (nvidia-* wheels), if any.

    `preload_dlls` prints its failures on stdout; they are captured and logged at DEBUG, since
    the provider-library check below reports the one that matters.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:  # onnxruntime < 1.21
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            preload()
    except Exception as exc:  # best effort: the library check decides
        log.debug("onnxruntime.preload_dlls failed: %s", exc)
    if text := captured.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", text)


@functools.cache
def _library_problem(name: str) -> str | None:
    """None when ORT's provider library for `name` loads with all its dependencies."""
    if sys.platform != "linux":  # elsewhere trust ORT's own list
        return None
    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    try:
        ctypes.CDLL(os.path.join(capi, _SHARED_LIBRARY), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(os.path.join(capi, _PROVIDER_LIBRARY[name]))
    except OSError as exc:
        return f"its libraries do not load: {exc}"
    return None


def _gpu_problem(name: str, device_id: int) -> str | None:
    """Why provider `name` ("cuda"/"tensorrt") cannot run on GPU `device_id`, or None."""
    if ORT_NAMES[name] not in ort.get_available_providers():
        return f"this onnxruntime build has no {ORT_NAMES[name]} (install onnxruntime-gpu)"
    count, why = _driver_devices()
    if why is not None:
        return why
    if device_id >= count:
        return f"GPU {device_id} asked for, but the driver reports {count}"
    _preload_cuda_libraries()
    return _library_problem(name)


def select_providers(requested: Sequence[str], *, device_id: int = 0) -> list[Provider]:
    """The requested providers that can run here, in the requested order.

    Unusable GPU providers are skipped with one log line (WARNING when a GPU is present, since
    that is a broken install; INFO on a machine without one). TensorRT brings CUDA along for
    the nodes it cannot take. Raises ConfigError when nothing requested can run.
    """
    chosen: list[Provider] = []
    for name in requested:
        if name not in ORT_NAMES:
            raise ConfigError(f"unknown execution provider {name!r}; use one of {list(ORT_NAMES)}")
        if any(p.name == name for p in chosen):
            continue
        if name != "cpu" and (problem := _gpu_problem(name, device_id)) is not None:
            level = logging.WARNING if cuda_device_count() > 0 else logging.INFO
            log.log(level, "execution provider %s skipped: %s", name, problem)
            continue
        chosen.append(Provider(name, ORT_NAMES[name]))
    names = [p.name for p in chosen]
    if "tensorrt" in names and "cuda" not in names and _gpu_problem("cuda", device_id) is None:
        chosen.insert(names.index("tensorrt") + 1, Provider("cuda", ORT_NAMES["cuda"]))
    if not chosen:
        raise ConfigError(
            f"none of the execution providers {list(requested)} can run on this machine; "
            "add 'cpu' to the list to fall back to the CPU"
        )
    return chosen
