"""The verdict record: one JSON object per event, the same from `serve` and `moderator score`.

`Verdict` is the one definition of the record: `build_verdict` makes it, `Verdict.wire()` is
the JSON that goes on the verdict topic, and deploy/schemas/verdict.schema.json is generated
from it (`python -m moderator.commands.schemas deploy/schemas`). Its concept entries are
`ConceptScore`s, the scoring's own results. Fields: id, decision, matches, near, shadow, top,
policy {name, version}, model {id, sha256}, image {sha256}, surface, source, metadata,
submitted_at, processed_at, cached, timings_ms, and `truncated` only when the echoed fields
had to be dropped to fit the topic.

`Verdict.encoded()` writes the same bytes as `encode_json(verdict.wire())` without building
the dict first: one verdict's JSON is written on the event loop for every event, and
pydantic's dump plus the encoder's second walk cost more than the rest of the verdict. The
tests hold the two byte-identical.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from json.encoder import encode_basestring_ascii as _quote
from math import isfinite
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from moderator.kafka.publish import encode_json
from moderator.pipeline.events import ImageEvent, now_iso
from moderator.policy.score import ConceptScore, Outcome
from moderator.types import Decision

_float = float.__repr__  # what the JSON encoder writes for a float (a subclass's repr aside)


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

    def encoded(self) -> bytes:
        """The verdict topic's value: `encode_json(self.wire())`, byte for byte, written
        directly (raises ValueError on NaN or Inf, as the encoder does)."""
        rest: dict[str, Any] = {
            "policy": {"name": self.policy.name, "version": self.policy.version},
            "model": {"id": self.model.id, "sha256": self.model.sha256},
            "image": {"sha256": self.image.sha256},
            "surface": self.surface,
            "source": self.source,
            "metadata": self.metadata,
            "submitted_at": self.submitted_at,
            "processed_at": self.processed_at,
            "cached": self.cached,
            "timings_ms": self.timings_ms,
        }
        if self.truncated is not None:
            rest["truncated"] = [field.value for field in self.truncated]
        try:
            tail = encode_json(rest)
        except TypeError:  # metadata holding what only pydantic knows how to write
            return encode_json(self.wire())
        head = "".join(
            (
                '{"id":',
                _quote(self.id),
                ',"decision":',
                _quote(self.decision.value),
                ',"matches":[',
                ",".join(map(_concept, self.matches)),
                '],"near":[',
                ",".join(map(_concept, self.near)),
                '],"shadow":[',
                ",".join(map(_concept, self.shadow)),
                '],"top":[',
                ",".join(map(_concept, self.top)),
                "],",
            )
        )
        return head.encode() + tail[1:]

    def without_echoed(self) -> Verdict:
        """A copy with the echoed fields set to null and named in `truncated`: what is sent
        when the full verdict is over the topic's limit."""
        dropped = tuple(f for f in Echoed if getattr(self, f.value) is not None)
        return self.model_copy(update={f.value: None for f in dropped} | {"truncated": dropped})


def _concept(entry: ConceptScore) -> str:
    """`encode_json(entry.wire())`, written directly: fields in `ConceptScore`'s order, `id`
    by its alias, figures rounded as `Figure` rounds them and written as the encoder writes
    floats (the enums are `str`s, quoted as they are)."""
    score, threshold, margin, counter = (
        entry.score,
        entry.threshold,
        entry.margin,
        entry.counter_score,
    )
    if not (
        isfinite(score)
        and isfinite(threshold)
        and isfinite(margin)
        and (counter is None or isfinite(counter))
    ):
        return encode_json(entry.wire()).decode()  # the encoder refuses it in its own words
    return (
        f'{{"id":{_quote(entry.concept_id)},"category":{_quote(entry.category)},'
        f'"severity":{_quote(entry.severity)},"action":{_quote(entry.action)},'
        f'"mode":{_quote(entry.mode)},"status":{_quote(entry.status)},'
        f'"score":{_figure(score)},"threshold":{_figure(threshold)},"margin":{_figure(margin)},'
        f'"counter_score":{"null" if counter is None else _figure(counter)}}}'
    )


def _figure(value: float) -> str:
    """`float.__repr__(round(value, 4))`: a finite `Figure` as pydantic rounds it and the
    encoder writes it, in half the time for the figures scores are. Both roundings are the
    correctly rounded four-decimal text; below 1e9 floats are closer together than 1e-4, so
    no shorter text reads back as that float, and `repr` (fixed notation there) writes it
    with its trailing zeros cut."""
    if -1e9 < value < 1e9:
        text = f"{value:.4f}".rstrip("0")
        return text + "0" if text[-1] == "." else text
    return _float(round(value, 4))


@lru_cache(maxsize=64)
def _policy_ref(name: str, version: str) -> PolicyRef:
    return PolicyRef(name=name, version=version)


@lru_cache(maxsize=16)
def _model_ref(model_id: str, sha256: str) -> ModelRef:
    return ModelRef(id=model_id, sha256=sha256)


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
        policy=_policy_ref(policy.name, policy.version),
        model=_model_ref(model.model_id, model.sha256),
        image=ImageRef(sha256=image_sha),
        surface=event.surface,
        source=event.source,
        metadata=event.metadata,
        submitted_at=event.submitted_at.isoformat() if event.submitted_at else None,
        processed_at=now_iso(),
        cached=cached,
        timings_ms={k: round(v * 1000, 3) for k, v in timings.items()},
    )
