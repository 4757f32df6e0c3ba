"""One event's route: a consumed record ends as exactly one verdict or one dead letter.

    record → prepare (parse, acquire, hash) → embed (cache, or decode → batch → model)
           → score with the policy in force (one call per loop iteration: `Scorer`)
           → build the verdict → publish, await the ack

Whatever the record carries, `handle` answers it once: an error the pipeline names
(`ModeratorError`) becomes a dead letter with its reason, and an error nothing anticipated an
`internal_error` dead letter with the traceback logged. Only a `ServiceFault` (the broker
refused a send, inference failed) escapes, leaving the record unanswered and uncommitted.
Counting and the embeddings topic come after the verdict's ack and never instead of it.

CPU on the loop's thread is charged to `moderator.cpu` stages: `score` (by the scorer, once
per flush), `serialize` (building the verdict and its JSON) and `produce` (handing it to the
producer, not the wait for the ack).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from moderator.cpu import thread_cpu
from moderator.errors import ModeratorError, Reason, ServiceFault
from moderator.kafka.publish import Failure, Publisher, verdict_headers
from moderator.kafka.types import Record
from moderator.log import get
from moderator.pipeline.budget import Hold
from moderator.pipeline.events import ImageEvent
from moderator.service.embedder import Embedder
from moderator.service.scorer import Policies, Scorer
from moderator.service.sensor import Sensor
from moderator.service.verdict import Verdict, build_verdict
from moderator.types import Encoder

log = get("route")


@dataclass(frozen=True, slots=True)
class _Answered:
    """An event whose verdict the broker acknowledged."""

    event: ImageEvent
    verdict: Verdict
    embedding: np.ndarray
    truncated: bool


class Route:
    """Answers records; one instance serves every event task."""

    def __init__(
        self,
        *,
        embedder: Embedder,
        policies: Policies,
        model: Encoder,
        publisher: Publisher,
        sensor: Sensor,
        embeddings_topic: str | None,
    ) -> None:
        self._embedder = embedder
        self._policies = policies
        self._model = model
        self._publisher = publisher
        self._sensor = sensor
        self._embeddings_topic = embeddings_topic
        self._scorer = Scorer(policies, on_cpu=sensor.on_cpu)

    async def handle(self, record: Record, hold: Hold) -> None:
        """Answer `record` once; only a `ServiceFault` escapes."""
        try:
            answer = await self._answer(record, hold)
        except ServiceFault:
            raise
        except ModeratorError as exc:
            attempts = int(getattr(exc, "attempts", 1))
            await self._dead_letter(record, exc.reason, str(exc), attempts)
        except Exception as exc:  # a bug, or an input nothing anticipated
            log.exception(
                "internal error; dead-lettering the event",
                extra={"fields": {"partition": record.partition, "offset": record.offset}},
            )
            await self._dead_letter(record, Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        else:
            try:
                await self._after_verdict(answer)
            except ServiceFault:
                raise
            except Exception:  # the verdict is out: a dead letter would answer it twice
                log.exception("error after the verdict was published")
        if record.timestamp and record.timestamp > 0:
            self._sensor.on_answered(time.time() - record.timestamp / 1000)

    async def _answer(self, record: Record, hold: Hold) -> _Answered:
        """Everything up to the verdict's acknowledgement; raises what makes a dead letter."""
        started = time.monotonic()
        timings: dict[str, float] = {}
        prepared = await self._embedder.prepare(record, hold, timings)
        try:
            embedding, cached = await self._embedder.embed(prepared, timings)
        except ModeratorError as exc:  # x-attempts: the fetch attempts this image took
            if not hasattr(exc, "attempts"):
                exc.attempts = prepared.attempts  # type: ignore[attr-defined]
            raise
        t = time.monotonic()
        # The policy comes back with the outcome: the version that decided is the one named.
        policy, outcome = await self._scorer.score(embedding, prepared.event.surface)
        timings["score"] = time.monotonic() - t
        timings["total"] = time.monotonic() - started
        cpu_started = thread_cpu()
        verdict = build_verdict(
            prepared.event,
            outcome,
            policy,
            self._model,
            image_sha=prepared.image_sha,
            timings=timings,
            cached=cached,
        )
        headers = verdict_headers(
            policy.version, self._model.sha256, (record.topic, record.partition, record.offset)
        )
        cpu = {"serialize": thread_cpu() - cpu_started}
        t = time.monotonic()
        try:
            truncated = await self._publisher.verdict(prepared.event.id, verdict, headers, cpu)
        finally:
            self._sensor.on_cpu_tally(cpu)
        self._sensor.on_stage("publish", time.monotonic() - t)
        return _Answered(prepared.event, verdict, embedding, truncated)

    async def _after_verdict(self, answer: _Answered) -> None:
        """Counting, and the embeddings topic: after the verdict, never instead of it."""
        verdict = answer.verdict
        self._sensor.on_verdict(
            verdict.decision.value,
            self._surface_label(answer.event.surface),
            [(m.concept_id, m.action.value) for m in verdict.matches],
            [(m.concept_id, m.action.value) for m in verdict.shadow],
            truncated=answer.truncated,
        )
        if self._embeddings_topic:
            event = answer.event
            await self._publisher.embedding(
                self._embeddings_topic,
                event.id,
                {
                    "id": event.id,
                    "image_sha256": verdict.image.sha256,
                    "model_sha256": self._model.sha256,
                    "embedding": [round(float(x), 6) for x in answer.embedding],
                },
            )

    async def _dead_letter(
        self, record: Record, reason: Reason, detail: str, attempts: int = 1
    ) -> None:
        failure = Failure(reason, detail, record.topic, record.partition, record.offset, attempts)
        try:
            await self._publisher.dead_letter(record.key, record.value, record.headers, failure)
        except ServiceFault:
            raise
        except Exception as exc:  # the record's own bytes would not go: send the failure alone
            log.exception("dead letter refused; sending it without the original record")
            note = f"original record dropped: it could not be sent ({type(exc).__name__}); "
            await self._publisher.bare_dead_letter(record.key, failure, note)
        self._sensor.on_dead_letter(reason.value)
        log.info(
            "dead-lettered",
            extra={
                "fields": {
                    "reason": reason.value,
                    "detail": detail[:200],
                    "partition": record.partition,
                    "offset": record.offset,
                }
            },
        )

    def _surface_label(self, surface: str | None) -> str:
        """Metric label for a surface: the policy's surfaces, `none`, or `other` (bounded:
        producers choose surfaces, and each new label value is a new time series)."""
        if surface is None:
            return "none"
        if self._policies.current.knows_surface(surface):
            return surface.lower()
        self._sensor.on_unknown_surface()
        return "other"
