"""Every command ends an error the same way: `error: …` on stderr, 2 for a wrong call (bad
options or settings), 1 for work that failed."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from moderator.cli import app
from moderator.errors import ConfigError, ModelError, ModeratorError, PolicyError
from moderator.exits import FAILED, USAGE, fail

runner = CliRunner()


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConfigError("bad setting"), USAGE),
        (ModelError("no model"), FAILED),
        (PolicyError(["policy.yaml:1: version: unknown"]), FAILED),
        (ModeratorError("no usable images"), FAILED),
    ],
)
def test_a_wrong_call_exits_2_and_failed_work_1(
    exc: Exception, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_ = fail(exc)
    assert isinstance(exit_, typer.Exit)
    assert exit_.exit_code == code
    assert capsys.readouterr().err == f"error: {exc}\n"


def test_the_codes_are_the_same_in_every_command_group(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("missing.jpg,weapons.firearm\n")
    calls = {
        "root": ["export", "--precision", "fp8"],
        "policy": [
            "policy",
            "test",
            "-m",
            "demo",
            "-p",
            "policies/demo.yaml",
            "--labels",
            str(labels),
        ],
        "bench": ["bench", "e2e", "--service-env", "NOT_MODERATOR=1"],
    }
    for group, args in calls.items():
        result = runner.invoke(app, args)
        assert result.exit_code == USAGE, (group, result.output)
        assert result.output.startswith("error: "), (group, result.output)


def test_the_root_help_states_the_codes() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Exit codes: 0 done, 1 the work failed, 2 bad options or settings." in result.output
