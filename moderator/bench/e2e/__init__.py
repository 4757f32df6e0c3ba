"""`moderator bench e2e`: events through a Kafka broker to verdicts, ours vs the naive peer.

Phases, each on fresh topics and a fresh consumer group:

1. **Max load, ours.** N events (inline base64 JSON; `--url-fraction` of them by URL from a
   local HTTP server) are produced before the service starts. `moderator serve` is started as
   a subprocess (its own GIL, as deployed; `--replicas` starts several in one group); the clock
   starts when `/readyz` says one has joined the group (model loading is not counted, but
   replicas still loading count against the rate) and stops when the N-th answer (verdict or
   DLQ record) is read back: verdicts/s = N / that time.
2. **Max load, naive.** The same N events (same topic, its own group), `naive.py` as a
   subprocess; the clock starts when it has partitions.
3. **Half load, ours** (and the peer's, `--peer-latency`): events are produced at 50% of the
   phase-1 rate for `--duration` seconds by `--producers` processes while the service runs;
   latency per event = the verdict record's Kafka timestamp (CreateTime: the service's
   producer stamps it when it sends the verdict) − the time the load generator sent the
   event. The first 20% of the window (at most 2 s) is left out as warm-up. Preloaded events
   have no meaningful latency, which is why this is its own phase.

Redis is off for the service: the image pool repeats (`--unique` images), and a cache hit
would skip decode and inference that the peer has to do.

Modules: `options` (what to run), `load` (the load generator), `answers` (reading verdicts
back), `systems` (ours and the peer as fleets of processes, `moderator.harness.fleet`),
`phases` (timing each), `measures` (figures beyond the rate), `summary` (results and notes),
`run` (all of it in order).
"""

from __future__ import annotations

from moderator.bench.e2e.options import E2EOptions, default_events, percentile
from moderator.bench.e2e.run import run_e2e_bench

__all__ = ["E2EOptions", "default_events", "percentile", "run_e2e_bench"]
