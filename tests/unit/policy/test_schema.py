"""The committed JSON Schema matches the models, and documents every field."""

from __future__ import annotations

from typing import Any

from moderator.policy.schema import SCHEMA_PATH, json_schema, render_json_schema


def test_committed_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_json_schema(), (
        "policies/schema.json is stale: run `moderator policy schema --write` and commit it"
    )


def test_every_field_is_documented() -> None:
    schema = json_schema()
    models: dict[str, Any] = {"Policy": schema, **schema["$defs"]}
    undocumented = [
        f"{model}.{name}"
        for model, body in models.items()
        for name, field in body.get("properties", {}).items()
        if not field.get("description")
    ]
    assert undocumented == []
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Concept"]["additionalProperties"] is False
