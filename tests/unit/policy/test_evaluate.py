"""`policy test` arithmetic: labels in, precision/recall and a threshold advice out."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEncoder, make_png

from moderator.errors import ConfigError
from moderator.policy.compile import compile_policy
from moderator.policy.evaluate import evaluate, read_labels, unknown_labels
from moderator.policy.load import load_policies
from moderator.policy.score import CompiledPolicy

DIM = 4
ENCODER = FakeEncoder(DIM, vectors={"gun": np.eye(DIM)[0], "toy": np.eye(DIM)[1]})


def vector(gun: float, toy: float = 0.0) -> np.ndarray:
    return np.array([gun, toy, math.sqrt(1 - gun * gun - toy * toy), 0], dtype=np.float32)


async def policy(tmp_path: Path) -> CompiledPolicy:
    (tmp_path / "p.yaml").write_text(
        textwrap.dedent(
            """\
            version: 1
            name: t
            concepts:
              - id: w.gun
                category: weapons
                prompts: [gun]
                counter_prompts: [toy]
                threshold: 0.3
            """
        )
    )
    return await compile_policy(load_policies(tmp_path / "p.yaml"), ENCODER)


async def test_precision_recall_and_the_threshold_for_a_target_precision(tmp_path: Path) -> None:
    compiled = await policy(tmp_path)
    cosines = [0.5, 0.4, 0.35, 0.32, 0.2, 0.1]
    truth = [True, True, False, True, True, False]
    m = compiled.scores(np.stack([vector(c) for c in cosines]))
    (report,) = evaluate(compiled, m, [frozenset({"w.gun"} if t else ()) for t in truth], 0.9)
    assert (report.tp, report.fp, report.fn) == (3, 1, 1)
    assert report.precision == pytest.approx(0.75)
    assert report.recall == pytest.approx(0.75)
    assert report.f1 == pytest.approx(0.75)
    assert report.target_threshold == pytest.approx(0.4, abs=1e-6)
    assert (report.target_precision, report.target_recall) == (1.0, 0.5)
    assert [round(p.threshold, 2) for p in report.curve] == cosines
    assert [round(p.precision, 3) for p in report.curve] == [1.0, 1.0, 0.667, 0.75, 0.8, 0.667]


async def test_suppressed_images_never_count_as_predicted(tmp_path: Path) -> None:
    compiled = await policy(tmp_path)
    m = compiled.scores(np.stack([vector(0.5, toy=0.6), vector(0.4)]))
    (report,) = evaluate(compiled, m, [frozenset({"w.gun"}), frozenset({"w.gun"})])
    assert (report.tp, report.fn) == (1, 1)
    assert len(report.curve) == 1  # the suppressed image has no threshold at which it matches


async def test_no_positives_gives_no_recall_and_no_advice(tmp_path: Path) -> None:
    compiled = await policy(tmp_path)
    m = compiled.scores(np.stack([vector(0.5), vector(0.1)]))
    (report,) = evaluate(compiled, m, [frozenset(), frozenset()])
    assert (report.recall, report.target_threshold, report.fp) == (None, None, 1)


def test_csv_labels_allow_several_rows_per_image_and_none(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(make_png(None))
    csv = tmp_path / "labels.csv"
    csv.write_text("path,concept_id\na.png,w.gun\na.png,d.pills\n# comment\n\nb.png,none\n")
    labels = {item.path.name: item.concepts for item in read_labels(csv)}
    assert labels == {"a.png": frozenset({"w.gun", "d.pills"}), "b.png": frozenset()}


def test_csv_label_mistakes_are_listed_with_line_numbers(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("missing.png,w.gun\nonly-one-column\n")
    with pytest.raises(ConfigError) as info:
        read_labels(csv)
    assert f"{csv}:1: image missing.png not found" in str(info.value)
    assert f"{csv}:2: expected `path,concept_id`" in str(info.value)


def test_folder_labels_use_subfolder_names(tmp_path: Path) -> None:
    for folder in ("w.gun", "none"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "1.png").write_bytes(make_png(None))
    (tmp_path / "none" / "notes.txt").write_text("not an image")
    labels = sorted((i.path.parent.name, i.concepts) for i in read_labels(tmp_path))
    assert labels == [("none", frozenset()), ("w.gun", frozenset({"w.gun"}))]


async def test_labels_naming_unknown_concepts_are_found(tmp_path: Path) -> None:
    compiled = await policy(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "1.png").write_bytes(make_png(None))
    assert unknown_labels(compiled, read_labels(tmp_path)) == ["x"]
