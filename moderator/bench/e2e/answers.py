"""Reading a phase's answers back: each event's first verdict or dead letter, when it was
written (its Kafka timestamp) and when the bench read it."""

from __future__ import annotations

import asyncio
import json
import time

from moderator import kafka
from moderator.bench.e2e.options import MAX_RECORD_BYTES, POLL_S
from moderator.settings import KafkaSettings


class Collector:
    """Reads verdict (and DLQ) topics from the start; remembers each key's first answer."""

    def __init__(self, bootstrap: str, verdicts: str, dlq: str | None, parse: bool) -> None:
        self._bootstrap = bootstrap
        self._topics = [verdicts] + ([dlq] if dlq else [])
        self._verdicts = verdicts
        self._parse = parse
        self.answered: dict[str, int] = {}  # id → answer record timestamp (ms)
        self.arrived: dict[str, float] = {}  # id → monotonic time we read it
        self.dead = 0
        self.timings: list[dict[str, float]] = []
        self.timings_by_id: dict[str, dict[str, float]] = {}
        self.decisions: dict[str, int] = {}
        self._reader: kafka.Reader | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._reader = await kafka.open_reader(
            KafkaSettings(bootstrap_servers=self._bootstrap),
            self._topics,
            max_partition_fetch_bytes=MAX_RECORD_BYTES,
        )
        self._task = asyncio.create_task(self._read(self._reader))

    async def _read(self, reader: kafka.Reader) -> None:
        while True:
            records = await reader.poll(timeout_s=0.1, max_records=5000)
            now = time.monotonic()
            for r in records:
                key = (r.key or b"").decode()
                if key in self.answered:
                    continue
                self.answered[key] = r.timestamp
                self.arrived[key] = now
                if r.topic != self._verdicts:
                    self.dead += 1
                elif self._parse:
                    verdict = json.loads(r.value or b"{}")
                    decision = str(verdict.get("decision"))
                    self.decisions[decision] = self.decisions.get(decision, 0) + 1
                    if isinstance(verdict.get("timings_ms"), dict):
                        self.timings.append(verdict["timings_ms"])
                        self.timings_by_id[key] = verdict["timings_ms"]

    async def wait_for(self, count: int, deadline: float) -> bool:
        """True once `count` answers are in; False at the monotonic `deadline`."""
        while len(self.answered) < count:
            if time.monotonic() >= deadline:
                return False
            if self._task is not None and self._task.done():
                self._task.result()  # re-raise what stopped the reader
            await asyncio.sleep(POLL_S)
        return True

    async def stop(self) -> None:
        await kafka.close_reader(self._task, self._reader)
