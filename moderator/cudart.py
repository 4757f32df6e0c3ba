"""The few CUDA runtime calls the service makes itself, through ctypes: a stream, a copy, a wait.

Why ctypes: `serve` has no torch or CuPy to ask, and onnxruntime-gpu already brings libcudart.
Used by the GPU JPEG decoder (host pixels beside decoded ones) and by the vision graphs
(`moderator.embed.graphs`: pixels into the buffers a CUDA graph was captured with).
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from typing import Final

import numpy as np

from moderator.errors import ModelError

__all__ = ["CudaRuntime"]

_H2D: Final = 1  # cudaMemcpyHostToDevice
_D2D: Final = 3  # cudaMemcpyDeviceToDevice
_NON_BLOCKING: Final = 1  # cudaStreamNonBlocking


class CudaRuntime:
    """libcudart's calls as methods; each failure is a `ModelError` naming the call."""

    def __init__(self) -> None:
        self._lib = _load_cudart()
        self._lib.cudaGetErrorString.restype = ctypes.c_char_p

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            text = self._lib.cudaGetErrorString(code).decode(errors="replace")
            raise ModelError(f"CUDA {what} failed: {text} ({code})")

    def set_device(self, device_id: int) -> None:
        self._check(self._lib.cudaSetDevice(ctypes.c_int(device_id)), "cudaSetDevice")

    def create_stream(self) -> int:
        stream = ctypes.c_void_p()
        code = self._lib.cudaStreamCreateWithFlags(ctypes.byref(stream), _NON_BLOCKING)
        self._check(code, "cudaStreamCreateWithFlags")
        return int(stream.value or 0)

    def destroy_stream(self, stream: int) -> None:
        self._lib.cudaStreamDestroy(ctypes.c_void_p(stream))

    def copy_to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        """`array` (host, C-contiguous) to device memory at `pointer`, queued on `stream`."""
        self._copy(pointer, array.ctypes.data, array.nbytes, _H2D, stream)

    def copy_on_device(self, target: int, source: int, nbytes: int, stream: int) -> None:
        """`nbytes` from device memory at `source` to `target`, queued on `stream`."""
        self._copy(target, source, nbytes, _D2D, stream)

    def _copy(self, target: int, source: int, nbytes: int, kind: int, stream: int) -> None:
        code = self._lib.cudaMemcpyAsync(
            ctypes.c_void_p(target),
            ctypes.c_void_p(source),
            ctypes.c_size_t(nbytes),
            kind,
            ctypes.c_void_p(stream),
        )
        self._check(code, "cudaMemcpyAsync")

    def synchronize(self, stream: int) -> None:
        self._check(self._lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "sync")


def _load_cudart() -> ctypes.CDLL:
    """libcudart: the copy onnxruntime.preload_dlls() loaded, else one from nvidia's wheels."""
    names = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]
    for path in sys.path:
        pattern = os.path.join(path, "nvidia", "**", "libcudart.so*")
        names += sorted(glob.glob(pattern, recursive=True))
    errors = []
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
    raise ModelError(f"no CUDA runtime library (libcudart) to load: {errors[:3]}")
