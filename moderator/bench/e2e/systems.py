"""The systems under test, as fleets of processes: ours (`moderator serve`, one process per
replica, in one consumer group) and the naive peer (`moderator.bench.naive`, one process).

Both run with only the settings the bench gives them: the caller's own MODERATOR_* settings
are left out, so a figure never depends on the shell it was measured from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

from moderator.bench.e2e.options import E2EOptions
from moderator.harness.fleet import Fleet, Replica, kafka_env


def service_env(
    opts: E2EOptions,
    replica: int,
    onnx_dir: Path,
    policy: Path,
    topics: dict[str, str],
    group: str,
    port: int,
) -> dict[str, str]:
    """The settings of service replica `replica`: every setting the bench means, the host's
    cores shared out between replicas, GPUs dealt out in turn, then `--service-env`."""
    env = kafka_env(opts.broker, topics, group) | {
        "MODERATOR_REDIS__ENABLED": "false",
        "MODERATOR_MODEL__PATH": str(onnx_dir),
        "MODERATOR_MODEL__PROVIDERS": json.dumps(list(opts.providers)),
        "MODERATOR_MODEL__VERIFY_HASHES": "false",
        "MODERATOR_POLICY__PATH": str(policy),
        "MODERATOR_PIPELINE__FETCH_ALLOW_PRIVATE": "true",  # the local image server
        "MODERATOR_HTTP__HOST": "127.0.0.1",
        "MODERATOR_HTTP__PORT": str(port),
        "MODERATOR_LOG__LEVEL": "WARNING",
    }
    if opts.replicas > 1 or opts.service_cores:
        cores = len(opts.service_cores or ()) or os.cpu_count() or 1
        env["MODERATOR_PIPELINE__DECODE_WORKERS"] = str(max(1, cores // opts.replicas))
    if opts.replica_devices:
        device = opts.replica_devices[replica % len(opts.replica_devices)]
        env["MODERATOR_MODEL__DEVICE_IDS"] = json.dumps([device])
    return env | opts.service_env


async def start_ours(
    opts: E2EOptions,
    onnx_dir: Path,
    policy: Path,
    topics: dict[str, str],
    group: str,
    log_dir: Path,
) -> Fleet:
    """`opts.replicas` service processes in one consumer group, as replicas on one host;
    ready when their /readyz says so."""

    def settings(replica: int, port: int) -> dict[str, str]:
        return service_env(opts, replica, onnx_dir, policy, topics, group, port)

    name = "moderator serve" if opts.replicas == 1 else f"moderator serve ×{opts.replicas}"
    fleet = Fleet(
        {},
        log_dir,
        replica_env=settings,
        name=name,
        supervise=False,
        inherit_settings=False,
        cores=opts.service_cores,
    )
    await fleet.scale(opts.replicas)
    return fleet


async def _start_peer(
    module: str,
    name: str,
    batch: int | None,
    opts: E2EOptions,
    checkpoint: Path,
    policy: Path,
    topics: dict[str, str],
    group: str,
    log_dir: Path,
) -> Fleet:
    """A peer (`python -m MODULE`) on the phase's topics; ready once it has written its ready
    file (it has partitions). `batch` None leaves the peer its own batch size."""
    ready_file = log_dir.with_suffix(".ready")
    ready_file.unlink(missing_ok=True)
    args = [
        *("--bootstrap", opts.broker, "--input", topics["input"]),
        *("--verdicts", topics["verdicts"], "--group", group),
        *("--checkpoint", str(checkpoint), "--policy", str(policy)),
        *(("--batch", str(batch)) if batch is not None else ()),
        *("--threads", str(opts.peer_threads), "--ready-file", str(ready_file)),
    ]

    def ready(_replica: Replica) -> bool:
        return ready_file.is_file()

    fleet = Fleet(
        {},
        log_dir,
        ready=ready,
        name=name,
        command=("-m", module, *args),
        supervise=False,
        inherit_settings=False,
        cores=opts.service_cores,
    )
    await fleet.scale(1)
    return fleet


async def start_naive(
    opts: E2EOptions,
    checkpoint: Path,
    policy: Path,
    topics: dict[str, str],
    group: str,
    log_dir: Path,
) -> Fleet:
    """The naive peer (`moderator.bench.naive`), `--peer-batch` events at a time."""
    return await _start_peer(
        "moderator.bench.naive",
        "naive peer",
        opts.peer_batch,
        opts,
        checkpoint,
        policy,
        topics,
        group,
        log_dir,
    )


async def start_strong(
    opts: E2EOptions,
    checkpoint: Path,
    policy: Path,
    topics: dict[str, str],
    group: str,
    log_dir: Path,
) -> Fleet:
    """The strong peer (`moderator.bench.strong`). Its batch is its own (64) unless
    `--peer-batch` asks for more than 1."""
    return await _start_peer(
        "moderator.bench.strong",
        "strong peer",
        opts.peer_batch if opts.peer_batch > 1 else None,
        opts,
        checkpoint,
        policy,
        topics,
        group,
        log_dir,
    )


START_PEER: Final = {"naive": start_naive, "strong": start_strong}
"""How each peer `bench e2e --peer` names is started."""
