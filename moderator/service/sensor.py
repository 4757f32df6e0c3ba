"""What `serve` reports, as hooks: the route, the commit loop and the stages call a `Sensor`,
and the sensor alone knows the Prometheus metrics behind each hook and their labels."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from moderator.kafka.types import TP
from moderator.service.metrics import Metrics


class Sensor:
    """Hooks onto one `Metrics` registry. Callers pass label values already bounded (a
    surface label is one of the policy's surfaces, `none` or `other`: see the route)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    # -- the commit loop ---------------------------------------------------------------------

    def on_received(self, topic: str) -> None:
        self.metrics.events.labels(topic).inc()

    def on_in_flight(self, events: int, held_bytes: int) -> None:
        self.metrics.in_flight.set(events)
        self.metrics.budget_used.set(held_bytes)

    def on_paused(self, partitions: int) -> None:
        self.metrics.paused.set(partitions)

    def on_commit(self, ok: bool) -> None:
        self.metrics.commits.labels("ok" if ok else "failed").inc()

    def on_lag(self, part: TP, lag: int) -> None:
        self.metrics.lag.labels(part[0], str(part[1])).set(max(lag, 0))

    def on_revoked(self, part: TP) -> None:
        # A revoked partition's lag is its next owner's to report.
        with contextlib.suppress(KeyError):
            self.metrics.lag.remove(part[0], str(part[1]))

    def on_loop_lag(self, seconds: float) -> None:
        self.metrics.loop_lag.observe(seconds)

    # -- one event ---------------------------------------------------------------------------

    def on_stage(self, stage: str, seconds: float) -> None:
        self.metrics.stage_seconds.labels(stage).observe(seconds)

    def on_cpu(self, stage: str, seconds: float, where: str = "loop") -> None:
        """CPU seconds spent in `stage` (one of `moderator.cpu.STAGES`) on the event loop
        (`loop`), another thread of the service's process (`thread`) or a decode process
        (`worker`)."""
        self.metrics.cpu_seconds.labels(stage, where).inc(max(0.0, seconds))

    def on_cpu_tally(self, seconds: Mapping[str, float], where: str = "loop") -> None:
        for stage, spent in seconds.items():
            self.metrics.cpu_seconds.labels(stage, where).inc(max(0.0, spent))

    def on_decode(self, where: str) -> None:
        """`cpu`, `gpu`, or `gpu_refused` (the GPU declined and the CPU decoded)."""
        self.metrics.decodes.labels(where).inc()

    def on_verdict(
        self,
        decision: str,
        surface: str,
        matches: list[tuple[str, str]],
        shadow: list[tuple[str, str]],
        *,
        truncated: bool,
    ) -> None:
        """`matches`/`shadow`: (concept id, action) pairs; `surface`: a bounded label."""
        self.metrics.verdicts.labels(decision, surface).inc()
        for concept, action in matches:
            self.metrics.matches.labels(concept, action, "enforce", surface).inc()
        for concept, action in shadow:
            self.metrics.matches.labels(concept, action, "shadow", surface).inc()
        if truncated:
            self.metrics.verdicts_truncated.inc()

    def on_unknown_surface(self) -> None:
        self.metrics.unknown_surfaces.inc()

    def on_dead_letter(self, reason: str) -> None:
        self.metrics.dlq.labels(reason).inc()

    def on_answered(self, seconds_since_produced: float) -> None:
        self.metrics.end_to_end.observe(max(0.0, seconds_since_produced))

    # -- stages and resources ----------------------------------------------------------------

    def on_batch(self, size: int, queued_s: float, inference_s: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.stage_seconds.labels("queue").observe(queued_s)
        self.metrics.stage_seconds.labels("inference").observe(inference_s)

    def on_cache(self, kind: str, result: str, count: int) -> None:
        self.metrics.cache.labels(kind, result).inc(count)
        self.metrics.cache_up.set(0 if result == "error" else 1)

    def on_policy(self, ok: bool, name: str | None, version: str | None, error: str | None) -> None:
        self.metrics.reloads.labels("ok" if ok else "failed").inc()
        self.metrics.policy_reload_failing.set(0 if ok else 1)
        if ok and version:
            self.metrics.policy_info.info({"name": name or "", "version": version})

    def on_model(self, info: Mapping[str, Any]) -> None:
        self.metrics.model_info.info({k: str(v) for k, v in info.items()})

    def on_pool_replaced(self, which: str) -> None:
        self.metrics.decode_pool_replaced.labels(which).inc()
