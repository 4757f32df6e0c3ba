"""Pydantic's validation errors, reworded for policy authors: what is wrong and what to do."""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from pydantic import BaseModel

from moderator.policy.schema import Policy
from moderator.policy.yamllines import Loc


def field_name(loc: Loc, raw: Any) -> str:
    """`concepts[weapons.firearm].prompts[0]`: concepts are named by id when they have one."""
    out = ""
    node = raw
    for part in loc:
        if isinstance(part, int):
            label: str | int = part
            item = node[part] if isinstance(node, list) and part < len(node) else None
            if out == "concepts" and isinstance(item, dict) and isinstance(item.get("id"), str):
                label = item["id"]
            out += f"[{label}]"
            node = item
        else:
            out += f".{part}" if out else part
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model whose fields live at `loc`, found by walking the annotations from Policy."""
    model: Any = Policy
    for part in loc:
        if isinstance(part, int):
            continue
        is_model = isinstance(model, type) and issubclass(model, BaseModel)
        field = model.model_fields.get(part) if is_model else None
        if field is None:
            return None
        model = _unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """list[X] / X | None / Annotated[X, ...] → X (the model a nested loc refers to)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (list, types.UnionType, typing.Union):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0]
        else:
            return annotation


_MISSING_HINTS = {
    "version": "add `version: 1` at the top",
    "name": "add `name: ...` at the top, e.g. name: platform-default",
    "id": "add `id: ...`, e.g. id: weapons.firearm",
    "category": "add `category: ...`, e.g. category: weapons",
    "prompts": "add `prompts:` with at least one description of what to look for",
}
_TOO_SHORT_HINTS = {
    "prompts": "give at least one prompt describing what the concept looks like",
    "surfaces": "leave `surfaces` out to apply the concept to every surface",
}


def explain_error(err: Any, loc: Loc) -> tuple[str, str | None]:
    """(message, hint) for one pydantic error, in words for policy authors."""
    kind, value = err["type"], err.get("input")
    last = next((p for p in reversed(loc) if isinstance(p, str)), "")
    if kind == "missing":
        return "required but missing", _MISSING_HINTS.get(str(last), f"add `{last}:`")
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = sorted(model.model_fields) if model else []
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean `{near[0]}`?" if near else "allowed keys: " + ", ".join(allowed)
        return "unknown key", hint
    if kind == "enum":
        options = [o.strip(" '") for o in re.split(r",| or ", err["ctx"]["expected"])]
        options = [o for o in options if o]
        guess = difflib.get_close_matches(str(value), options, n=1)
        return (
            f"`{value}` is not one of: {', '.join(options)}",
            f"did you mean `{guess[0]}`?" if guess else None,
        )
    if kind == "literal_error" and last == "version":
        return f"`{value}` is not a known format version", "write `version: 1`"
    if kind == "string_pattern_mismatch" and last == "id":
        return (
            f"`{value}` is not a valid concept id",
            "use lower-case letters, digits, `_` and `-` in dot-separated parts, "
            "e.g. weapons.firearm",
        )
    if kind == "string_too_short":
        return "empty text", "write something or delete the entry"
    if kind == "too_short":
        return "must not be empty", _TOO_SHORT_HINTS.get(str(last))
    if kind == "list_type":
        return "expected a list", "write one `- item` per line, or [first, second]"
    if kind in ("float_parsing", "float_type"):
        return f"`{value}` is not a number", "write a number such as 0.28"
    if kind == "finite_number":
        return "must be a finite number", "write a number such as 0.28"
    if kind == "string_type":
        return f"`{value}` is not text", "put it in quotes"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return (
            "expected keys and values here",
            "a concept starts with `- id: ...` followed by indented keys"
            if loc[:1] == ("concepts",)
            else None,
        )
    return str(err["msg"]), None
