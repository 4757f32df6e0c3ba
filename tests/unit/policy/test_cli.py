"""`moderator policy …` through typer's CliRunner, with the fake encoder as the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import FakeEncoder, make_png
from PIL import Image
from typer.testing import CliRunner

from moderator.policy.cli import make_app
from moderator.policy.schema import render_json_schema

POLICY = """\
version: 1
name: test
concepts:
  - id: weapons.firearm
    category: weapons
    severity: high
    prompts: [a photo of a handgun, a person holding a rifle]
    counter_prompts: [a toy water gun]
    threshold: 0.3
    review_band: 0.05
"""

runner = CliRunner()
app = make_app(lambda model: FakeEncoder())


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def labeled(tmp_path: Path) -> Path:
    root = tmp_path / "labels"
    for folder, caption in (("weapons.firearm", "a photo of a handgun"), ("none", None)):
        (root / folder).mkdir(parents=True)
        for i in range(6):
            (root / folder / f"{i}.png").write_bytes(make_png(caption, seed=i + 10 * len(folder)))
    return root


@pytest.fixture(autouse=True)
def no_configured_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODERATOR_MODEL__PATH", raising=False)


def test_validate_ok(policy: Path) -> None:
    result = runner.invoke(app, ["validate", str(policy)])
    assert result.exit_code == 0, result.output
    assert f"ok: {policy} (1 concepts, test)" in result.output
    assert "note: prompt lengths counted with OpenAI CLIP's tokenizer" in result.output


def test_validate_without_a_model_refuses_a_prompt_clip_cannot_read(policy: Path) -> None:
    long = ", ".join(["a photo of a handgun"] * 20) + " today"  # 142 tokens with the markers
    policy.write_text(POLICY.replace("a person holding a rifle", f'"{long}"'))
    result = runner.invoke(app, ["validate", str(policy)])
    assert result.exit_code == 1
    assert (
        f"{policy}:7: concepts[weapons.firearm].prompts[1]: 142 tokens, CLIP reads at most 77 "
        "(shorten it; moderator never cuts prompts silently)"
    ) in result.output.splitlines()
    assert "ok:" not in result.output


def test_validate_counts_with_the_configured_models_tokenizer(
    policy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def load_tokens(spec: str) -> FakeEncoder:
        asked.append(spec)
        return FakeEncoder(context_length=6)

    monkeypatch.setenv("MODERATOR_MODEL__PATH", "/models/b32")
    result = runner.invoke(make_app(load_tokens=load_tokens), ["validate", str(policy)])
    assert asked == ["/models/b32"]
    assert result.exit_code == 1
    assert "prompts[1]: 7 tokens, the model reads at most 6" in result.output
    assert "counted with the tokenizer of /models/b32 ($MODERATOR_MODEL__PATH)" in result.output


def test_validate_reads_the_demo_models_tokenizer_from_the_environment(
    policy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODERATOR_MODEL__PATH", "demo")  # 32 tokens, one a word
    policy.write_text(POLICY.replace("a person holding a rifle", " ".join(["red"] * 31)))
    result = runner.invoke(app, ["validate", str(policy)])
    assert result.exit_code == 1
    assert "prompts[1]: 33 tokens, the model demo reads at most 32" in result.output


def test_validate_with_an_unusable_configured_model_says_why(
    policy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODERATOR_MODEL__PATH", str(tmp_path / "missing"))
    result = runner.invoke(app, ["validate", str(policy)])
    assert result.exit_code == 1
    assert f"error: model directory {tmp_path / 'missing'} does not exist" in result.output


def test_validate_lists_every_problem_and_exits_1(policy: Path, tmp_path: Path) -> None:
    policy.write_text(
        POLICY.replace("threshold: 0.3", "threshold: 3").replace("severity", "sevrity")
    )
    good = tmp_path / "good.yaml"
    good.write_text(POLICY)
    result = runner.invoke(app, ["validate", str(policy), str(good)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert (
        f"{policy}:6: concepts[weapons.firearm].sevrity: unknown key (did you mean `severity`?)"
        in lines
    )
    assert any(
        line.startswith(f"{policy}:9: concepts[weapons.firearm].threshold: 3.0") for line in lines
    )
    assert f"ok: {good} (1 concepts, test)" in lines


def test_validate_with_a_model_counts_tokens_exactly(policy: Path) -> None:
    short = make_app(lambda model: FakeEncoder(context_length=6))
    result = runner.invoke(short, ["validate", "--model", "x", str(policy)])
    assert result.exit_code == 1
    assert "prompts[1]: 7 tokens, the model reads at most 6" in result.output
    assert "estimated" not in result.output


def test_explain_shows_scores_and_the_reason(policy: Path, tmp_path: Path) -> None:
    image = tmp_path / "gun.png"
    image.write_bytes(make_png("a photo of a handgun", seed=1))
    result = runner.invoke(app, ["explain", "-m", "fake", "-p", str(policy), str(image)])
    assert result.exit_code == 0, result.output
    assert "decision  FLAG: weapons.firearm match, score 0." in result.output
    header = next(line for line in result.output.splitlines() if line.startswith("concept"))
    for column in ("score", "thresh", "margin", "best counter-prompt"):
        assert column in header
    row = next(line for line in result.output.splitlines() if line.startswith("weapons.firearm"))
    assert "a photo of a handgun" in row
    assert "a toy water gun" in row


def test_explain_marks_concepts_outside_the_surface(policy: Path, tmp_path: Path) -> None:
    other = "  - id: drugs.pills\n    category: drugs\n    prompts: [pills]\n    surfaces: [post]\n"
    policy.write_text(POLICY + "    surfaces: [profile_photo]\n" + other)
    image = tmp_path / "gun.png"
    image.write_bytes(make_png("a photo of a handgun", seed=1))
    args = ["explain", "-m", "fake", "-p", str(policy), "--surface", "Post", str(image)]
    result = runner.invoke(app, args)
    assert "decision  ALLOW" in result.output
    assert "n/a (surface)" in result.output
    # A surface the policy does not name: the surface-limited concepts do not apply there.
    args[args.index("Post")] = "story"
    result = runner.invoke(app, args)
    assert "decision  ALLOW" in result.output
    assert result.output.count("n/a (surface)") == 2


def test_test_reports_json_and_draws_plots(policy: Path, labeled: Path, tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    args = ["test", "-m", "fake", "-p", str(policy), "--labels", str(labeled), "--json"]
    result = runner.invoke(app, [*args, "--plots", str(plots), "--target-precision", "0.8"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["images"] == 12
    assert data["target_precision"] == 0.8
    (report,) = data["concepts"]
    assert report["concept_id"] == "weapons.firearm"
    assert (report["positives"], report["negatives"]) == (6, 6)
    assert report["tp"] + report["fn"] == 6
    assert report["recall"] == 1.0  # captioned images sit at cosine ~0.5, far above 0.3
    with Image.open(plots / "weapons.firearm.png") as png:
        assert png.format == "PNG"
        assert png.size == (560, 420)


def test_test_table_and_csv_labels(policy: Path, labeled: Path) -> None:
    csv = labeled / "labels.csv"
    csv.write_text("weapons.firearm/0.png,weapons.firearm\nnone/0.png,none\n")
    result = runner.invoke(app, ["test", "-m", "f", "-p", str(policy), "--labels", str(csv)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith(", 2 images")
    assert lines[1].split()[:4] == ["concept", "thresh", "pos", "neg"]
    assert lines[2].split()[:4] == ["weapons.firearm", "0.300", "1", "1"]


def test_test_refuses_labels_for_unknown_concepts(policy: Path, labeled: Path) -> None:
    (labeled / "weapons.knife").mkdir()
    (labeled / "weapons.knife" / "1.png").write_bytes(make_png(None))
    result = runner.invoke(app, ["test", "-m", "f", "-p", str(policy), "--labels", str(labeled)])
    assert result.exit_code == 1
    assert "labels name concepts the policy does not have: weapons.knife" in result.output


def test_diff_lists_images_whose_decision_changes(
    policy: Path, labeled: Path, tmp_path: Path
) -> None:
    stricter = tmp_path / "new.yaml"
    stricter.write_text(POLICY.replace("threshold: 0.3", "threshold: 0.9"))
    args = ["diff", str(policy), str(stricter), "-m", "f", "--images", str(labeled)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "~ weapons.firearm (threshold changed)" in result.output
    assert result.output.count(": flag → allow") == 6
    assert "before: weapons.firearm match, score" in result.output
    assert result.output.rstrip().endswith("12 images, 6 changed decision (flag → allow: 6)")


def test_invalid_policy_exits_1_with_its_problems(policy: Path, tmp_path: Path) -> None:
    policy.write_text(POLICY.replace("version: 1", "version: 9"))
    image = tmp_path / "x.png"
    image.write_bytes(make_png(None))
    result = runner.invoke(app, ["explain", "-m", "f", "-p", str(policy), str(image)])
    assert result.exit_code == 1
    assert f"{policy}:1: version: `9` is not a known format version" in result.output


def test_undecodable_images_are_skipped_with_a_note(policy: Path, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    good.write_bytes(make_png(None))
    bad.write_bytes(b"not an image")
    result = runner.invoke(app, ["explain", "-m", "f", "-p", str(policy), str(good), str(bad)])
    assert result.exit_code == 0
    assert f"skipped {bad}: not an image" in result.output
    assert f"image     {good}" in result.output


def test_schema_command_prints_the_committed_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert result.output == render_json_schema()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    for command in ("validate", "explain", "test", "diff"):
        assert command in result.output
