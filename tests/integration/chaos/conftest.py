"""A private Kafka + Redis stack for the bounded fault scenarios (moderator.chaos).

The scenarios stop and restart the broker and Redis, so they never use the shared ones on
9092/6379: this session-scoped stack runs on free ports with its state in a temp directory,
started once by scripts/services.sh (~10 s) and removed at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moderator.chaos.scenarios import Context
from moderator.errors import ConfigError
from moderator.harness.ports import free_port_block
from moderator.harness.stack import Stack


@pytest.fixture(scope="session")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("chaos-services")
    stack = Stack(free_port_block(3, 19100, 19500), free_port_block(1, 16100, 16500), state)
    try:
        stack.run_script("up")
    except ConfigError as exc:
        stack.down()
        pytest.fail(f"private chaos stack did not start: {exc}", pytrace=False)
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture
def chaos(chaos_stack: Stack, tmp_path: Path) -> Context:
    """Where a scenario runs; its service logs land in tmp_path/<scenario>/."""
    return Context(chaos_stack, tmp_path, seed=7, say=print)
