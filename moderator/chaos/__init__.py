"""Fault injection against the real broker and Redis: `python -m moderator.chaos`.

A workload of N events with unique ids goes to a fresh input topic; `moderator serve`
subprocesses answer it while a scenario injects faults (SIGKILL, broker stop, Redis stop,
rebalances, a black-holing image server); a checker reads the verdict and dead-letter topics
and counts what was lost, what was duplicated and whether duplicates agree. The bounded
versions run in `make test` (tests/integration/chaos/); the full run writes
docs/reliability.md. The replicas, the private stack, topics and the image server come from
`moderator.harness`, which the end-to-end benchmark shares; neither is imported by `serve`.
"""
