"""Per-stage CPU clocks: laps charge the stage that ran, and only the calling thread's CPU."""

from __future__ import annotations

import threading
import time

from moderator.cpu import Tally


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_laps_charge_each_stage_its_own_cpu() -> None:
    tally = Tally()
    _spin(0.02)
    tally.lap("decode")
    time.sleep(0.05)  # waiting is not CPU
    _spin(0.01)
    tally.lap("resize")
    tally.lap("resize")  # a second lap adds to the first
    assert 0.015 < tally.seconds["decode"] < 0.05
    assert 0.005 < tally.seconds["resize"] < 0.04


def test_a_lap_counts_only_this_threads_cpu() -> None:
    tally = Tally()
    other = threading.Thread(target=_spin, args=(0.1,))
    other.start()
    other.join()  # another thread's 0.1 s of CPU is not ours
    _spin(0.01)
    tally.lap("score")
    assert 0.005 < tally.seconds["score"] < 0.05
