"""How a command ends on an error: one `error: …` line on stderr, and an exit code that says
whether the call or the work was at fault, the same for every command.

- 0: done.
- 1: the work failed: a model that will not load, a broker that does not answer, images or
  policies that do not pass.
- 2: the call was wrong: bad options or settings (`ConfigError`), as click answers an unknown
  option, so a script can tell "fix the command line" from "try again or look at the input".
"""

from __future__ import annotations

from typing import Final

import typer

from moderator.errors import ConfigError, KafkaFailed, ModeratorError

__all__ = ["EXIT_CODES", "FAILED", "REPORTED", "USAGE", "fail"]

FAILED: Final = 1
USAGE: Final = 2
EXIT_CODES: Final = "Exit codes: 0 done, 1 the work failed, 2 bad options or settings."
REPORTED: Final = (ModeratorError, KafkaFailed)
"""What a command reports as one error line, not a traceback: its own errors, and Kafka's."""


def fail(exc: Exception) -> typer.Exit:
    """Print `exc` as an error and return the exit to raise: `raise fail(exc) from exc`."""
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(USAGE if isinstance(exc, ConfigError) else FAILED)
