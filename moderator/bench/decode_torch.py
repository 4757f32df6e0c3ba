"""The torch peer of `moderator bench decode`: JPEG bytes decoded by nvJPEG through torchcodec
(or torchvision), then resized and centre-cropped by torch, as a torch user would write it.

torch is imported inside the functions, so the bench runs (without this row) where it is not
installed.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any, Final

from moderator.errors import ConfigError
from moderator.pipeline.decode.cpu import PreprocessSpec

__all__ = ["gpu_decoder", "gpu_preprocess", "torch_problem", "torch_rate"]

# Bicubic with antialiasing, as torchvision's Resize (CLIPImageProcessor's default backend).
_RESIZE_MODE: Final = "bicubic"


def gpu_decoder() -> tuple[str, Callable[[list[bytes], str], list[Any]]] | None:
    """(name, decode) for batched JPEG decoding to CHW uint8 tensors on a device, or None.

    torchcodec is preferred (torchvision's image decoders are deprecated since 0.29); both
    take a list of encoded images and decode them in one nvJPEG batch on CUDA.
    """
    try:
        from torchcodec.decoders import decode_jpeg as codec_decode  # type: ignore[attr-defined]
    except ImportError:
        pass
    else:

        def decode_codec(images: list[bytes], device: str) -> list[Any]:
            out: Any = codec_decode(list(images), mode="RGB", device=device)
            return list(out)

        return "torchcodec", decode_codec
    try:
        import torch
        from torchvision.io import (  # type: ignore[import-not-found, unused-ignore]
            ImageReadMode,
        )
        from torchvision.io import (  # type: ignore[import-not-found, unused-ignore]
            decode_jpeg as vision_decode,
        )
    except ImportError:
        return None

    def decode_vision(images: list[bytes], device: str) -> list[Any]:
        # Zero-copy views of the bytes: the decoder only reads them. torch warns that they
        # are not writable; copying each into a bytearray instead costs a sixth of the rate
        # (9.1k vs 11.0k img/s on an H200, batches of 128).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given buffer is not writable")
            tensors = [torch.frombuffer(b, dtype=torch.uint8) for b in images]
        out: list[Any] = vision_decode(tensors, mode=ImageReadMode.RGB, device=device)
        return out

    return "torchvision", decode_vision


def gpu_preprocess(
    images: list[bytes],
    spec: PreprocessSpec,
    *,
    device: str = "cuda",
    decode: Callable[[list[bytes], str], list[Any]] | None = None,
) -> Any:
    """JPEG bytes → (n, S, S, 3) uint8 tensor on `device`: decode, resize the shortest side
    to `spec.resize_shortest_edge` (bicubic, antialiased), centre-crop S×S.

    The geometry is `decode_image`'s (HF's truncating long side, torchvision's crop offsets);
    the pixels differ by the JPEG DCT scaling `decode_image` uses and by resampling details.
    Images of equal size are resized in one call. Sides shorter than S are not padded here
    (the caller sends photos); such an image raises ValueError.
    """
    import torch
    import torch.nn.functional as F

    from moderator.pipeline.decode.cpu import _crop_start, _resize_size

    if decode is None:
        found = gpu_decoder()
        if found is None:
            raise ConfigError("GPU decoding needs torchcodec or torchvision")
        decode = found[1]
    decoded = decode(images, device)
    size = spec.image_size
    groups: dict[tuple[int, int], list[int]] = {}
    for i, chw in enumerate(decoded):
        groups.setdefault((int(chw.shape[1]), int(chw.shape[2])), []).append(i)
    out: Any = None  # one size (the usual case) needs no scatter into a shared tensor
    if len(groups) > 1:
        out = torch.empty((len(images), size, size, 3), dtype=torch.uint8, device=device)
    for (height, width), members in groups.items():
        new_w, new_h = _resize_size((width, height), spec.resize_shortest_edge)
        if new_w < size or new_h < size:
            raise ValueError(f"{width}x{height} is smaller than the {size}px crop after resizing")
        batch = torch.stack([decoded[i] for i in members]).float()
        resized = F.interpolate(
            batch, size=(new_h, new_w), mode=_RESIZE_MODE, antialias=True, align_corners=False
        )
        top, left = _crop_start(new_h, size), _crop_start(new_w, size)
        crop = resized[:, :, top : top + size, left : left + size]
        pixels = crop.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        if out is None:
            return pixels.contiguous()
        out[torch.tensor(members, device=device)] = pixels
    return out


def torch_rate(
    batches: list[list[bytes]], spec: PreprocessSpec, seconds: float, device: str
) -> tuple[float, str]:
    """img/s of `gpu_preprocess` over `batches` for at least `seconds`, and the decoder's name."""
    import torch

    found = gpu_decoder()
    assert found is not None
    name, decode = found
    for chunk in batches[:2]:  # nvJPEG and cuDNN set-up happen here
        gpu_preprocess(chunk, spec, device=device, decode=decode)
    torch.cuda.synchronize()
    done = 0
    started = time.perf_counter()
    while True:
        for chunk in batches:
            gpu_preprocess(chunk, spec, device=device, decode=decode)
            done += len(chunk)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed, name


def torch_problem() -> str | None:
    """Why the torch peer cannot run here, or None. torch is imported only when installed."""
    try:
        import torch
    except ImportError:
        return "GPU decode skipped: torch is not installed"
    if not torch.cuda.is_available():
        return "GPU decode skipped: no CUDA device visible to torch"
    if gpu_decoder() is None:
        return "GPU decode skipped: needs torchcodec (or torchvision) for nvJPEG"
    return None
