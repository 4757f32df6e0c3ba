"""The CLIP runtime the service uses: ONNX Runtime sessions + a `tokenizers` tokenizer, no torch."""

from moderator.embed.manifest import Manifest
from moderator.embed.runtime import ClipRuntime, load_model

__all__ = ["ClipRuntime", "Manifest", "load_model"]
