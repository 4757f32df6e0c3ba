"""Where a model directory is: a path, or the name `demo` for the model shipped in the package."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from moderator.embed.manifest import MANIFEST_NAME
from moderator.errors import ModelError

__all__ = ["DEMO_DIR", "DEMO_NAME", "resolve_model_path"]

DEMO_NAME: Final = "demo"
DEMO_DIR: Final = Path(__file__).resolve().parent.parent / "models" / "demo"


def resolve_model_path(path: str | Path) -> Path:
    """The exported model directory `path` names; ModelError when it holds no manifest."""
    if str(path) == DEMO_NAME:
        if not (DEMO_DIR / MANIFEST_NAME).is_file():
            raise ModelError(
                f"the demo model is not installed ({DEMO_DIR / MANIFEST_NAME} is missing); "
                "point the model path at an exported directory (`moderator export`)"
            )
        return DEMO_DIR
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ModelError(f"model directory {directory} does not exist")
    if not (directory / MANIFEST_NAME).is_file():
        raise ModelError(
            f"{directory} is not an exported model (no {MANIFEST_NAME}); "
            "create one with `moderator export`"
        )
    return directory
