"""Compilation: embeddings cached by content, only edits re-embedded, versions by meaning."""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from fakes import CountingEncoder, FakeEncoder, make_png

from moderator.cache.keys import content_key, namespace
from moderator.cache.memory import MemoryEmbeddingCache
from moderator.errors import PolicyError
from moderator.policy.compile import compile_policy
from moderator.policy.load import load_policies
from moderator.types import Embeddings

POLICY = """\
version: 1
name: test
benign: [a photo, a landscape]
concepts:
  - id: weapons.firearm
    category: weapons
    prompts: [a photo of a handgun, a person holding a rifle]
    counter_prompts: [a toy water gun]
    threshold: 0.28
  - id: drugs.pills
    category: drugs
    scoring: relative
    prompts: [a pile of pills]
    counter_prompts: [a photo]
"""


def write(folder: Path, text: str, name: str = "policy.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


async def test_every_distinct_text_is_embedded_once(tmp_path: Path) -> None:
    encoder = CountingEncoder(FakeEncoder())
    compiled = await compile_policy(load_policies(write(tmp_path, POLICY)), encoder)
    # "a photo" is both a counter-prompt and benign; "a landscape" is benign for drugs.pills.
    assert sorted(encoder.texts) == sorted(
        [
            "a photo of a handgun",
            "a person holding a rifle",
            "a toy water gun",
            "a pile of pills",
            "a photo",
            "a landscape",
        ]
    )
    assert compiled.text_embeddings.shape == (6, 256)
    np.testing.assert_allclose(np.linalg.norm(compiled.text_embeddings, axis=1), 1.0, rtol=1e-5)


async def test_reload_with_one_changed_prompt_embeds_only_that_prompt(tmp_path: Path) -> None:
    cache = MemoryEmbeddingCache()
    encoder = CountingEncoder(FakeEncoder())
    path = write(tmp_path, POLICY)
    first = await compile_policy(load_policies(path), encoder, cache)
    encoder.texts.clear()
    write(tmp_path, POLICY.replace("a person holding a rifle", "a person aiming a rifle"))
    second = await compile_policy(load_policies(path), encoder, cache)
    assert encoder.texts == ["a person aiming a rifle"]
    assert first.version != second.version
    encoder.texts.clear()
    await compile_policy(load_policies(path), encoder, cache)
    assert encoder.texts == []
    assert encoder.text_calls == 2


async def test_cache_entries_are_namespaced_by_model_and_keyed_by_text_hash(tmp_path: Path) -> None:
    cache = MemoryEmbeddingCache()
    fake = FakeEncoder()
    await compile_policy(load_policies(write(tmp_path, POLICY)), fake, cache)
    (vector,) = await cache.get_many(
        namespace("txt", fake.sha256), [content_key("a toy water gun")]
    )
    assert vector is not None
    np.testing.assert_allclose(vector, fake.text_vector("a toy water gun"))
    other = CountingEncoder(FakeEncoder(name="another-model"))
    await compile_policy(load_policies(tmp_path / "policy.yaml"), other, cache)
    assert len(other.texts) == 6  # a different model never reuses these vectors


async def test_encoding_runs_off_the_event_loop_thread(tmp_path: Path) -> None:
    threads: list[threading.Thread] = []

    class ThreadRecorder(FakeEncoder):
        def encode_texts(self, texts: list[str]) -> Embeddings:
            threads.append(threading.current_thread())
            return super().encode_texts(texts)

    await compile_policy(load_policies(write(tmp_path, POLICY)), ThreadRecorder())
    assert threads
    assert all(t is not threading.main_thread() for t in threads)


async def test_version_ignores_comments_order_and_file_layout(tmp_path: Path) -> None:
    fake = FakeEncoder()
    base = await compile_policy(load_policies(write(tmp_path, POLICY)), fake)
    commented = "# a comment\n" + POLICY.replace("name: test", "name: test  # renamed? no")
    again = await compile_policy(load_policies(write(tmp_path, commented)), fake)
    assert again.version == base.version
    # Same concepts split over two files in another order: same behaviour, same version.
    head, concepts = POLICY.split("concepts:\n")
    first, second = concepts.split("  - id: drugs.pills\n")
    split = tmp_path / "split"
    split.mkdir()
    write(split, head + "concepts:\n  - id: drugs.pills\n" + second, "a.yaml")
    write(split, head + "concepts:\n" + first, "b.yaml")
    assert (await compile_policy(load_policies(split), fake)).version == base.version


async def test_version_changes_with_thresholds_and_with_the_model(tmp_path: Path) -> None:
    fake = FakeEncoder()
    base = await compile_policy(load_policies(write(tmp_path, POLICY)), fake)
    edited = POLICY.replace("threshold: 0.28", "threshold: 0.29")
    changed = await compile_policy(load_policies(write(tmp_path, edited)), fake)
    assert changed.version != base.version
    other_model = await compile_policy(
        load_policies(tmp_path / "policy.yaml"), FakeEncoder(name="b")
    )
    content, model = other_model.version.split("-")
    assert content == changed.version.split("-")[0]
    assert model == FakeEncoder(name="b").sha256[:8]


async def test_reference_examples_are_embedded_cached_and_versioned(tmp_path: Path) -> None:
    (tmp_path / "gun.png").write_bytes(make_png("a photo of a handgun", seed=1))
    path = write(
        tmp_path, POLICY.replace("threshold: 0.28", "threshold: 0.28\n    examples: [gun.png]")
    )
    cache = MemoryEmbeddingCache()
    encoder = CountingEncoder(FakeEncoder())
    first = await compile_policy(load_policies(path), encoder, cache)
    assert first.example_embeddings.shape == (1, 256)
    assert first.example_mask.tolist() == [[True], [False]]
    await compile_policy(load_policies(path), encoder, cache)
    assert encoder.images == 1  # second compile came from the cache
    (tmp_path / "gun.png").write_bytes(make_png("a photo of a handgun", seed=2))
    third = await compile_policy(load_policies(path), encoder, cache)
    assert third.version != first.version  # same path, new image content


async def test_undecodable_example_is_a_policy_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "gun.png").write_bytes(b"not an image")
    path = write(
        tmp_path, POLICY.replace("threshold: 0.28", "threshold: 0.28\n    examples: [gun.png]")
    )
    with pytest.raises(PolicyError) as info:
        await compile_policy(load_policies(path), FakeEncoder())
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:5: example {tmp_path / 'gun.png'}: not a usable image")


async def test_prompt_over_context_length_is_a_policy_error(tmp_path: Path) -> None:
    path = write(tmp_path, POLICY)
    with pytest.raises(PolicyError) as info:
        await compile_policy(load_policies(path), FakeEncoder(context_length=6))
    assert info.value.problems == [
        f"{path}:5: `{text}` has 7 tokens, the model reads at most 6 (shorten it; prompts are "
        "never cut silently)"
        for text in ("a photo of a handgun", "a person holding a rifle")
    ]


async def test_compiled_arrays_are_read_only(tmp_path: Path) -> None:
    compiled = await compile_policy(load_policies(write(tmp_path, POLICY)), FakeEncoder())
    for array in (compiled.text_embeddings, compiled.thresholds, compiled.prompt_index):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 0
    assert compiled.prompt_index.shape == (2, 2)
    assert compiled.relative.tolist() == [False, True]


async def test_memory_cache_expires_and_bounds_its_size() -> None:
    now = [0.0]
    cache = MemoryEmbeddingCache(max_items=2, clock=lambda: now[0])
    vector = np.ones(3, dtype=np.float32)
    await cache.set_many("txt:m", {"a": vector, "b": vector}, ttl_s=10)
    await cache.set_many("txt:m", {"c": vector}, ttl_s=100)
    assert [v is not None for v in await cache.get_many("txt:m", ["a", "b", "c"])] == [
        False,
        True,
        True,
    ]
    now[0] = 50.0
    assert [v is not None for v in await cache.get_many("txt:m", ["b", "c"])] == [False, True]
    assert cache.hits == 3
    assert cache.misses == 2
