"""YAML read into plain data plus a map from field path to line, for error messages.

PyYAML's `safe_load` forgets where values came from; composing first keeps every node's start
mark. Duplicate keys, which `safe_load` silently resolves to the last one, are collected too.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import SafeConstructor

Loc = tuple[str | int, ...]
"""A field path as pydantic reports it: ("concepts", 2, "threshold")."""


class LineMap:
    """Field path → 1-based line; missing paths fall back to their nearest parent."""

    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}

    def line(self, loc: Loc) -> int:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return 1


def to_python(node: yaml.Node, loc: Loc, lines: LineMap, dupes: list[tuple[Loc, int, int]]) -> Any:
    """Plain data for a composed `node`, recording every path's line in `lines` and every
    repeated key in `dupes` as (path, line, line of the first occurrence)."""
    lines.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(SafeConstructor().construct_object(key_node))
            key_line = key_node.start_mark.line + 1
            if key in first_line:
                dupes.append(((*loc, key), key_line, first_line[key]))
                continue  # keep the first; the duplicate is reported as an error anyway
            first_line[key] = key_line
            lines.lines[(*loc, key)] = key_line
            out[key] = to_python(value_node, (*loc, key), lines, dupes)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [to_python(item, (*loc, i), lines, dupes) for i, item in enumerate(node.value)]
    return SafeConstructor().construct_object(node)
