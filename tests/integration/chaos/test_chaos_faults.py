"""Bounded fault scenarios (the full run is `make chaos`, see docs/reliability.md).

Each runs a few hundred events on the private stack with one or two faults of its kind and
holds the service to the same targets as the full run: nothing lost, duplicates within the
bound and identical, every event's outcome as planned, a clean exit at the end, and every
fault injected while events were still being answered.
"""

from __future__ import annotations

import re

from moderator.chaos import hostile
from moderator.chaos import scenarios as sc
from moderator.chaos.scenarios import Context, Result

# Streamed scenarios produce at this rate so that their faults, which take seconds each
# (a broker restart ~10 s), meet a live stream on this 2-core machine.
RATE = 40.0


def _assert_targets(result: Result, faults: int) -> None:
    tally = result.tally
    detail = f"{result}\n" + "\n".join(result.faults)
    assert len(result.faults) == faults, detail
    assert result.mid_run, detail
    assert tally.lost == 0, detail
    assert tally.wrong_outcome == 0, detail
    assert tally.unknown == 0, detail
    assert tally.inconsistent == 0, detail
    assert tally.extra_copies <= result.dup_bound, detail
    assert result.stop_codes == [0], detail
    assert not result.problems, detail
    assert sum(tally.dlq_by_reason.values()) > 0, "the malformed events reached the DLQ"


async def test_sigkill_twice_loses_nothing(chaos: Context) -> None:
    # A backlog large enough that the replacement is still working at the second kill,
    # though it answers hundreds of events per second once it has its partitions.
    result = await sc.kill(chaos, 1500, kills=2)
    _assert_targets(result, faults=2)
    assert result.restarts == 0  # only the kills stopped it


async def test_broker_stop_and_kill_lose_nothing(chaos: Context) -> None:
    result = await sc.broker(chaos, 1400, rate=RATE, outage_s=3.0)
    _assert_targets(result, faults=2)


async def test_redis_stop_and_freeze_lose_nothing(chaos: Context) -> None:
    result = await sc.redis(chaos, 1000, rate=RATE, outage_s=2.0)
    _assert_targets(result, faults=2)
    assert result.restarts == 0, "Redis is optional: its faults never stop the service"
    assert result.tally.duplicated_ids == 0
    # Both faults were met by the service's cache, and it recovered from each.
    seen, back = (int(n) for n in re.findall(r"(\d+)x", " ".join(result.notes)))
    assert seen >= 2, result.notes
    assert back >= 2, result.notes


async def test_scale_1_3_1_loses_nothing(chaos: Context) -> None:
    result = await sc.rebalance(chaos, 900, rate=RATE)
    _assert_targets(result, faults=2)
    assert "all 3 held partitions" in result.faults[0]
    assert result.restarts == 0


async def test_black_holed_urls_go_to_the_dlq_without_stalling_the_rest(chaos: Context) -> None:
    result = await sc.slow_fetch(chaos, 500, share=0.04)
    _assert_targets(result, faults=1)
    assert result.tally.dlq_by_reason.get("fetch_failed", 0) > 0
    assert result.tally.longest_gap_s < sc.fetch_deadline_s()
    assert f"attempts (x-attempts) of the failed fetches: {sc.FETCH_RETRIES + 1}-" in " ".join(
        result.notes
    )


async def test_decode_processes_killed_twice_cost_no_event(chaos: Context) -> None:
    result = await hostile.decode_kill(chaos, 1500, kills=2)
    _assert_targets(result, faults=2)
    assert result.restarts == 0
    assert result.tally.duplicated_ids == 0  # nothing was re-delivered: the replica lived
    assert "decode_crashed" not in result.tally.dlq_by_reason


async def test_fuzzed_records_are_each_answered_once(chaos: Context) -> None:
    result = await hostile.fuzz(chaos, 1200)
    tally = result.tally
    detail = f"{result}"
    assert result.events == 1200
    assert tally.lost == 0, detail
    assert tally.unknown == 0, detail
    assert tally.wrong_outcome == 0, detail  # none dead-lettered as internal_error
    assert tally.duplicated_ids == 0, detail
    assert result.restarts == 0, detail
    assert result.stop_codes == [0], detail
    assert not result.problems, detail
