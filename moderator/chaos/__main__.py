"""`python -m moderator.chaos`: run the fault scenarios on a private stack, write the report.

    python -m moderator.chaos --events 20000 --report docs/reliability.md

Exit status 0 when every scenario met its targets (0 lost, duplicates bounded and identical,
expected outcomes, clean final exits), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from moderator.chaos import hostile
from moderator.chaos import scenarios as sc
from moderator.chaos.report import render
from moderator.harness.ports import free_port_block
from moderator.harness.stack import Stack


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m moderator.chaos", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="events per scenario")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs in the kill scenario")
    parser.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="events/s for the streamed scenarios (broker, redis, rebalance)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(sc.SCENARIOS),
        help=f"comma-separated subset of {','.join(sc.SCENARIOS)}",
    )
    parser.add_argument("--report", type=Path, help="write the markdown report here")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, help="logs and broker state (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser


async def _run(args: argparse.Namespace, work: Path) -> list[sc.Result]:
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = sorted(set(names) - set(sc.SCENARIOS))
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(unknown)}")
    kafka_port = free_port_block(3)  # client, controller, (secure)
    redis_port = free_port_block(1, 16100, 16900)
    stack = Stack(kafka_port, redis_port, work / "services")
    print(f"chaos: private stack Kafka 127.0.0.1:{kafka_port}, Redis 127.0.0.1:{redis_port}")
    await stack.script("up")
    ctx = sc.Context(stack, work, seed=args.seed)
    n = args.events
    drivers: dict[str, Callable[[], Coroutine[Any, Any, sc.Result]]] = {
        "kill": lambda: sc.kill(ctx, n, kills=args.kills),
        "broker": lambda: sc.broker(ctx, n, rate=args.rate),
        "redis": lambda: sc.redis(ctx, n, rate=args.rate),
        "rebalance": lambda: sc.rebalance(ctx, n, rate=args.rate),
        "slow-fetch": lambda: sc.slow_fetch(ctx, n),
        "decode-kill": lambda: hostile.decode_kill(ctx, n, kills=args.kills),
        "fuzz": lambda: hostile.fuzz(ctx, max(1000, n // 4)),
    }
    results = []
    try:
        for name in names:
            results.append(await drivers[name]())
    finally:
        await asyncio.to_thread(stack.down, remove=not args.keep)
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The checker and producer log every refused connection while the broker is down on
    # purpose; their own failures still surface as exceptions.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="moderator-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = asyncio.run(_run(args, work))
    command = "python -m moderator.chaos " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = render(results, command, args.events)
    if args.report:
        args.report.write_text(report)
        print(f"chaos: report written to {args.report}")
    else:
        print(report)
    ok = all(r.ok for r in results)
    print(
        f"chaos: {'all scenarios passed' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s"
    )
    if ok and not args.keep and args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"chaos: logs kept in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
