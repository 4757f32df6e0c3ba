"""bench e2e's CPU and core accounting: /proc readings, the per-stage budget's arithmetic and
the core split."""

from __future__ import annotations

import os
import socket
import time

import pytest

from moderator.bench.e2e.usage import (
    Snapshot,
    core_list,
    cpu_report,
    cpu_s,
    listening_pids,
    parse_cores,
    split_cores,
    stage_budget,
    stage_seconds,
)

linux = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc")


@linux
def test_cpu_of_this_process_and_its_main_thread_grows_with_work() -> None:
    before, main_before = cpu_s(os.getpid()), cpu_s(os.getpid(), os.getpid())
    end = time.perf_counter() + 0.1
    while time.perf_counter() < end:
        pass
    assert cpu_s(os.getpid()) - before >= 0.05
    assert cpu_s(os.getpid(), os.getpid()) - main_before >= 0.05
    assert cpu_s(2**22 + 12345) == 0.0  # no such process


@linux
def test_the_broker_is_found_by_its_listening_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert os.getpid() in listening_pids(listener.getsockname()[1])


def test_cpu_report_divides_each_group_by_the_events_answered() -> None:
    before = Snapshot(10.0, 1.0, 0.5, 2.0, 3.0, 0.25)
    after = Snapshot(20.0, 2.0, 1.0, 6.0, 4.0, 0.75)
    cpu = cpu_report(before, after, 1000)
    assert cpu["service_ms"] == pytest.approx(5.5)  # loop 1 + threads 0.5 + workers 4 s
    assert (cpu["service_loop_ms"], cpu["service_decode_processes_ms"]) == (1.0, 4.0)
    assert (cpu["broker_ms"], cpu["load_ms"], cpu["seconds"]) == (1.0, 0.5, 10.0)


def test_stage_budget_names_what_the_stages_left_unclaimed() -> None:
    text = (
        'moderator_cpu_seconds_total{stage="decode",where="worker"} 3.0\n'
        'moderator_cpu_seconds_total{stage="hash",where="worker"} 0.125\n'
        'moderator_cpu_seconds_total{stage="hash",where="loop"} 0.125\n'
        'moderator_cpu_seconds_total{stage="score",where="loop"} 0.25\n'
        'moderator_cpu_seconds_total{stage="base64",where="worker"} 0.125\n'
        'moderator_cpu_seconds_total{stage="infer",where="thread"} 0.5\n'
        'moderator_cpu_seconds_created{stage="infer",where="thread"} 1.7e9\n'
    )
    after = stage_seconds([text, text])  # two replicas
    assert after[("decode", "worker")] == 6.0
    assert after[("base64", "worker")] == 0.25
    assert len(after) == 6
    cpu = {
        "events": 1000,
        "service_loop_ms": 2.0,
        "service_threads_ms": 1.5,
        "service_decode_processes_ms": 7.0,
    }
    budget = stage_budget({("decode", "worker"): 1.0}, after, cpu)
    assert budget["decode"] == 5000.0  # (6 - 1) s over 1000 events
    assert budget["hash"] == 500.0  # on the loop and in the workers
    assert budget["base64"] == 250.0
    assert budget["loop_other"] == 1250.0  # the loop's 2 ms less score 0.5 and hash 0.25
    assert budget["threads_other"] == 500.0
    assert budget["workers_other"] == 1500.0  # 7 ms less decode 5, hash 0.25, base64 0.25
    assert budget["resize"] == 0.0


def test_core_lists_round_trip() -> None:
    assert parse_cores("0-3,8") == {0, 1, 2, 3, 8}
    assert core_list({0, 1, 2, 3, 8, 10, 11}) == "0-3,8,10-11"
    assert core_list(parse_cores("5")) == "5"


@linux
def test_split_cores_leaves_the_rest_to_the_service() -> None:
    mine = sorted(os.sched_getaffinity(0))
    assert split_cores(None, None) is None
    if len(mine) >= 2:
        split = split_cores(str(mine[0]), None)
        assert split is not None
        assert split["service"] == set(mine[1:])
    with pytest.raises(ValueError, match="not on this host"):
        split_cores("100000", None)
    with pytest.raises(ValueError, match="no cores left"):
        split_cores(core_list(set(mine)), None)
