"""The harness fleet with stand-in commands (no broker, no model): how replicas are started,
told ready, found dead and stopped."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from moderator.errors import ConfigError
from moderator.harness.fleet import Fleet, Replica, child_env

# A replica that prints its settings, then waits to be stopped.
_WAITS = ("-c", "import os, time; print(os.environ['MODERATOR_X']); time.sleep(60)")


def test_child_env_can_leave_the_callers_settings_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATOR_LOG__LEVEL", "DEBUG")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    inherited = child_env({"MODERATOR_X": "1"})
    clean = child_env({"MODERATOR_X": "1"}, inherit_settings=False)
    assert inherited["MODERATOR_LOG__LEVEL"] == "DEBUG"
    assert "MODERATOR_LOG__LEVEL" not in clean
    assert clean["MODERATOR_X"] == "1"
    assert clean["PATH"] == os.environ["PATH"]
    # The children import this very checkout first, then what the caller had.
    code_root = str(Path(__file__).resolve().parents[3])
    assert clean["PYTHONPATH"].split(os.pathsep) == [code_root, "/elsewhere"]
    # Unless the settings name another checkout to run (bench e2e --service-env PYTHONPATH=).
    other = child_env({"PYTHONPATH": "/before"}, inherit_settings=False)
    assert other["PYTHONPATH"].split(os.pathsep) == ["/before", code_root, "/elsewhere"]
    assert other["PYTHONSAFEPATH"] == "1"  # not the working directory's checkout either


async def test_replicas_get_their_own_settings_and_ports(tmp_path: Path) -> None:
    ready_file = tmp_path / "ready"

    def ready(replica: Replica) -> bool:
        return ready_file.is_file() and replica.log.read_text().strip() != ""

    fleet = Fleet(
        {"MODERATOR_X": "shared"},
        tmp_path,
        replica_env=lambda index, port: {"MODERATOR_X": f"{index}:{port}"},
        ready=ready,
        command=_WAITS,
        supervise=False,
    )
    await fleet.scale(2)
    try:
        ready_file.touch()
        first, last = await fleet.wait_ready(30)
        assert first <= last
        ports = [r.port for r in fleet.replicas]
        assert None not in ports
        assert len(set(ports)) == 2
        logged = [r.log.read_text().strip() for r in fleet.replicas]
        assert logged == [f"{r.index}:{r.port}" for r in fleet.replicas]
        assert fleet.urls("/metrics") == [f"http://127.0.0.1:{p}/metrics" for p in ports]
        fleet.check_alive()
    finally:
        codes = await fleet.stop()
    assert codes == [-15, -15]  # not `serve`: signalled at once, with no handler of its own


async def test_a_replica_that_exits_is_an_error_unsupervised(tmp_path: Path) -> None:
    fails = ("-c", "import sys; print('no model here', file=sys.stderr); sys.exit(3)")
    never = Fleet(
        {}, tmp_path, ready=lambda _: False, name="stand-in", command=fails, supervise=False
    )
    await never.scale(1)
    try:
        with pytest.raises(ConfigError, match=r"stand-in exited with 3(.|\n)*no model here"):
            await never.wait_ready(30)
    finally:
        await never.stop()
    assert never.restarts == 0


async def test_a_replica_that_exits_is_restarted_supervised(tmp_path: Path) -> None:
    once = (
        "-c",
        f"import pathlib, sys, time; p = pathlib.Path({str(tmp_path / 'ran')!r}); "
        "first = not p.exists(); p.touch(); sys.exit(5) if first else time.sleep(60)",
    )
    fleet = Fleet({}, tmp_path, command=once)
    await fleet.scale(1)
    try:
        for _ in range(100):
            if fleet.restarts:
                break
            await asyncio.sleep(0.1)
        assert fleet.restarts == 1
        assert fleet.crash_codes == [5]
    finally:
        await fleet.stop()
