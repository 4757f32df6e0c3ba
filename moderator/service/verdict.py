"""The verdict record: one JSON object per event, the same from `serve` and `moderator score`.

`Verdict` is the one definition of the record: `build_verdict` makes it, `Verdict.wire()` is
the JSON that goes on the verdict topic, and deploy/schemas/verdict.schema.json is generated
from it (`python -m moderator.commands.schemas deploy/schemas`). Its concept entries are
`ConceptScore`s, the scoring's own results. Fields: id, decision, matches, near, shadow, top,
policy {name, version}, model {id, sha256}, image {sha256}, surface, source, metadata,
submitted_at, processed_at, cached, timings_ms, and `truncated` only when the echoed fields
had to be dropped to fit the topic.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from moderator.pipeline.events import ImageEvent, now_iso
from moderator.policy.score import ConceptScore, Outcome
from moderator.types import Decision


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


class Echoed(StrEnum):
    """Verdict fields copied from the event: the ones dropped when a verdict is too large."""

    METADATA = "metadata"
    SOURCE = "source"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicyRef(_Part):
    """The policy that decided."""

    name: str
    version: str


class ModelRef(_Part):
    """The model that embedded the image."""

    id: str
    sha256: str


class ImageRef(_Part):
    """The image's bytes, by hash (the image itself is never echoed)."""

    sha256: str


def _absent(value: object) -> bool:
    return value is None


class Verdict(_Part):
    """The verdict topic's value; its JSON Schema is committed in deploy/schemas/."""

    model_config = ConfigDict(title="moderator verdict")
    id: str
    decision: Decision
    matches: tuple[ConceptScore, ...]
    near: tuple[ConceptScore, ...]
    shadow: tuple[ConceptScore, ...]
    top: tuple[ConceptScore, ...]
    policy: PolicyRef
    model: ModelRef
    image: ImageRef
    surface: str | None
    source: str | None
    metadata: dict[str, Any] | None
    submitted_at: str | None
    processed_at: str
    cached: bool
    timings_ms: dict[str, float]
    # Absent from the JSON unless set: consumers test for the key, not for null.
    truncated: tuple[Echoed, ...] | None = Field(
        None,
        exclude_if=_absent,
        description="Echoed fields set to null because the verdict was over the verdict "
        "topic's max.message.bytes with them; absent otherwise.",
    )

    def wire(self) -> dict[str, Any]:
        """The JSON object published for this verdict (NaN and Inf stay floats: the encoder
        refuses them rather than writing invalid JSON)."""
        return self.model_dump(mode="json")

    def without_echoed(self) -> Verdict:
        """A copy with the echoed fields set to null and named in `truncated`: what is sent
        when the full verdict is over the topic's limit."""
        dropped = tuple(f for f in Echoed if getattr(self, f.value) is not None)
        return self.model_copy(update={f.value: None for f in dropped} | {"truncated": dropped})


def build_verdict(
    event: ImageEvent,
    outcome: Outcome,
    policy: _Policy,
    model: _Model,
    *,
    image_sha: str,
    timings: dict[str, float],
    cached: bool,
) -> Verdict:
    """Assemble the verdict; `timings` are seconds per stage, reported in milliseconds."""
    return Verdict(
        id=event.id,
        decision=outcome.decision,
        matches=outcome.matches,
        near=outcome.near,
        shadow=outcome.shadow,
        top=outcome.top,
        policy=PolicyRef(name=policy.name, version=policy.version),
        model=ModelRef(id=model.model_id, sha256=model.sha256),
        image=ImageRef(sha256=image_sha),
        surface=event.surface,
        source=event.source,
        metadata=event.metadata,
        submitted_at=event.submitted_at.isoformat() if event.submitted_at else None,
        processed_at=now_iso(),
        cached=cached,
        timings_ms={k: round(v * 1000, 3) for k, v in timings.items()},
    )
