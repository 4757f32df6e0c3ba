"""Scoring per batch, not per event: the event tasks' calls of one loop iteration share one
`CompiledPolicy.score`.

A policy costs about the same for one row as for a few dozen (some forty small numpy calls
either way), so scoring each event alone spent most of the loop's scoring time on overhead.
The events of one model batch get their embeddings in the same loop iteration, so their tasks
reach `Scorer.score` together: the first call schedules a flush with `call_soon`, the rest
join it, and the flush scores them all with the policy in force at that moment, read once.
Each waiter gets that policy back with its outcome, so its verdict names the version that
decided it even when a reload lands between two flushes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from moderator.cpu import thread_cpu
from moderator.errors import ServiceFault
from moderator.policy.score import CompiledPolicy, Outcome


class Policies(Protocol):
    """Where the policy in force is read (`PolicyReloader` is one)."""

    @property
    def current(self) -> CompiledPolicy: ...


class Scored(NamedTuple):
    """One event's outcome and the policy that produced it."""

    policy: CompiledPolicy
    outcome: Outcome


_Row = tuple[np.ndarray, str | None, "asyncio.Future[Scored]"]
"""One call: its embedding, its surface, and the future its caller awaits."""


@dataclass(slots=True)
class _Flush:
    """The calls that one scheduled flush will score."""

    loop: asyncio.AbstractEventLoop
    rows: list[_Row] = field(default_factory=list)


class Scorer:
    """Coalesces `score` calls made in one loop iteration into one `policy.score` call.

    `on_cpu(stage, seconds)` is charged the flush's CPU once, as stage `score`."""

    def __init__(
        self, policies: Policies, *, on_cpu: Callable[[str, float], None] | None = None
    ) -> None:
        self._policies = policies
        self._on_cpu = on_cpu
        self._open: _Flush | None = None
        self.flushes = 0
        """Flushes that scored at least one row (for tests and benchmarks)."""

    async def score(self, embedding: np.ndarray, surface: str | None) -> Scored:
        """`embedding`'s outcome under the policy in force when its flush runs."""
        loop = asyncio.get_running_loop()
        pending = self._open
        if pending is None or pending.loop is not loop:
            pending = self._open = _Flush(loop)
            loop.call_soon(self._flush, pending)
        future: asyncio.Future[Scored] = loop.create_future()
        pending.rows.append((embedding, surface, future))
        return await future

    def _flush(self, pending: _Flush) -> None:
        if self._open is pending:
            self._open = None
        # A cancelled waiter's task is gone: score only the rows someone still waits for.
        rows = [row for row in pending.rows if not row[2].done()]
        if not rows:
            return
        try:
            self._score(rows)
        finally:  # whatever escaped (a BaseException), no waiter is left hanging
            for _, _, future in rows:
                if not future.done():
                    # A fault, not a cancellation: a cancelled event is never finished, and
                    # the commit loop would neither commit it nor stop.
                    future.set_exception(ServiceFault("scoring was interrupted"))

    def _score(self, rows: list[_Row]) -> None:
        started = thread_cpu()
        try:
            policy = self._policies.current  # once: every row of the flush is scored with it
            batch = _fitting(policy, rows)
            if batch:
                outcomes = policy.score(
                    np.stack([row[0] for row in batch]), [row[1] for row in batch]
                )
                self.flushes += 1
                for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                    future.set_result(Scored(policy, outcome))
        except Exception as exc:  # the policy's failure is every waiter's
            for _, _, future in rows:
                if not future.done():
                    future.set_exception(exc)
        finally:
            if self._on_cpu is not None:
                self._on_cpu("score", thread_cpu() - started)


def _fitting(policy: CompiledPolicy, rows: list[_Row]) -> list[_Row]:
    """The rows that stack into one batch for `policy`; the others fail alone, rather than
    failing the whole flush."""
    if policy.concepts:
        width = int(policy.text_embeddings.shape[1])
    else:  # an empty policy knows no dimension: the first row's is the batch's
        first = rows[0][0]
        width = int(first.shape[0]) if first.ndim == 1 else -1
    batch = []
    for row in rows:
        embedding = row[0]
        if embedding.ndim == 1 and embedding.shape[0] == width:
            batch.append(row)
        else:
            row[2].set_exception(
                ValueError(
                    f"an embedding of shape {embedding.shape} does not fit this policy's model "
                    f"(dimension {width})"
                )
            )
    return batch
