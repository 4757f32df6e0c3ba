"""The verdict record: one JSON object per event, the same from `serve` and `moderator score`.

Fields (a public contract, JSON Schema in deploy/schemas/verdict.schema.json): id, decision,
matches, shadow, top, policy {name, version}, model {id, sha256}, image {sha256}, surface,
source, metadata, submitted_at, processed_at, cached, timings_ms, and `truncated` when the
echoed fields had to be dropped to fit the topic.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from moderator.pipeline.events import ImageEvent, now_iso
from moderator.policy.score import Outcome


class _Policy(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...


class _Model(Protocol):
    @property
    def model_id(self) -> str: ...

    @property
    def sha256(self) -> str: ...


def build_verdict(
    event: ImageEvent,
    outcome: Outcome,
    policy: _Policy,
    model: _Model,
    *,
    image_sha: str,
    timings: dict[str, float],
    cached: bool,
) -> dict[str, Any]:
    """Assemble the verdict; `timings` are seconds per stage, reported in milliseconds."""
    body = outcome.as_dict()
    return {
        "id": event.id,
        "decision": body["decision"],
        "matches": body["matches"],
        "near": body["near"],
        "shadow": body["shadow"],
        "top": body["top"],
        "policy": {"name": policy.name, "version": policy.version},
        "model": {"id": model.model_id, "sha256": model.sha256},
        "image": {"sha256": image_sha},
        "surface": event.surface,
        "source": event.source,
        "metadata": event.metadata,
        "submitted_at": event.submitted_at.isoformat() if event.submitted_at else None,
        "processed_at": now_iso(),
        "cached": cached,
        "timings_ms": {k: round(v * 1000, 3) for k, v in timings.items()},
    }


class ConceptResult(BaseModel):
    """One concept's figures in a verdict."""

    model_config = ConfigDict(extra="forbid")
    id: str
    category: str
    severity: Literal["low", "medium", "high", "critical"]
    action: Literal["flag", "review", "log"]
    mode: Literal["enforce", "shadow"]
    status: str
    score: float
    threshold: float
    margin: float
    counter_score: float | None


class _Named(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: str


class _ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    sha256: str


class _ImageRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str


class VerdictRecord(BaseModel):
    """The verdict topic's value; its JSON Schema is committed in deploy/schemas/."""

    model_config = ConfigDict(extra="forbid", title="moderator verdict")
    id: str
    decision: Literal["flag", "review", "allow"]
    matches: list[ConceptResult]
    near: list[ConceptResult]
    shadow: list[ConceptResult]
    top: list[ConceptResult]
    policy: _Named
    model: _ModelRef
    image: _ImageRef
    surface: str | None
    source: str | None
    metadata: dict[str, Any] | None
    submitted_at: str | None
    processed_at: str
    cached: bool
    timings_ms: dict[str, float]
    truncated: list[Literal["metadata", "source"]] | None = Field(
        None,
        description="Echoed fields set to null because the verdict was over the verdict "
        "topic's max.message.bytes with them; absent otherwise.",
    )
