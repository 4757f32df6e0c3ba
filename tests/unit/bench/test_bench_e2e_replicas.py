"""`bench e2e`'s replicas: their environments, options and Prometheus texts."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from moderator.bench.cli import app
from moderator.bench.e2e import E2EOptions
from moderator.bench.e2e.measures import batch_mean
from moderator.bench.e2e.phases import rate_since
from moderator.bench.e2e.systems import service_env
from moderator.harness.ports import free_port


def test_mean_batch_is_weighted_over_replicas() -> None:
    one = "moderator_batch_size_sum 300.0\nmoderator_batch_size_count 10.0\n"
    two = "moderator_batch_size_sum 100.0\nmoderator_batch_size_count 30.0\n"
    assert batch_mean([one, two]) == 400.0 / 40.0
    assert batch_mean([one, ""]) == 30.0  # a replica that could not be scraped
    assert batch_mean(["", ""]) is None


def test_replicas_must_be_positive() -> None:
    result = CliRunner().invoke(app, ["e2e", "--replicas", "0"])
    assert result.exit_code == 2
    assert "--replicas must be >= 1" in result.output


def _env(opts: E2EOptions, replica: int) -> dict[str, str]:
    topics = {"input": "in", "verdicts": "out", "dlq": "dlq"}
    return service_env(opts, replica, Path("/m"), Path("/p.yaml"), topics, "g", 8000 + replica)


def test_one_replica_keeps_the_services_own_defaults() -> None:
    env = _env(E2EOptions(), 0)
    assert env["MODERATOR_KAFKA__GROUP_ID"] == "g"
    assert env["MODERATOR_HTTP__PORT"] == "8000"
    assert "MODERATOR_PIPELINE__DECODE_WORKERS" not in env
    assert "MODERATOR_MODEL__DEVICE_IDS" not in env


def test_replicas_share_the_cores_and_take_gpus_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    opts = E2EOptions(replicas=4, replica_devices=(0, 1))
    envs = [_env(opts, i) for i in range(4)]
    assert {e["MODERATOR_PIPELINE__DECODE_WORKERS"] for e in envs} == {"4"}
    assert [e["MODERATOR_MODEL__DEVICE_IDS"] for e in envs] == ["[0]", "[1]", "[0]", "[1]"]
    assert len({e["MODERATOR_HTTP__PORT"] for e in envs}) == 4


def test_service_env_option_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATOR_LOG__LEVEL", "DEBUG")  # the caller's own settings are dropped
    opts = E2EOptions(replicas=2, service_env={"MODERATOR_PIPELINE__DECODE_WORKERS": "7"})
    env = _env(opts, 1)
    assert env["MODERATOR_PIPELINE__DECODE_WORKERS"] == "7"
    assert env["MODERATOR_LOG__LEVEL"] == "WARNING"


def test_rate_after_all_replicas_are_ready_counts_only_later_answers() -> None:
    arrived = {f"e{i}": 10.0 + i * 0.5 for i in range(10)}  # 10.0 … 14.5
    # From 12.0 to 14.5: the answers at 12.5, 13.0, 13.5, 14.0, 14.5 over 2.5 s.
    assert rate_since(arrived, 12.0, 14.5) == pytest.approx(5 / 2.5)
    assert rate_since(arrived, 14.0, 14.5) is None  # under a second: no figure
    assert rate_since(arrived, 12.0, None) is None  # the run did not complete


_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@pytest.mark.skipif(not _PORT_RANGE.exists(), reason="Linux's ephemeral port range")
def test_replica_ports_come_from_below_the_ephemeral_range() -> None:
    # A port the kernel hands to client connections could be taken between check and bind.
    low = int(_PORT_RANGE.read_text().split()[0])
    ports = [free_port() for _ in range(20)]
    assert all(1024 <= port < low for port in ports)
    assert len(set(ports)) == len(ports)  # never the same port twice, as replicas start together
