"""`moderator score` prints the service's verdicts: each one valid against the committed schema."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]

from moderator.commands.score import score_files
from moderator.demo.shapes import generate
from moderator.errors import Reason

ROOT = Path(__file__).resolve().parents[3]


def test_scored_files_are_schema_valid_verdicts_and_bad_ones_name_their_reason(
    tmp_path: Path,
) -> None:
    paths = []
    for i, sample in enumerate(generate(6, seed=1)):
        out = io.BytesIO()
        sample.image.save(out, format="PNG")
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(out.getvalue())
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    results = asyncio.run(
        score_files([*paths, broken], model="demo", policy=ROOT / "policies" / "demo.yaml")
    )
    schema = json.loads((ROOT / "deploy" / "schemas" / "verdict.schema.json").read_text("utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    *verdicts, error = results
    for path, verdict in zip(paths, verdicts, strict=True):
        validator.validate(json.loads(json.dumps(verdict, allow_nan=False)))
        assert verdict["id"] == str(path)
        assert "truncated" not in verdict
    assert error["id"] == str(broken)
    assert error["error"] == Reason.DECODE_ERROR
