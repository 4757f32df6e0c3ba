"""Reading YAML with line marks: aliases expand within a bound, hostile files fail fast."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moderator.errors import PolicyError
from moderator.policy.load import MAX_FILE_BYTES, load_policies
from moderator.policy.yamllines import (
    ALIAS_VALUE_LIMIT,
    DEPTH_LIMIT,
    LineMap,
    YAMLLimitError,
    compose,
    to_python,
)

HEAD = "version: 1\nname: t\n"


def billion_laughs(levels: int = 9) -> str:
    """Each level a list of nine aliases to the previous one: 9**levels strings in all."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return HEAD + "concepts: []\n" + "\n".join(lines) + "\n"


def read(text: str, **kwargs: Any) -> Any:
    node = compose(text)
    return None if node is None else to_python(node, (), LineMap(), [], **kwargs)


def refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(PolicyError) as info:
        load_policies(path)
    assert time.perf_counter() - started < 2.0
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:")
    return problem


def test_a_billion_laughs_file_is_refused_quickly(tmp_path: Path) -> None:
    problem = refused(tmp_path, billion_laughs())
    assert "aliases (`*name`) repeat more than 10000 values" in problem
    assert "alias bomb" in problem


def test_a_value_that_contains_itself_is_refused(tmp_path: Path) -> None:
    problem = refused(tmp_path, HEAD + "concepts: &c [*c]\n")
    assert "refers to a value that contains it" in problem


def test_deep_brackets_are_refused_before_the_scanner_slows_down(tmp_path: Path) -> None:
    # 20000 open brackets take PyYAML's scanner minutes; the limit stops it at the 65th.
    problem = refused(tmp_path, HEAD + "concepts: " + "[" * 20_000 + "]" * 20_000 + "\n")
    assert problem.endswith(f"nested more than {DEPTH_LIMIT} levels deep; a policy needs about six")


def test_deep_block_nesting_is_refused(tmp_path: Path) -> None:
    text = HEAD + "".join(" " * i + f"k{i}:\n" for i in range(DEPTH_LIMIT + 5))
    assert "nested more than" in refused(tmp_path, text)


def test_aliases_cannot_nest_past_the_depth_limit(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, DEPTH_LIMIT + 5)]
    assert "nested more than" in refused(tmp_path, HEAD + "\n".join(lines) + "\n")


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    problem = refused(tmp_path, HEAD + "#" * MAX_FILE_BYTES + "\n")
    assert "too large for a policy file" in problem


def test_a_value_out_of_its_types_range_is_an_error_not_a_crash(tmp_path: Path) -> None:
    problem = refused(tmp_path, HEAD + "concepts: []\nwhen: 2001-13-45\n")
    assert problem == (
        f"{tmp_path / 'p.yaml'}:4: YAML: cannot read this value (month must be in 1..12); "
        "put it in quotes if it is text"
    )


def test_shared_lists_through_aliases_still_work(tmp_path: Path) -> None:
    text = HEAD + textwrap.dedent(
        """\
        concepts:
          - id: w.gun
            category: weapons
            prompts: &guns [a photo of a handgun, a rifle]
            surfaces: &public [post, comment]
          - id: w.knife
            category: weapons
            prompts: [a knife]
            counter_prompts: *guns
            surfaces: *public
        """
    )
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    gun, knife = load_policies(path).concepts
    assert knife.counter_prompts == gun.prompts == ("a photo of a handgun", "a rifle")
    assert knife.surfaces == gun.surfaces == ("post", "comment")


def test_the_alias_bound_is_exact_and_generous() -> None:
    # One 100-value list repeated through aliases: exactly at the limit, then one value over.
    repeats = ALIAS_VALUE_LIMIT // 101  # each alias adds the list itself and its 100 items
    items = "[" + ",".join(["x"] * 100) + "]"
    body = f"a: &a {items}\nb: [" + ",".join(["*a"] * repeats) + "]\n"
    assert len(read(body)["b"]) == repeats
    assert len(read(body, alias_limit=repeats * 101)["b"]) == repeats
    with pytest.raises(YAMLLimitError, match="repeat more than"):
        read(body, alias_limit=repeats * 101 - 1)


def test_lines_are_recorded_through_aliases() -> None:
    lines = LineMap()
    node = compose("a: &a\n  k: 1\nb: *a\n")
    assert node is not None
    assert to_python(node, (), lines, []) == {"a": {"k": 1}, "b": {"k": 1}}
    assert lines.line(("a", "k")) == 2
    assert lines.line(("b",)) == 3


# Plain data of the kinds policies hold; yaml.dump writes anchors and aliases for any sublist
# or mapping that appears twice, which `shared` arranges.
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10**9), 10**9), st.text(max_size=8))
DATA = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(DATA, st.integers(1, 4))
def test_dumped_data_reads_back_equal_aliases_expanded(data: Any, copies: int) -> None:
    shared = {"one": data, "again": [data] * copies}  # the same object: dumped as aliases
    text = yaml.safe_dump(shared, allow_unicode=True)
    got = read(text)
    assert got == yaml.safe_load(text)  # PyYAML's own reading (it mangles a few line breaks)
    assert got["again"] == [got["one"]] * copies


PIECES = [
    *("[", "]", "{", "}", ":", ", ", "- ", "? ", "\n", "  ", "\t", "#", "|\n", ">\n"),
    *("&a ", "*a", "&b ", "*b", "<<: ", "!!str ", "!!binary ", "'", '"'),
    *("x", "1", "2001-13-45", "0x", "~", "é", "\x00", "\ufeff"),
    *("%YAML 1.1\n", "---\n", "...\n"),
]
YAMLISH = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(YAMLISH)
def test_any_text_loads_or_fails_as_a_policy_error(tmp_path_factory: Any, text: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "p.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        loaded = load_policies(path)
    except PolicyError as exc:  # the only exception a policy file may cause
        problems = exc.problems
    else:
        problems = []
        assert loaded.files == (path,)
    assert all(p.startswith(f"{path}:") for p in problems)
