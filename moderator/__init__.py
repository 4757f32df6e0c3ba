"""moderator: image content moderation with CLIP, ONNX Runtime and Kafka.

The public Python API is small: `load_model(path)` gives a CLIP runtime with
`encode_images(list[bytes])` and `encode_texts(list[str])`; `"demo"` names the shipped model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_model"]

if TYPE_CHECKING:
    from moderator.embed.runtime import ClipRuntime


def load_model(path: str = "demo", **options: Any) -> ClipRuntime:
    """Load an exported model directory (or `"demo"`); options go to `embed.load_model`."""
    # Imported here so `import moderator` stays cheap (no onnxruntime until a model is wanted).
    from moderator.embed import load_model as _load

    return _load(path, **options)
