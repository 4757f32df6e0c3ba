"""A Hugging Face CLIP checkpoint, loaded for export, and the settings the runtime must copy.

`load_checkpoint` takes a hub id or a local directory and refuses anything the export could not
reproduce faithfully: a non-CLIP model, a slow-only tokenizer. `read_preprocess` and
`read_tokens` read the image processor's and the tokenizer's settings and check them against
what the runtime's decoder and tokenizer do, so a mismatch fails the export rather than
shipping a model that sees other pixels or pools another token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from moderator.embed.manifest import Source
from moderator.errors import ModelError

__all__ = [
    "Checkpoint",
    "Preprocess",
    "Progress",
    "Tokens",
    "load_checkpoint",
    "read_preprocess",
    "read_tokens",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

Progress = Callable[[str], None]


@dataclass
class Checkpoint:
    model: Any  # transformers.CLIPModel
    tokenizer: Any  # a fast tokenizer
    processor: Any  # CLIPImageProcessor
    source: Source
    model_id: str


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


def _download(repo_id: str, progress: Progress) -> tuple[Path, str | None]:
    """Fetch the files a CLIP checkpoint needs from the hub; (snapshot dir, commit hash)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    progress(f"downloading {repo_id} from the Hugging Face hub")
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
        if not any(path.glob("*.safetensors")):  # older repos ship only pickled weights
            path = Path(snapshot_download(repo_id, allow_patterns=["pytorch_model.bin"]))
    except GatedRepoError as exc:
        raise ModelError(
            f"{repo_id} is gated on the hub: log in with an account that has access"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelError(f"unknown model {repo_id!r}: no such (public) hub repository") from exc
    except RevisionNotFoundError as exc:
        raise ModelError(f"{repo_id}: revision not found on the hub") from exc
    except LocalEntryNotFoundError as exc:  # offline, and nothing cached
        raise ModelError(
            f"could not download {repo_id}: no network? use a local dir ({exc.__cause__ or exc})"
        ) from exc
    except Exception as exc:  # httpx connection errors, HTTP 5xx, disk errors
        why = f"{type(exc).__name__}: {exc}"
        raise ModelError(
            f"could not download {repo_id}: no network? use a local dir ({why})"
        ) from exc
    revision = path.name if re.fullmatch(r"[0-9a-f]{40}", path.name) else None
    return path, revision


def load_checkpoint(model: str, progress: Progress) -> Checkpoint:
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel

    local = Path(model).expanduser()
    if local.is_dir():
        directory, source = local, Source(id=str(local), revision=None)
        model_id = local.resolve().name
    elif local.exists():
        raise ModelError(f"{model} is a file; give a checkpoint directory or a hub id")
    elif _looks_like_path(model) or not _HUB_ID.match(model):
        raise ModelError(f"model directory {model} does not exist")
    else:
        directory, revision = _download(model, progress)
        source, model_id = Source(id=model, revision=revision), model

    progress(f"loading checkpoint from {directory}")
    try:
        config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{directory}: not a transformers checkpoint ({exc})") from exc
    if config.model_type != "clip":
        raise ModelError(
            f"{model} holds a {config.model_type!r} model, not CLIP (config.model_type)"
        )
    try:
        # Eager attention: SDPA traces to a decomposed pattern ORT's CLIP fusion does not
        # match (0 Attention nodes fused instead of one per layer).
        clip: Any = CLIPModel.from_pretrained(
            directory, attn_implementation="eager", dtype=torch.float32
        )
        clip.eval()
    except (OSError, ValueError) as exc:
        raise ModelError(f"{directory}: cannot load the CLIP weights ({exc})") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"{directory}: cannot load the tokenizer ({exc})") from exc
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ModelError(f"{directory}: the tokenizer has no fast (tokenizers) version")
    try:
        # Untyped in some transformers releases, typed in others: a plain callable suits both.
        load_processor: Callable[..., Any] = AutoImageProcessor.from_pretrained
        processor = load_processor(directory)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{directory}: cannot load the image processor ({exc})") from exc
    return Checkpoint(clip, tokenizer, processor, source, model_id)


@dataclass(frozen=True)
class Preprocess:
    image_size: int
    resize_shortest_edge: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float


def read_preprocess(ckpt: Checkpoint) -> Preprocess:
    """The processor's settings, checked against what the runtime's decoder reproduces."""
    proc, vision_size = ckpt.processor, ckpt.model.config.vision_config.image_size
    size = _as_dict(getattr(proc, "size", None))
    crop = _as_dict(getattr(proc, "crop_size", None)) or {"height": vision_size}
    if "shortest_edge" not in size:
        raise ModelError(f"image processor size {size}: only shortest-edge resizing is supported")
    side = crop.get("height")
    if side != crop.get("width", side) or side != vision_size:
        raise ModelError(f"crop {crop} does not match the vision tower's {vision_size} px input")
    mean = proc.image_mean if getattr(proc, "do_normalize", True) else (0.0, 0.0, 0.0)
    std = proc.image_std if getattr(proc, "do_normalize", True) else (1.0, 1.0, 1.0)
    rescale = float(proc.rescale_factor) if getattr(proc, "do_rescale", True) else 1.0
    return Preprocess(
        image_size=int(vision_size),
        resize_shortest_edge=int(size["shortest_edge"]),
        mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        std=(float(std[0]), float(std[1]), float(std[2])),
        rescale=rescale,
    )


def _as_dict(value: Any) -> dict[str, int]:
    if value is None:
        return {}
    if isinstance(value, int):  # legacy configs give a bare int
        return {"shortest_edge": value, "height": value, "width": value}
    return {k: int(v) for k, v in dict(value).items() if v is not None}


@dataclass(frozen=True)
class Tokens:
    bos: int
    eos: int
    pad: int | None
    pooling: Literal["argmax", "first_eos"]
    context_length: int


def read_tokens(ckpt: Checkpoint) -> Tokens:
    tok, text_config = ckpt.tokenizer, ckpt.model.config.text_config
    bos, eos = tok.bos_token_id, tok.eos_token_id
    if bos is None or eos is None:
        raise ModelError("the tokenizer defines no bos/eos token; CLIP pools at eos")
    config_eos = text_config.eos_token_id
    # HF CLIP: eos_token_id == 2 in the config marks old checkpoints that pool at argmax(ids)
    # (the eos being the largest id); any other value pools at the first eos.
    if config_eos == 2:
        pooling: Literal["argmax", "first_eos"] = "argmax"
    elif config_eos == eos:
        pooling = "first_eos"
    else:
        raise ModelError(
            f"config eos_token_id {config_eos} is not the tokenizer's eos {eos}: "
            "the text tower would pool the wrong token"
        )
    return Tokens(
        bos=int(bos),
        eos=int(eos),
        pad=tok.pad_token_id,
        pooling=pooling,
        context_length=int(text_config.max_position_embeddings),
    )
