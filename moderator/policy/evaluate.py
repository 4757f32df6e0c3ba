"""Measure a policy against labeled images: per-concept precision/recall and a threshold advice.

Used by `moderator policy test`. An image is *predicted* positive for a concept exactly when the
scorer would call it a match (prompt score ≥ threshold and not suppressed by a counter-prompt,
or a reference example matched); surfaces and shadow mode are ignored here, since the point is
to judge each concept on its own, shadow ones included.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from moderator.errors import ConfigError
from moderator.policy.score import CompiledPolicy, ScoreMatrix

NEGATIVE_LABEL = "none"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class LabeledImage:
    path: Path
    concepts: frozenset[str]
    """Concepts the image shows; empty for a negative (`none`) image."""


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    precision: float
    recall: float


@dataclass(frozen=True)
class ConceptReport:
    """One concept's quality on the labeled set, at its threshold and at the suggested one."""

    concept_id: str
    threshold: float
    positives: int
    negatives: int
    tp: int
    fp: int
    fn: int
    precision: float | None
    recall: float | None
    f1: float | None
    target_threshold: float | None
    """Lowest threshold whose precision reaches the target (None: no threshold does)."""
    target_precision: float | None
    target_recall: float | None
    curve: tuple[CurvePoint, ...]
    always_matched: int
    """Positive predictions no threshold can remove (reference-example matches)."""

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "curve"}
        out["curve"] = [[p.threshold, p.precision, p.recall] for p in self.curve]
        return out


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def read_labels(source: Path) -> list[LabeledImage]:
    """Labels from a CSV of `path,concept_id` rows or a folder of `<concept_id>/` subfolders.

    CSV paths are relative to the CSV's folder; an image may have several rows (multi-label);
    `none` marks a negative. Raises ConfigError listing every bad row.
    """
    if source.is_dir():
        return _labels_from_folder(source)
    if not source.is_file():
        raise ConfigError(f"labels {source}: no such file or folder")
    labels: dict[Path, set[str]] = {}
    problems = []
    with source.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            cells = [c.strip() for c in row]
            if not cells or not cells[0] or cells[0].startswith("#"):
                continue
            if number == 1 and [c.lower() for c in cells] == ["path", "concept_id"]:
                continue
            if len(cells) != 2:
                problems.append(f"{source}:{number}: expected `path,concept_id`, got {row}")
                continue
            path = (source.parent / cells[0]).resolve()
            if not path.is_file():
                problems.append(f"{source}:{number}: image {cells[0]} not found")
                continue
            concepts = labels.setdefault(path, set())
            if cells[1].lower() != NEGATIVE_LABEL:
                concepts.add(cells[1])
    if problems:
        raise ConfigError("bad labels:\n  " + "\n  ".join(problems))
    return [LabeledImage(p, frozenset(c)) for p, c in labels.items()]


def _labels_from_folder(root: Path) -> list[LabeledImage]:
    out: list[LabeledImage] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        negative = folder.name.lower() == NEGATIVE_LABEL
        concepts: frozenset[str] = frozenset() if negative else frozenset([folder.name])
        out.extend(LabeledImage(p, concepts) for p in sorted(folder.rglob("*")) if is_image(p))
    if not out:
        raise ConfigError(
            f"labels {root}: no images in subfolders (expected {root}/<concept_id>/*.jpg, "
            f"{root}/{NEGATIVE_LABEL}/*.jpg)"
        )
    return out


def unknown_labels(policy: CompiledPolicy, labels: Sequence[LabeledImage]) -> list[str]:
    known = set(policy.concept_ids)
    return sorted({c for item in labels for c in item.concepts} - known)


def decision_scores(policy: CompiledPolicy, m: ScoreMatrix) -> NDArray[np.float32]:
    """(b, c) value compared with the threshold: +inf for example matches (no threshold undoes
    them), -inf where a counter-prompt suppresses the concept (no threshold rescues it)."""
    with np.errstate(invalid="ignore"):
        example_hit = m.example >= policy.example_thresholds
        suppressed = ~policy.relative & ~np.isnan(m.counter) & (m.counter >= m.cosine)
    out = np.where(suppressed, -np.inf, m.score)
    return np.where(example_hit, np.inf, out).astype(np.float32)


def evaluate(
    policy: CompiledPolicy,
    m: ScoreMatrix,
    labels: Sequence[frozenset[str]],
    target_precision: float = 0.9,
) -> list[ConceptReport]:
    """Per-concept report; `labels[i]` are image i's concepts (rows of `m`)."""
    values = decision_scores(policy, m)
    reports = []
    for j, concept in enumerate(policy.concepts):
        truth = np.array([concept.id in item for item in labels], dtype=np.bool_)
        reports.append(
            _report(concept.id, concept.threshold, values[:, j], truth, target_precision)
        )
    return reports


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _report(
    concept_id: str,
    threshold: float,
    values: NDArray[np.float32],
    truth: NDArray[np.bool_],
    target: float,
) -> ConceptReport:
    predicted = values >= np.float32(threshold)
    tp = int((predicted & truth).sum())
    fp = int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else None
    )
    curve = _curve(values, truth)
    best = max(
        (p for p in curve if p.precision >= target),
        key=lambda p: (p.recall, -p.threshold),
        default=None,
    )
    return ConceptReport(
        concept_id=concept_id,
        threshold=threshold,
        positives=int(truth.sum()),
        negatives=int((~truth).sum()),
        tp=tp,
        fp=fp,
        fn=fn,
        precision=precision,
        recall=recall,
        f1=f1,
        target_threshold=None if best is None or not truth.any() else best.threshold,
        target_precision=None if best is None or not truth.any() else best.precision,
        target_recall=None if best is None or not truth.any() else best.recall,
        curve=curve,
        always_matched=int(np.isposinf(values).sum()),
    )


def _curve(values: NDArray[np.float32], truth: NDArray[np.bool_]) -> tuple[CurvePoint, ...]:
    """Precision/recall at every distinct finite score used as the threshold, highest first."""
    positives = int(truth.sum())
    order = np.argsort(-values, kind="stable")
    ranked, hits = values[order], truth[order]
    tp = np.cumsum(hits)
    points = []
    for k in range(len(ranked)):
        last_of_tie = k + 1 == len(ranked) or ranked[k + 1] != ranked[k]
        if not last_of_tie or not np.isfinite(ranked[k]):
            continue
        predicted = k + 1
        points.append(
            CurvePoint(
                threshold=float(ranked[k]),
                precision=float(tp[k] / predicted),
                recall=float(tp[k] / positives) if positives else 0.0,
            )
        )
    return tuple(points)
