"""Validation: each authoring mistake is caught and pointed at with file:line and a hint."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from fakes import FakeEncoder

from moderator.errors import PolicyError
from moderator.policy.load import load_policies
from moderator.policy.schema import Action, Mode, Scoring, Severity

GOOD = """\
version: 1
name: test
benign: [a photo, a landscape]
concepts:
  - id: weapons.firearm
    category: weapons
    prompts: [a photo of a handgun]
    counter_prompts: [a toy water gun]
    threshold: 0.28
"""


def write(folder: Path, text: str, name: str = "policy.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(*paths: Path, **kwargs: object) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policies(list(paths), **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def only(found: list[str]) -> str:
    assert len(found) == 1, found
    return found[0]


def test_a_good_policy_loads_with_defaults_applied(tmp_path: Path) -> None:
    loaded = load_policies(write(tmp_path, GOOD))
    (c,) = loaded.concepts
    assert c.id == "weapons.firearm"
    assert (c.severity, c.action, c.mode, c.scoring) == (
        Severity.MEDIUM,
        Action.FLAG,
        Mode.ENFORCE,
        Scoring.ABSOLUTE,
    )
    assert c.threshold == 0.28
    assert c.benign == ()  # benign texts only matter to relative concepts
    assert c.origin == f"{tmp_path / 'policy.yaml'}:5"
    assert loaded.warnings == ()


def test_unknown_key_suggests_the_field_it_resembles(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    threshold: 0.28", "    threshhold: 0.28"))
    assert only(problems(path)) == (
        f"{path}:9: concepts[weapons.firearm].threshhold: unknown key (did you mean `threshold`?)"
    )


def test_unknown_key_in_defaults_and_at_top_level(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "defaults:\n  treshold: 0.3\nconcept: []\n")
    found = problems(path)
    assert f"{path}:11: defaults.treshold: unknown key (did you mean `threshold`?)" in found
    assert f"{path}:12: concept: unknown key (did you mean `concepts`?)" in found


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, GOOD, "a.yaml")
    second = write(tmp_path, GOOD.replace("name: test", "name: other"), "b.yaml")
    message = only(problems(tmp_path))
    assert message.startswith(f"{second}:5: concepts[weapons.firearm].id: `weapons.firearm` is")
    assert f"already used at {first}:5" in message
    assert "(ids must be unique across all policy files; rename one)" in message


def test_duplicate_ids_within_one_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + GOOD.split("concepts:\n")[1])
    assert only(problems(path)).startswith(f"{path}:10: concepts[weapons.firearm].id:")


def test_prompt_over_the_models_context_length(tmp_path: Path) -> None:
    long = " ".join(["word"] * 80)
    path = write(tmp_path, GOOD.replace("[a photo of a handgun]", f"[a handgun, {long}]"))
    message = only(problems(path, tokens=FakeEncoder()))
    assert message == (
        f"{path}:7: concepts[weapons.firearm].prompts[1]: 82 tokens, the model reads at most 77 "
        "(shorten it; moderator never cuts prompts silently)"
    )


def test_without_a_model_prompts_are_counted_with_clip_and_overlong_ones_fail(
    tmp_path: Path,
) -> None:
    long = " ".join(["word"] * 80)
    path = write(tmp_path, GOOD.replace("[a photo of a handgun]", f"[a handgun, {long}]"))
    assert only(problems(path)) == (
        f"{path}:7: concepts[weapons.firearm].prompts[1]: 82 tokens, CLIP reads at most 77 "
        "(shorten it; moderator never cuts prompts silently)"
    )


def test_a_prompt_of_exactly_77_clip_tokens_passes(tmp_path: Path) -> None:
    fits = " ".join(["word"] * 75)  # one token each, plus the start and end markers
    loaded = load_policies(write(tmp_path, GOOD.replace("a photo of a handgun", fits)))
    assert loaded.concepts[0].prompts == (fits,)
    over = write(tmp_path, GOOD.replace("a photo of a handgun", fits + "!"), "over.yaml")
    assert "78 tokens, CLIP reads at most 77" in only(problems(over))


def test_absolute_threshold_outside_cosine_range(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("threshold: 0.28", "threshold: 1.5"))
    assert only(problems(path)) == (
        f"{path}:9: concepts[weapons.firearm].threshold: 1.5 is outside -1..1 (absolute scoring "
        "compares a cosine similarity; CLIP matches are around 0.25-0.35)"
    )


def test_negative_absolute_threshold_is_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("threshold: 0.28", "threshold: -0.1"))
    (warning,) = load_policies(path).warnings
    assert warning.startswith(f"{path}:9: concepts[weapons.firearm].threshold: -0.1 is below 0")


def test_relative_threshold_outside_probability_range(tmp_path: Path) -> None:
    text = GOOD.replace("threshold: 0.28", "scoring: relative\n    threshold: 1.2")
    path = write(tmp_path, text)
    message = only(problems(path))
    assert message.startswith(
        f"{path}:10: concepts[weapons.firearm].threshold: 1.2 is outside 0..1"
    )
    assert "probability" in message


def test_default_thresholds_are_range_checked(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "defaults:\n  relative_threshold: 2\n")
    assert only(problems(path)).startswith(
        f"{path}:11: defaults.relative_threshold: 2.0 is outside"
    )


def test_missing_example_file_suggests_a_near_name(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "firearm_01.jpg").write_bytes(b"x")
    path = write(tmp_path, GOOD + "    examples: [examples/firearm_1.jpg]\n")
    message = only(problems(path))
    assert message.startswith(
        f"{path}:10: concepts[weapons.firearm].examples[0]: `examples/firearm_1.jpg` does not exist"
    )
    assert "did you mean" in message
    assert "firearm_01.jpg" in message


def test_example_path_with_dotdot_escaping_the_policy_folder(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    path = write(folder, GOOD + "    examples: [../secret.jpg]\n")
    message = only(problems(path))
    assert message.startswith(f"{path}:10: concepts[weapons.firearm].examples[0]: `../secret.jpg`")
    assert "outside the policy's folder" in message


def test_absolute_example_path(tmp_path: Path) -> None:
    image = tmp_path / "gun.jpg"
    image.write_bytes(b"x")
    path = write(tmp_path, GOOD + f"    examples: [{image}]\n")
    assert "is an absolute path (write it relative" in only(problems(path))


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_example_symlink_pointing_out_of_the_policy_folder(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(b"x")
    (folder / "link.jpg").symlink_to(outside)
    path = write(folder, GOOD + "    examples: [link.jpg]\n")
    message = only(problems(path))
    assert f"`link.jpg` is a link to {outside.resolve()}, outside the policy's folder" in message


def test_example_symlink_inside_the_folder_is_fine(tmp_path: Path) -> None:
    (tmp_path / "real.jpg").write_bytes(b"x")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "real.jpg")
    loaded = load_policies(write(tmp_path, GOOD + "    examples: [link.jpg]\n"))
    assert loaded.concepts[0].examples == ((tmp_path / "real.jpg").resolve(),)


def test_empty_prompt_list(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("[a photo of a handgun]", "[]"))
    assert only(problems(path)) == (
        f"{path}:7: concepts[weapons.firearm].prompts: must not be empty "
        "(give at least one prompt describing what the concept looks like)"
    )


def test_empty_prompt_text(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("[a photo of a handgun]", '[a handgun, "  "]'))
    assert only(problems(path)) == (
        f"{path}:7: concepts[weapons.firearm].prompts[1]: empty text "
        "(write something or delete the entry)"
    )


def test_missing_prompts(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    prompts: [a photo of a handgun]\n", ""))
    assert only(problems(path)) == (
        f"{path}:5: concepts[weapons.firearm].prompts: required but missing "
        "(add `prompts:` with at least one description of what to look for)"
    )


def test_duplicate_yaml_keys(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "    threshold: 0.3\n")
    assert only(problems(path)) == (
        f"{path}:10: concepts[weapons.firearm].threshold: key `threshold` appears twice (first "
        "on line 9) (YAML would silently keep only one of them; delete the other)"
    )


def test_unknown_enum_value_suggests_the_nearest(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "    severity: hgh\n")
    assert only(problems(path)) == (
        f"{path}:10: concepts[weapons.firearm].severity: `hgh` is not one of: low, medium, high, "
        "critical (did you mean `high`?)"
    )


def test_bad_concept_id(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("id: weapons.firearm", "id: Weapons Firearm"))
    message = only(problems(path))
    assert message.startswith(f"{path}:5: concepts[Weapons Firearm].id: `Weapons Firearm` is not")
    assert "e.g. weapons.firearm" in message


def test_non_numeric_threshold(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("threshold: 0.28", "threshold: high"))
    assert only(problems(path)) == (
        f"{path}:9: concepts[weapons.firearm].threshold: `high` is not a number "
        "(write a number such as 0.28)"
    )


def test_prompts_written_as_a_single_string(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("[a photo of a handgun]", "a photo of a handgun"))
    assert "prompts: expected a list (write one `- item` per line" in only(problems(path))


def test_yaml_syntax_error_points_at_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("category: weapons", "category: [weapons"))
    message = only(problems(path))
    assert message.startswith(f"{path}:7: YAML syntax:")
    assert "indentation" in message


def test_empty_file_and_wrong_version(tmp_path: Path) -> None:
    empty = write(tmp_path, "", "empty.yaml")
    assert only(problems(empty)).startswith(f"{empty}:1: expected a policy")
    old = write(tmp_path, GOOD.replace("version: 1", "version: 2"), "old.yaml")
    assert only(problems(old)) == (
        f"{old}:1: version: `2` is not a known format version (write `version: 1`)"
    )


def test_relative_concept_needs_alternatives(tmp_path: Path) -> None:
    text = GOOD.replace("benign: [a photo, a landscape]\n", "").replace(
        "    counter_prompts: [a toy water gun]\n", "    scoring: relative\n"
    )
    path = write(tmp_path, text)
    message = only(problems(path))
    assert message.startswith(f"{path}:7: concepts[weapons.firearm].scoring: relative scoring")
    assert "add `counter_prompts`" in message


def test_counter_prompt_equal_to_a_prompt(tmp_path: Path) -> None:
    path = write(
        tmp_path, GOOD.replace("[a toy water gun]", "[a toy water gun, a photo of a handgun]")
    )
    assert only(problems(path)).startswith(
        f"{path}:8: concepts[weapons.firearm].counter_prompts[1]: `a photo of a handgun` is also"
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        GOOD.replace("threshold: 0.28", "threshold: 7")
        + "  - id: drugs\n    category: drugs\n    prompts: []\n    colour: red\n"
    )
    found = problems(write(tmp_path, text))
    assert len(found) == 3, found
    assert any("threshold: 7.0 is outside" in p for p in found)
    assert any("concepts[drugs].prompts: must not be empty" in p for p in found)
    assert any("concepts[drugs].colour: unknown key" in p for p in found)


def test_relative_concepts_get_the_benign_list_minus_their_own_texts(tmp_path: Path) -> None:
    text = GOOD.replace("benign: [a photo, a landscape]", "benign: [a photo, a toy water gun]")
    text = text.replace("threshold: 0.28", "scoring: relative")
    (c,) = load_policies(write(tmp_path, text)).concepts
    assert c.benign == ("a photo",)
    assert c.threshold == 0.5  # defaults.relative_threshold, not defaults.threshold


def test_folder_loads_yaml_files_and_skips_hidden_configmap_entries(tmp_path: Path) -> None:
    data = tmp_path / "..2026_11_27"
    data.mkdir()
    write(data, GOOD, "a.yaml")
    (tmp_path / "..data").symlink_to(data.name)
    (tmp_path / "a.yaml").symlink_to(Path("..data") / "a.yaml")
    write(tmp_path, "not: a policy", "notes.txt")
    loaded = load_policies(tmp_path)
    assert loaded.files == (tmp_path / "a.yaml",)
    assert [c.id for c in loaded.concepts] == ["weapons.firearm"]


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    assert (
        only(problems(tmp_path / "nope.yaml"))
        == f"{tmp_path / 'nope.yaml'}: no such file or folder"
    )
    (tmp_path / "empty").mkdir()
    assert "no policy files" in only(problems(tmp_path / "empty"))


def test_a_misspelt_key_does_not_hide_other_mistakes_in_the_concept(tmp_path: Path) -> None:
    text = GOOD.replace("threshold: 0.28", "threshold: 3\n    sevrity: high")
    found = problems(write(tmp_path, text))
    assert len(found) == 2, found
    assert "sevrity: unknown key (did you mean `severity`?)" in found[0]
    assert "threshold: 3.0 is outside -1..1" in found[1]
