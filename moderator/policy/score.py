"""The scoring math, written once: image embeddings in, one Outcome per image out.

A compiled policy is a handful of arrays, so a batch costs two matrix products (images × texts,
images × reference images), a few gathers over padded index tables and elementwise compares.
policies/README.md states the same rules in words; keep the two in step.

Per concept c with prompts P, counter-prompts Q, benign texts B (cosines s(t) with image x):

    absolute   score = max_{p∈P} s(p)
               suppressed when Q is non-empty and max_{q∈Q} s(q) ≥ score
    relative   score = Σ_{p∈P} e^{λ s(p)} / Σ_{t∈P∪Q∪B} e^{λ s(t)}     (λ: the model's logit scale)
    match      score ≥ threshold and not suppressed
    near       threshold − review_band ≤ score < threshold, not suppressed, action flag/review
    example    max_{e∈examples} cos(x, e) ≥ example_threshold   (a match; counters do not apply)

Decision over the enforced concepts that apply to the image's surface (all of them when the
event has no surface or one no concept names; surfaces compare case-insensitively): flag if a
`flag` concept matches; else review if a `review` concept matches or any concept is near; else
allow.
Shadow concepts are reported but never decide; `log` concepts are reported and allow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Annotated, Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from moderator.policy.load import ConceptSpec
from moderator.policy.schema import Action, Mode, Scoring, Severity
from moderator.types import Decision, Embeddings

Index = NDArray[np.intp]
Mask = NDArray[np.bool_]
Floats = NDArray[np.float32]


class Status(StrEnum):
    """What a concept made of one image."""

    MATCH = "match"  # best prompt reached the threshold
    EXAMPLE = "example"  # a reference image is near-identical
    NEAR = "near"  # inside the review band
    SUPPRESSED = "suppressed"  # would have matched or been near, but a counter-prompt won
    BELOW = "below"

    @property
    def is_match(self) -> bool:
        return self in (Status.MATCH, Status.EXAMPLE)


class _Code(IntEnum):
    """Status as small ints inside the arrays; ordered so `>= MATCH` means 'is a match'."""

    BELOW = 0
    SUPPRESSED = 1
    NEAR = 2
    MATCH = 3
    EXAMPLE = 4


_STATUS = {
    _Code.BELOW: Status.BELOW,
    _Code.SUPPRESSED: Status.SUPPRESSED,
    _Code.NEAR: Status.NEAR,
    _Code.MATCH: Status.MATCH,
    _Code.EXAMPLE: Status.EXAMPLE,
}
# By the code's int value: `_Code(n)` costs an Enum lookup per concept reported, per event.
_STATUS_OF_INT = tuple(_STATUS[code] for code in sorted(_Code))


def _round4(value: float) -> float:
    return round(value, 4)


Figure = Annotated[float, PlainSerializer(_round4, return_type=float, when_used="json")]
"""A score, threshold or margin: full precision in Python, four decimals in JSON (more would be
noise from float32 arithmetic, and longer verdicts)."""


class ConceptScore(BaseModel):
    """One concept's result for one image, as scoring returns it and a verdict carries it in
    `matches`, `near`, `shadow` and `top`; score and threshold are the reference image's for
    an `example` match."""

    # The verdict's entries are these objects dumped, so the published JSON and the scoring
    # cannot disagree: `concept_id` goes out as `id`, figures rounded (see `Figure`).
    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)
    concept_id: str = Field(serialization_alias="id")
    category: str
    severity: Severity
    action: Action
    mode: Mode
    status: Status
    score: Figure
    threshold: Figure
    margin: Figure
    counter_score: Figure | None
    """Best counter-prompt cosine (None when the concept has none)."""

    def wire(self) -> dict[str, Any]:
        """The JSON object a verdict carries for this concept."""
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class Outcome:
    """An image's decision and the evidence for it."""

    decision: Decision
    matches: tuple[ConceptScore, ...]
    """Enforced concepts that matched (`log` ones included), strongest action first, then
    severity, then margin; `matches[0]` decides when the decision is flag."""
    near: tuple[ConceptScore, ...]
    """Enforced concepts inside their review band."""
    shadow: tuple[ConceptScore, ...]
    """Shadow concepts that would have matched or been near."""
    top: tuple[ConceptScore, ...]
    """The applicable concepts with the largest margins, whatever their status or mode."""
    policy_version: str

    @property
    def cause(self) -> ConceptScore | None:
        """The concept behind a flag or review decision (None for allow)."""
        if self.decision is Decision.ALLOW:
            return None
        # A match outranks a near miss; each group is already sorted strongest first.
        flags = [m for m in self.matches if m.action is Action.FLAG]
        reviews = [m for m in self.matches if m.action is Action.REVIEW]
        group = flags or reviews or list(self.near)
        return group[0] if group else None


def _strength(s: ConceptScore) -> tuple[int, int, float]:
    """Sort key, strongest first: action, then severity, then margin."""
    return (-s.action.rank, -s.severity.rank, -s.margin)


@dataclass(frozen=True, eq=False)
class ScoreMatrix:
    """Raw per-(image, concept) results, before decisions; `policy explain/test` read these."""

    cosine: Floats
    """Best prompt cosine (b, c), for relative concepts too."""
    score: Floats
    """The concept's score (b, c): `cosine` for absolute, the probability for relative."""
    counter: Floats
    """Best counter-prompt cosine (b, c); NaN where a concept has none."""
    example: Floats
    """Best reference-image cosine (b, c); NaN where a concept has none."""
    status: NDArray[np.int8]
    best_prompt: Index
    """Position in the concept's `prompts` of its best prompt (b, c)."""
    best_counter: Index

    def status_of(self, image: int, concept: int) -> Status:
        return _STATUS[_Code(int(self.status[image, concept]))]


def _table(rows: Sequence[Sequence[int]]) -> tuple[Index, Mask]:
    """Ragged index lists → padded (n, width) table plus validity mask; width ≥ 1 so that
    reductions over the last axis are defined even when every list is empty."""
    width = max([1, *(len(r) for r in rows)])
    index = np.zeros((len(rows), width), dtype=np.intp)
    mask = np.zeros((len(rows), width), dtype=np.bool_)
    for i, row in enumerate(rows):
        index[i, : len(row)] = row
        mask[i, : len(row)] = True
    return _frozen(index), _frozen(mask)


def _frozen(array: NDArray[Any]) -> NDArray[Any]:
    array.flags.writeable = False
    return array


def _gather(sims: Floats, index: Index, mask: Mask) -> Floats:
    """sims (b, n) → (b, c, width), -inf in padding."""
    return np.where(mask[None], sims[:, index], np.float32(-np.inf)).astype(np.float32)


def _empty_matrix(n: int) -> ScoreMatrix:
    floats = np.zeros((n, 0), dtype=np.float32)
    index = np.zeros((n, 0), dtype=np.intp)
    return ScoreMatrix(
        cosine=floats,
        score=floats,
        counter=floats,
        example=floats,
        status=np.zeros((n, 0), dtype=np.int8),
        best_prompt=index,
        best_counter=index,
    )


@dataclass(frozen=True, eq=False)
class CompiledPolicy:
    """An immutable, ready-to-score policy. Build with `compile_policy` (compile.py)."""

    version: str
    name: str
    model_sha256: str
    logit_scale: float
    concepts: tuple[ConceptSpec, ...]
    texts: tuple[str, ...]
    text_embeddings: Embeddings
    example_embeddings: Embeddings
    prompt_index: Index
    prompt_mask: Mask
    counter_index: Index
    counter_mask: Mask
    benign_index: Index
    benign_mask: Mask
    example_index: Index
    example_mask: Mask
    thresholds: Floats
    review_bands: Floats
    example_thresholds: Floats
    relative: Mask
    shadow: Mask
    decides: Mask
    """Action is flag or review (not log): matches and near misses change the decision."""
    flags: Mask
    restricted: Mask
    """Concept lists `surfaces`."""
    surface_masks: Mapping[str, Mask] = field(default_factory=dict)

    @classmethod
    def assemble(
        cls,
        *,
        version: str,
        name: str,
        model_sha256: str,
        logit_scale: float,
        concepts: Sequence[ConceptSpec],
        texts: Sequence[str],
        text_embeddings: Embeddings,
        example_embeddings: Embeddings,
        example_rows: Sequence[Sequence[int]],
    ) -> CompiledPolicy:
        """Lay out the arrays; `example_rows[i]` are concept i's rows of `example_embeddings`."""
        row = {t: i for i, t in enumerate(texts)}
        prompt_index, prompt_mask = _table([[row[t] for t in c.prompts] for c in concepts])
        counter_index, counter_mask = _table(
            [[row[t] for t in c.counter_prompts] for c in concepts]
        )
        benign_index, benign_mask = _table([[row[t] for t in c.benign] for c in concepts])
        example_index, example_mask = _table(example_rows)
        named = [
            None if c.surfaces is None else {s.casefold() for s in c.surfaces} for c in concepts
        ]
        surfaces = sorted({s for own in named for s in own or ()})
        surface_masks = {
            s: _frozen(np.array([own is None or s in own for own in named], dtype=np.bool_))
            for s in surfaces
        }

        def floats(values: list[float]) -> Floats:
            return _frozen(np.array(values, dtype=np.float32))

        def bools(values: list[bool]) -> Mask:
            return _frozen(np.array(values, dtype=np.bool_))

        return cls(
            version=version,
            name=name,
            model_sha256=model_sha256,
            logit_scale=float(logit_scale),
            concepts=tuple(concepts),
            texts=tuple(texts),
            text_embeddings=_frozen(np.ascontiguousarray(text_embeddings, dtype=np.float32)),
            example_embeddings=_frozen(np.ascontiguousarray(example_embeddings, dtype=np.float32)),
            prompt_index=prompt_index,
            prompt_mask=prompt_mask,
            counter_index=counter_index,
            counter_mask=counter_mask,
            benign_index=benign_index,
            benign_mask=benign_mask,
            example_index=example_index,
            example_mask=example_mask,
            thresholds=floats([c.threshold for c in concepts]),
            review_bands=floats([c.review_band for c in concepts]),
            example_thresholds=floats([c.example_threshold for c in concepts]),
            relative=bools([c.scoring is Scoring.RELATIVE for c in concepts]),
            shadow=bools([c.mode is Mode.SHADOW for c in concepts]),
            decides=bools([c.action is not Action.LOG for c in concepts]),
            flags=bools([c.action is Action.FLAG for c in concepts]),
            restricted=bools([c.surfaces is not None for c in concepts]),
            surface_masks=surface_masks,
        )

    @property
    def concept_ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.concepts)

    @property
    def surfaces(self) -> tuple[str, ...]:
        """Every surface a concept names, case-folded and sorted."""
        return tuple(self.surface_masks)

    def knows_surface(self, surface: str) -> bool:
        """Whether some concept names `surface` (case-insensitively)."""
        return surface.casefold() in self.surface_masks

    def applicable(self, surfaces: Sequence[str | None]) -> Mask:
        """(b, c): concept applies to the event's surface, compared case-insensitively.

        An event without a surface is checked by every concept (fail closed: it lost the one
        field that could narrow them). An event from a surface no concept names is checked by
        the concepts without `surfaces`: a concept limited to surfaces says where it applies,
        and a surface it does not list is not one of them. The service counts such events
        (`moderator_unknown_surfaces_total`), so a producer's typo shows up on a dashboard.
        """
        everywhere = np.ones(len(self.concepts), dtype=np.bool_)
        unrestricted = ~self.restricted
        masks = self.surface_masks
        rows = [
            everywhere if surface is None else masks.get(surface.casefold(), unrestricted)
            for surface in surfaces
        ]
        return np.array(rows, dtype=np.bool_).reshape(len(surfaces), len(self.concepts))

    def scores(self, image_embeddings: Embeddings) -> ScoreMatrix:
        """Every concept's raw result for every image; no surfaces, modes or decisions."""
        images = np.asarray(image_embeddings, dtype=np.float32)
        if not self.concepts:  # an empty policy scores nothing (and knows no dimension)
            return _empty_matrix(len(images))
        if images.ndim != 2 or images.shape[1] != self.text_embeddings.shape[1]:
            raise ValueError(
                f"embeddings of shape {images.shape} do not fit this policy's model "
                f"(dimension {self.text_embeddings.shape[1]})"
            )
        sims = images @ self.text_embeddings.T  # (b, n_texts)
        prompt = _gather(sims, self.prompt_index, self.prompt_mask)
        counter = _gather(sims, self.counter_index, self.counter_mask)
        cosine = prompt.max(axis=-1)
        counter_best = counter.max(axis=-1)
        score = cosine.copy()
        if self.relative.any():
            cols = np.flatnonzero(self.relative)
            score[:, cols] = self._relative(sims, cols)
        has_counter = self.counter_mask.any(axis=-1)
        suppressed = ~self.relative & has_counter & (counter_best >= cosine)
        lower = self.thresholds - self.review_bands
        text_match = (score >= self.thresholds) & ~suppressed
        near = (score >= lower) & (score < self.thresholds) & ~suppressed & self.decides
        if len(self.example_embeddings):
            example = _gather(
                images @ self.example_embeddings.T, self.example_index, self.example_mask
            ).max(axis=-1)
        else:
            example = np.full_like(cosine, -np.inf)
        example_match = example >= self.example_thresholds
        status = np.full(score.shape, _Code.BELOW, dtype=np.int8)
        status[suppressed & (score >= lower)] = _Code.SUPPRESSED
        status[near] = _Code.NEAR
        status[example_match] = _Code.EXAMPLE
        status[text_match] = _Code.MATCH
        return ScoreMatrix(
            cosine=cosine,
            score=score,
            counter=np.where(np.isfinite(counter_best), counter_best, np.nan).astype(np.float32),
            example=np.where(np.isfinite(example), example, np.nan).astype(np.float32),
            status=status,
            best_prompt=prompt.argmax(axis=-1),
            best_counter=counter.argmax(axis=-1),
        )

    def _relative(self, sims: Floats, cols: Index) -> Floats:
        """Probability mass on the concept's own prompts under a softmax at the model's scale."""
        scale = np.float32(self.logit_scale)
        mine = _gather(sims, self.prompt_index[cols], self.prompt_mask[cols]) * scale
        others = (
            np.concatenate(
                [
                    _gather(sims, self.counter_index[cols], self.counter_mask[cols]),
                    _gather(sims, self.benign_index[cols], self.benign_mask[cols]),
                ],
                axis=-1,
            )
            * scale
        )
        top = np.maximum(mine.max(axis=-1), others.max(axis=-1))[..., None]
        own = np.exp(mine - top).sum(axis=-1)
        rest = np.exp(others - top).sum(axis=-1)
        return np.asarray(own / (own + rest), dtype=np.float32)

    def score(
        self,
        image_embeddings: Embeddings,
        surfaces: Sequence[str | None],
        *,
        top_k: int = 5,
    ) -> list[Outcome]:
        """One Outcome per row of `image_embeddings` (`surfaces[i]` is image i's surface)."""
        if len(surfaces) != len(image_embeddings):
            raise ValueError(f"{len(image_embeddings)} embeddings but {len(surfaces)} surfaces")
        if not len(surfaces):
            return []
        m = self.scores(image_embeddings)
        applies = self.applicable(surfaces)
        enforced = applies & ~self.shadow
        is_match = m.status >= _Code.MATCH
        is_near = m.status == _Code.NEAR
        flag: list[bool] = np.any(enforced & is_match & self.flags, axis=1).tolist()
        review: list[bool] = np.any(
            enforced & ((is_match & self.decides) | is_near), axis=1
        ).tolist()
        by_example = m.status == _Code.EXAMPLE
        reported = np.where(by_example, m.example, m.score)
        margin = reported - np.where(by_example, self.example_thresholds, self.thresholds)
        ranked = np.where(applies, margin, -np.inf)
        top = np.argsort(-ranked, axis=1, kind="stable")[:, :top_k]
        top_ok = np.take_along_axis(applies, top, axis=1)

        # From here on plain Python: per-element numpy access costs microseconds each, so the
        # arrays become lists once and the (few) reported pairs are looked up in those.
        codes, scores_, margins = m.status.tolist(), reported.tolist(), margin.tolist()
        counters, examples = m.counter.tolist(), by_example.tolist()
        made: dict[tuple[int, int], ConceptScore] = {}

        def make(i: int, j: int) -> ConceptScore:
            if (i, j) not in made:
                c, counter = self.concepts[j], counters[i][j]
                made[(i, j)] = ConceptScore(
                    concept_id=c.id,
                    category=c.category,
                    severity=c.severity,
                    action=c.action,
                    mode=c.mode,
                    status=_STATUS_OF_INT[codes[i][j]],
                    score=scores_[i][j],
                    # From the spec, not the float32 arrays, so 0.28 reads as 0.28.
                    threshold=c.example_threshold if examples[i][j] else c.threshold,
                    margin=margins[i][j],
                    counter_score=None if math.isnan(counter) else counter,
                )
            return made[(i, j)]

        def rows(mask: Mask) -> list[list[ConceptScore]]:
            out: list[list[ConceptScore]] = [[] for _ in surfaces]
            for i, j in np.argwhere(mask).tolist():
                out[i].append(make(i, j))
            return [sorted(row, key=_strength) for row in out]

        matches = rows(enforced & is_match)
        near = rows(enforced & is_near)
        shadow = rows(applies & self.shadow & (is_match | is_near))
        outcomes = []
        for i, (cols, ok) in enumerate(zip(top.tolist(), top_ok.tolist(), strict=True)):
            decision = (
                Decision.FLAG if flag[i] else Decision.REVIEW if review[i] else Decision.ALLOW
            )
            outcomes.append(
                Outcome(
                    decision=decision,
                    matches=tuple(matches[i]),
                    near=tuple(near[i]),
                    shadow=tuple(shadow[i]),
                    top=tuple(make(i, j) for j, keep in zip(cols, ok, strict=True) if keep),
                    policy_version=self.version,
                )
            )
        return outcomes
