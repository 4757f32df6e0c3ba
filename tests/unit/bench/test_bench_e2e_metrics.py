"""How `bench e2e` reads its replicas' Prometheus texts and options."""

from __future__ import annotations

from typer.testing import CliRunner

from moderator.bench.cli import app
from moderator.bench.e2e import _batch_mean


def test_mean_batch_is_weighted_over_replicas() -> None:
    one = "moderator_batch_size_sum 300.0\nmoderator_batch_size_count 10.0\n"
    two = "moderator_batch_size_sum 100.0\nmoderator_batch_size_count 30.0\n"
    assert _batch_mean([one, two]) == 400.0 / 40.0
    assert _batch_mean([one, ""]) == 30.0  # a replica that could not be scraped
    assert _batch_mean(["", ""]) is None


def test_replicas_must_be_positive() -> None:
    result = CliRunner().invoke(app, ["e2e", "--replicas", "0"])
    assert result.exit_code == 2
    assert "--replicas must be >= 1" in result.output
