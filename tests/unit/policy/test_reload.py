"""Hot reload: swaps on real changes, keeps the last good policy on a bad edit."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
from fakes import CountingEncoder, FakeEncoder

from moderator.errors import PolicyError
from moderator.policy.reload import PolicyReloader, fingerprint
from moderator.types import Embeddings

POLICY = """\
version: 1
name: test
concepts:
  - id: weapons.firearm
    category: weapons
    prompts: [a photo of a handgun, a person holding a rifle]
    threshold: 0.28
"""

Result = tuple[bool, str | None, str | None, str | None]


def make(path: Path, encoder: object | None = None) -> tuple[PolicyReloader, list[Result]]:
    results: list[Result] = []
    reloader = PolicyReloader(
        path,
        encoder or FakeEncoder(),  # type: ignore[arg-type]
        interval_s=0.01,
        on_result=lambda ok, name, version, error: results.append((ok, name, version, error)),
    )
    return reloader, results


async def test_an_edit_is_compiled_and_swapped_in(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    reloader, results = make(path)
    first = await reloader.load()
    assert reloader.current is first
    assert await reloader.check() is False  # nothing changed
    path.write_text(POLICY.replace("0.28", "0.3"))
    assert await reloader.check() is True
    assert reloader.current.version != first.version
    assert reloader.current.thresholds.tolist() == [pytest.approx(0.3)]
    assert results == [
        (True, "test", first.version, None),
        (True, "test", reloader.current.version, None),
    ]


async def test_an_invalid_edit_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    reloader, results = make(path)
    good = await reloader.load()
    path.write_text(POLICY.replace("threshold: 0.28", "threshhold: 0.28"))
    assert await reloader.check() is False
    assert reloader.current is good
    ok, name, version, error = results[-1]
    assert (ok, name, version) == (False, None, None)
    assert error is not None
    assert f"{path}:7: concepts[weapons.firearm].threshhold" in error
    # The same bad content is reported once, not on every poll.
    assert await reloader.check() is False
    assert len(results) == 2
    path.write_text(POLICY.replace("0.28", "0.31"))
    assert await reloader.check() is True
    assert results[-1] == (True, "test", reloader.current.version, None)


async def test_a_deleted_policy_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    reloader, results = make(path)
    good = await reloader.load()
    path.unlink()
    assert await reloader.check() is False
    assert reloader.current is good
    assert results[-1][0] is False
    assert "no such file" in str(results[-1][3])


async def test_an_unexpected_failure_keeps_the_last_good_policy(tmp_path: Path) -> None:
    class Flaky(FakeEncoder):
        broken = False

        def encode_texts(self, texts: list[str]) -> Embeddings:
            if self.broken:
                raise RuntimeError("GPU fell off the bus")
            return super().encode_texts(texts)

    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    encoder = Flaky()
    reloader, results = make(path, encoder)
    good = await reloader.load()
    encoder.broken = True
    path.write_text(POLICY.replace("a photo of a handgun", "a revolver"))
    assert await reloader.check() is False
    assert reloader.current is good
    assert results[-1] == (False, None, None, "RuntimeError: GPU fell off the bus")


async def test_an_invalid_policy_at_start_raises(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.replace("version: 1", "version: 3"))
    reloader, results = make(path)
    with pytest.raises(PolicyError):
        await reloader.load()
    with pytest.raises(RuntimeError, match="load"):
        _ = reloader.current
    assert reloader.loaded is False
    assert results[0][0] is False


async def test_a_comment_only_edit_keeps_the_same_policy_object(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    reloader, results = make(path)
    first = await reloader.load()
    path.write_text("# reviewed 2026-11-27\n" + POLICY)
    assert await reloader.check() is False
    assert reloader.current is first
    assert results[-1] == (True, "test", first.version, None)


async def test_reload_embeds_only_the_edited_prompt(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    encoder = CountingEncoder(FakeEncoder())
    reloader, _ = make(path, encoder)
    await reloader.load()
    encoder.texts.clear()
    path.write_text(POLICY.replace("a person holding a rifle", "a person aiming a rifle"))
    assert await reloader.check() is True
    assert encoder.texts == ["a person aiming a rifle"]


async def test_configmap_symlink_swap_is_detected_without_mtime_changes(tmp_path: Path) -> None:
    # Kubernetes layout: a.yaml -> ..data/a.yaml, ..data -> ..<timestamp>/ (swapped atomically).
    mount = tmp_path / "mount"
    mount.mkdir()
    for name, text in (("..v1", POLICY), ("..v2", POLICY.replace("0.28", "0.35"))):
        (mount / name).mkdir()
        (mount / name / "a.yaml").write_text(text)
        os.utime(mount / name / "a.yaml", ns=(1_000_000_000, 1_000_000_000))
    (mount / "..data").symlink_to("..v1")
    (mount / "a.yaml").symlink_to("..data/a.yaml")
    reloader, _ = make(mount)
    first = await reloader.load()
    before = fingerprint(mount)
    (mount / "..data_tmp").symlink_to("..v2")
    os.replace(mount / "..data_tmp", mount / "..data")
    assert fingerprint(mount) != before
    assert await reloader.check() is True
    assert reloader.current.version != first.version


async def test_start_polls_in_the_background_until_stopped(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    swapped = asyncio.Event()
    versions: list[str | None] = []

    def on_result(ok: bool, name: str | None, version: str | None, error: str | None) -> None:
        versions.append(version)
        if len(set(versions)) > 1:
            swapped.set()

    reloader = PolicyReloader(path, FakeEncoder(), interval_s=0.01, on_result=on_result)
    first = await reloader.start()
    assert reloader.loaded
    path.write_text(POLICY.replace("0.28", "0.4"))
    await asyncio.wait_for(swapped.wait(), timeout=5)
    assert reloader.current.version != first.version
    await asyncio.wait_for(reloader.stop(), timeout=1)


async def test_a_batch_keeps_the_policy_it_started_with(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    reloader, _ = make(path)
    await reloader.load()
    policy = reloader.current  # what a scorer does at the start of a batch
    path.write_text(POLICY.replace("0.28", "0.5"))
    await reloader.check()
    embeddings = np.eye(1, 256, dtype=np.float32)
    (outcome,) = policy.score(embeddings, [None])
    assert outcome.policy_version == policy.version != reloader.current.version
