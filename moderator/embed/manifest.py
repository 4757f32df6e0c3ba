"""`manifest.json`: what an exported model directory holds, written by export, read by the runtime.

The manifest is the contract between the torch-side exporter and the torch-free runtime: the
runtime learns everything it needs (preprocessing, tokens, pooling, logit scale) from here and
never opens a transformers config. `files` pins every file by sha256, and `sha256` (a hash of
those hashes) is the model's identity in cache keys and policy versions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moderator.errors import ModelError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Manifest",
    "Optimization",
    "Source",
    "file_sha256",
    "model_sha256",
    "read_manifest",
    "verify_files",
]

MANIFEST_NAME: Final = "manifest.json"
VISION_NAME: Final = "vision.onnx"
TEXT_NAME: Final = "text.onnx"
TOKENIZER_NAME: Final = "tokenizer.json"
# Bumped when a field changes meaning; a runtime refuses directories newer than it understands.
FORMAT_VERSION: Final = 1

_CHUNK: Final = 1 << 20  # hash in 1 MiB reads: model files are hundreds of MB


class Source(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Hub id or local directory the checkpoint came from.")
    revision: str | None = Field(None, description="Hub commit hash, when known.")


class Optimization(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    applied: bool = Field(description="Whether the ORT transformers fusions were kept.")
    fused: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Per graph (vision/text): fused op type → node count."
    )
    note: str | None = Field(None, description="Why a graph was left unoptimized, if it was.")
    mlp_bias_folded: int = Field(
        0, description="Vision MLP layers whose fc1 bias rides in the MatMul (a ones column)."
    )


class Manifest(BaseModel):
    """Everything the runtime needs to know about an exported CLIP."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1]
    source: Source
    model_id: str = Field(description="Human-readable model name.")
    embed_dim: int = Field(gt=0)
    image_size: int = Field(gt=0, description="Square crop side S the vision graph takes.")
    resize_shortest_edge: int = Field(gt=0)
    mean: tuple[float, float, float] = Field(description="RGB mean on the 0..1 scale.")
    std: tuple[float, float, float] = Field(description="RGB std on the 0..1 scale.")
    input_layout: Literal["NHWC-uint8"] = "NHWC-uint8"
    context_length: int = Field(gt=2, description="Most tokens a text may have, bos/eos included.")
    bos_token_id: int = Field(ge=0)
    eos_token_id: int = Field(ge=0)
    pad_token_id: int | None = Field(None, ge=0)
    eos_pooling: Literal["argmax", "first_eos"] = Field(
        description="How the text graph finds the pooled token: HF CLIP's two conventions."
    )
    logit_scale: float = Field(gt=0, description="exp(logit_scale) of the checkpoint.")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        description="fp32, fp16, or int8 (vision tower dynamically quantized; text stays fp32)."
    )
    opset: int
    optimized: Optimization
    parity: dict[str, float] = Field(
        default_factory=dict,
        description="Lowest cosine of ONNX vs PyTorch embeddings on export's probe inputs.",
    )
    files: dict[str, str] = Field(description="File name → sha256, every file but this one.")
    sha256: str = Field(description="Hash over the sorted file hashes: the model's identity.")
    versions: dict[str, str] = Field(default_factory=dict)
    exported_at: datetime

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_NAME
        # Written only when set, so unfolded exports stay readable by services that predate it.
        exclude = None if self.optimized.mlp_bias_folded else {"optimized": {"mlp_bias_folded"}}
        path.write_text(self.model_dump_json(indent=2, exclude=exclude) + "\n", encoding="utf-8")
        return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_sha256(files: Mapping[str, str]) -> str:
    """One hash over `name:hash` lines in name order, so renaming a file changes it too."""
    lines = "".join(f"{name}:{files[name]}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def read_manifest(directory: Path) -> Manifest:
    """Parse `directory/manifest.json`; ModelError says what is missing or malformed."""
    path = Path(directory) / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"{directory} is not an exported model: no {MANIFEST_NAME}") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: expected a JSON object")
    version = raw.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ModelError(
            f"{path}: format_version {version} is newer than this moderator reads "
            f"({FORMAT_VERSION}); upgrade moderator or re-export"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ModelError(f"{path}: invalid manifest: {problems}") from exc


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Check every listed file's sha256 and the combined hash; ModelError names the culprit."""
    for name, expected in sorted(manifest.files.items()):
        path = Path(directory) / name
        if not path.is_file():
            raise ModelError(f"model file {name} is missing from {directory}")
        actual = file_sha256(path)
        if actual != expected:
            raise ModelError(
                f"model file {name} in {directory} does not match its manifest hash "
                f"(sha256 {actual[:12]}…, expected {expected[:12]}…): corrupt or modified"
            )
    if model_sha256(manifest.files) != manifest.sha256:
        raise ModelError(f"{directory}/{MANIFEST_NAME}: sha256 does not match its file list")
