"""CPU time per stage of the data path, counted on the thread that does the work.

`serve` exports it as `moderator_cpu_seconds_total{stage}`, so `moderator bench e2e` (or a
dashboard) divides by events answered and gets a CPU budget per event and stage. The clock is
the calling thread's CPU time (`time.thread_time`), not wall time: waiting on a lock, a pipe or
the GPU costs nothing here, which is the point.

Stages, in path order (what the event loop spends outside them, aiokafka's fetch above all,
is what `moderator bench e2e` reports as `loop_other`):
  handoff    sending an event to a decode process and taking its answer back (loop side)
  parse      a record's JSON or CloudEvent headers (in a decode process or on the loop)
  base64     decoding an inline image's base64
  hash       sha256 of the image bytes
  decode     image bytes to pixels in a decode process (Pillow, libspng)
  resize     pixels to the model's input size, on the CPU
  batch      stacking pixels into a batch and handing it to the model thread
  gpu_decode the GPU decoder's host side (nvImageCodec calls), in its own thread
  infer      the model call's host side, on the thread that calls it
  score      the policy over a batch's embeddings
  serialize  the verdict record's JSON
  produce    handing verdicts to the Kafka producer (not the wait for the ack)
  commit     the commit loop's bookkeeping: accepting records, backpressure, commits
"""

from __future__ import annotations

import time
from typing import Final

STAGES: Final = (
    "handoff",
    "parse",
    "base64",
    "hash",
    "decode",
    "resize",
    "batch",
    "gpu_decode",
    "infer",
    "score",
    "serialize",
    "produce",
    "commit",
)

thread_cpu = time.thread_time
"""Seconds of CPU this thread has used (CLOCK_THREAD_CPUTIME_ID)."""


class Tally:
    """Per-stage CPU seconds gathered where no sensor is at hand (a decode process), to be
    handed back with the work's result and reported by the caller."""

    __slots__ = ("_last", "seconds")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = thread_cpu()

    def lap(self, stage: str) -> None:
        """Charge the CPU used since the previous lap (or creation) to `stage`."""
        now = thread_cpu()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + (now - self._last)
        self._last = now
