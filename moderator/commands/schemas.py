"""JSON Schemas of the wire formats, generated from the models the code uses.

`python -m moderator.commands.schemas deploy/schemas` rewrites the committed files; a unit test
fails when they are stale, so the published contract cannot drift from the code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from moderator.errors import Reason
from moderator.pipeline.events import JsonEvent
from moderator.service.verdict import Verdict


def dlq_headers_schema() -> dict[str, Any]:
    """Dead-letter records keep the original key/value/headers; these headers are added."""
    text = {"type": "string"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "moderator dead-letter headers",
        "description": "Kafka headers (UTF-8 values) added to each record on the DLQ topic.",
        "type": "object",
        "properties": {
            "x-error-reason": {"type": "string", "enum": [r.value for r in Reason]},
            "x-error-detail": text,
            "x-original-topic": text,
            "x-original-partition": {"type": "string", "pattern": "^[0-9]+$"},
            "x-original-offset": {"type": "string", "pattern": "^[0-9]+$"},
            "x-attempts": {"type": "string", "pattern": "^[0-9]+$"},
            "x-failed-at": text,
        },
        "required": [
            "x-error-reason",
            "x-error-detail",
            "x-original-topic",
            "x-original-partition",
            "x-original-offset",
            "x-attempts",
        ],
    }


def schemas() -> dict[str, dict[str, Any]]:
    event = JsonEvent.model_json_schema()
    event["title"] = "moderator image event (JSON form)"
    event["oneOf"] = [{"required": ["image_url"]}, {"required": ["image_b64"]}]
    return {
        "event.schema.json": event,
        # What `Verdict.wire()` writes: aliases and rounding are serialization-side.
        "verdict.schema.json": Verdict.model_json_schema(mode="serialization"),
        "dlq-headers.schema.json": dlq_headers_schema(),
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> None:
    out = Path(argv[0] if argv else "deploy/schemas")
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas().items():
        (out / name).write_text(render(schema), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
