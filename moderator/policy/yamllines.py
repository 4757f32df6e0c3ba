"""YAML read into plain data plus a map from field path to line, for error messages.

PyYAML's `safe_load` forgets where values came from; composing first keeps every node's start
mark. Duplicate keys, which `safe_load` silently resolves to the last one, are collected too.

Composing keeps an alias as a second reference to its anchor's node, so a small file can
describe an enormous tree ("billion laughs": each level repeating the previous one ten times)
or a cycle. Expanding such a file would exhaust memory and CPU in the service's reload, so the
walk counts the values aliases add and refuses cycles. Deep nesting is refused while composing:
PyYAML's scanner slows down with every open bracket and its composer recurses per level.
"""

from __future__ import annotations

from typing import Any, Final

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

Loc = tuple[str | int, ...]
"""A field path as pydantic reports it: ("concepts", 2, "threshold")."""

ALIAS_VALUE_LIMIT: Final = 10_000
"""Most values (scalars, lists, mappings) aliases may add to a file: enough to share a list of
surfaces or prompts between hundreds of concepts, far too few to hurt."""
DEPTH_LIMIT: Final = 64
"""Deepest nesting accepted; a policy needs about six levels."""


class YAMLLimitError(yaml.MarkedYAMLError):
    """The file is valid YAML but exceeds a bound (aliases, cycles, nesting); `problem` says
    which, `problem_mark` where reading stopped."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that stops past DEPTH_LIMIT levels of nesting.

    Flow brackets are counted as they are scanned: the scanner reads ahead to the end of an
    open bracket run, and costs grow with the square of its length, long before composing.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def fetch_flow_collection_start(self, token_class: type[yaml.Token]) -> None:
        if self.flow_level >= DEPTH_LIMIT:
            raise YAMLLimitError(_too_deep(), self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > DEPTH_LIMIT:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise YAMLLimitError(_too_deep(), mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def compose(text: str) -> yaml.Node | None:
    """The node graph of a one-document YAML text; YAMLLimitError past DEPTH_LIMIT levels."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _too_deep() -> str:
    return f"values nested more than {DEPTH_LIMIT} levels deep; a policy needs about six"


class LineMap:
    """Field path → 1-based line; missing paths fall back to their nearest parent."""

    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}

    def line(self, loc: Loc) -> int:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return 1


def to_python(
    node: yaml.Node,
    loc: Loc,
    lines: LineMap,
    dupes: list[tuple[Loc, int, int]],
    *,
    alias_limit: int = ALIAS_VALUE_LIMIT,
) -> Any:
    """Plain data for a composed `node`, recording every path's line in `lines` and every
    repeated key in `dupes` as (path, line, line of the first occurrence).

    Raises YAMLLimitError (marked where the walk stopped) when aliases add more than
    `alias_limit` values, when a value contains itself, or when aliases nest past DEPTH_LIMIT.
    """
    return _Walk(lines, dupes, alias_limit).value(node, loc, frozenset())


class _Walk:
    def __init__(self, lines: LineMap, dupes: list[tuple[Loc, int, int]], limit: int) -> None:
        self.lines = lines
        self.dupes = dupes
        self.limit = limit
        self.seen: set[int] = set()
        self.repeats = 0  # values reached a second time, that is through an alias

    def value(self, node: yaml.Node, loc: Loc, inside: frozenset[int]) -> Any:
        self._count(node, loc, inside)
        self.lines.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            inside = inside | {id(node)}
            out: dict[str, Any] = {}
            first_line: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = str(_construct(key_node))
                key_line = key_node.start_mark.line + 1
                if key in first_line:
                    self.dupes.append(((*loc, key), key_line, first_line[key]))
                    continue  # keep the first; the duplicate is reported as an error anyway
                first_line[key] = key_line
                self.lines.lines[(*loc, key)] = key_line
                out[key] = self.value(value_node, (*loc, key), inside)
            return out
        if isinstance(node, yaml.SequenceNode):
            inside = inside | {id(node)}
            return [self.value(item, (*loc, i), inside) for i, item in enumerate(node.value)]
        return _construct(node)

    def _count(self, node: yaml.Node, loc: Loc, inside: frozenset[int]) -> None:
        if id(node) in inside:
            raise YAMLLimitError(
                "an alias (`*name`) refers to a value that contains it, which would repeat "
                "forever; copy the values instead",
                node.start_mark,
            )
        if len(loc) > DEPTH_LIMIT:
            raise YAMLLimitError(_too_deep(), node.start_mark)
        if id(node) in self.seen:
            self.repeats += 1
            if self.repeats > self.limit:
                raise YAMLLimitError(
                    f"aliases (`*name`) repeat more than {self.limit} values; a policy never "
                    "needs that many (is this an alias bomb?), copy the values instead",
                    node.start_mark,
                )
        else:
            self.seen.add(id(node))


def _construct(node: yaml.Node) -> Any:
    """A scalar's value (a collection key's first, shallow form). Values that match a YAML
    type's pattern but not its range (`2001-13-45`, an int of 5000 digits) raise ValueError in
    PyYAML; they become ConstructorError like every other unreadable value."""
    try:
        return SafeConstructor().construct_object(node)
    except (ValueError, OverflowError) as exc:
        raise ConstructorError(
            problem=f"cannot read this value ({exc}); put it in quotes if it is text",
            problem_mark=node.start_mark,
        ) from exc
