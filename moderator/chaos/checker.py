"""Reads the verdict and dead-letter topics from the start and accounts for every event id.

It runs beside the service for the whole scenario (the scenario waits on its progress to
time its faults), reading with manual assignment and no group, so it never joins or disturbs
the service's consumer group, and it rides out broker restarts by retrying its polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from moderator import kafka
from moderator.chaos.workload import ANSWERED, VERDICT
from moderator.errors import KafkaFailed
from moderator.settings import KafkaSettings

_POLL_S = 0.2
_RETRY_S = 0.5  # between polls that failed because the broker is away


@dataclass(frozen=True, slots=True)
class Answer:
    """One record on an output topic: a decision, or a dead-letter reason."""

    outcome: str  # VERDICT or "dlq:<reason>"
    detail: str  # the decision for verdicts, the x-error-detail for dead letters
    at: float  # time.monotonic() when the checker read it
    attempts: int = 0  # a dead letter's x-attempts (fetch attempts made)


@dataclass(frozen=True, slots=True)
class Tally:
    """What a scenario's output topics say about its events."""

    events: int
    answered: int
    lost: int
    duplicated_ids: int  # ids answered more than once
    extra_copies: int  # answers beyond the first, summed over ids
    inconsistent: int  # duplicated ids whose copies disagree (decision or DLQ reason)
    wrong_outcome: int  # ids whose first answer is not the outcome the workload expects
    unknown: int  # answers for ids this scenario never sent
    dlq_by_reason: dict[str, int]
    longest_gap_s: float  # longest time without a new id answered, first to last answer
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few ids per problem

    @property
    def ok(self) -> bool:
        return not (self.lost or self.inconsistent or self.wrong_outcome or self.unknown)


class Checker:
    """Collects answers per id from `verdict_topic` and `dlq_topic` until stopped; with
    `by_position`, per input record ("partition:offset", from the `x-original-*` headers both
    kinds of answer carry) instead, for inputs whose ids are not known or not unique."""

    def __init__(
        self,
        settings: KafkaSettings,
        verdict_topic: str,
        dlq_topic: str,
        *,
        by_position: bool = False,
    ) -> None:
        self._by_position = by_position
        self._settings = settings
        self._verdict_topic = verdict_topic
        self._dlq_topic = dlq_topic
        self.answers: dict[str, list[Answer]] = {}
        self._first: list[float] = []  # monotonic time of each id's first answer
        self._task: asyncio.Task[None] | None = None
        self._reader: kafka.Reader | None = None
        self._changed = asyncio.Event()

    @property
    def answered(self) -> int:
        return len(self.answers)

    async def start(self) -> None:
        reader = await kafka.open_reader(self._settings, [self._verdict_topic, self._dlq_topic])
        self._reader = reader
        self._task = asyncio.create_task(self._read(reader), name="chaos-checker")

    async def stop(self) -> None:
        await kafka.close_reader(self._task, self._reader)

    async def wait_for(self, count: int, timeout_s: float) -> bool:
        """True once `count` distinct ids are answered; False at the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.answered < count:
            self._raise_if_failed()
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))
        return True

    async def settle(self, quiet_s: float) -> None:
        """Wait until no new answer (duplicates included) arrives for `quiet_s` seconds."""
        seen = -1
        while seen != (seen := sum(len(v) for v in self.answers.values())):
            self._raise_if_failed()
            await asyncio.sleep(quiet_s)

    def _raise_if_failed(self) -> None:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()  # re-raises what stopped the reader

    async def _read(self, reader: kafka.Reader) -> None:
        while True:
            try:
                records = await reader.poll(_POLL_S)
            except KafkaFailed:
                await asyncio.sleep(_RETRY_S)
                continue
            now = time.monotonic()
            for record in records:
                key = (record.key or b"").decode("utf-8", "replace")
                headers = {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers}
                if self._by_position:
                    where = ("x-original-partition", "x-original-offset")
                    key = ":".join(headers.get(name, "?") for name in where)
                if record.topic == self._verdict_topic:
                    answer = Answer(VERDICT, _decision(record.value), now)
                else:
                    answer = Answer(
                        f"dlq:{headers.get('x-error-reason', '?')}",
                        headers.get("x-error-detail", ""),
                        now,
                        int(headers.get("x-attempts", "0") or 0),
                    )
                copies = self.answers.setdefault(key, [])
                if not copies:
                    self._first.append(now)
                copies.append(answer)
            if records:
                self._changed.set()

    def tally(self, expected: Mapping[str, str]) -> Tally:
        """Account for every id in `expected` (id → VERDICT or "dlq:<reason>")."""
        examples: dict[str, list[str]] = {}

        def note(problem: str, event_id: str) -> None:
            shown = examples.setdefault(problem, [])
            if len(shown) < 5:
                shown.append(event_id[:80])

        lost = [i for i in expected if i not in self.answers]
        for event_id in lost:
            note("lost", event_id)
        duplicated = inconsistent = wrong = extra = 0
        reasons: Counter[str] = Counter()
        for event_id, copies in self.answers.items():
            if event_id not in expected:
                note("unknown", event_id)
                continue
            first = copies[0]
            if first.outcome != VERDICT:
                reasons[first.outcome.removeprefix("dlq:")] += 1
            if not _as_expected(first.outcome, expected[event_id]):
                wrong += 1
                note("wrong_outcome", f"{event_id}: {first.outcome} {first.detail[:120]}")
            if len(copies) > 1:
                duplicated += 1
                extra += len(copies) - 1
                if len({(c.outcome, c.detail if c.outcome == VERDICT else "") for c in copies}) > 1:
                    inconsistent += 1
                    note("inconsistent", event_id)
        unknown = sum(1 for i in self.answers if i not in expected)
        return Tally(
            events=len(expected),
            answered=len(expected) - len(lost),
            lost=len(lost),
            duplicated_ids=duplicated,
            extra_copies=extra,
            inconsistent=inconsistent,
            wrong_outcome=wrong,
            unknown=unknown,
            dlq_by_reason=dict(sorted(reasons.items())),
            longest_gap_s=_longest_gap(self._first),
            examples=examples,
        )


def _as_expected(outcome: str, expected: str) -> bool:
    if expected == ANSWERED:  # any verdict or dead letter, but never an unanticipated error
        return outcome != "dlq:internal_error"
    return outcome == expected


def _decision(value: bytes | None) -> str:
    try:
        return str(json.loads(value or b"{}").get("decision", "?"))
    except (ValueError, AttributeError):
        return "unparseable verdict"


def _longest_gap(times: Iterable[float]) -> float:
    ordered = sorted(times)
    return max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)
