"""The values table of helm/moderator/README.md, generated from the `# --` comments in values.yaml.

A key documented with `# -- text` (continued on following `#` lines) gets a row with its type
and default; keys under a documented map are covered by it. Every leaf of values.yaml must be
covered, so a new value without a comment fails `--check` (run by scripts/lint-deploy.sh and by
tests/unit/deploy/test_helm_chart.py).

usage: chart_values_table.py --check | --write
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent.parent / "helm" / "moderator"
START = "<!-- values:start -->"
END = "<!-- values:end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?:\s|$)")
_DOC = re.compile(r"^ *# -- ?(?P<text>.*)$")
_MORE = re.compile(r"^ *#(?: (?P<text>.*))?$")
PIPE = "\\|"  # a literal pipe inside a markdown table cell


def documented_keys(values_text: str) -> dict[str, str]:
    """Dotted key path → description, in file order."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in values_text.splitlines():
        if match := _DOC.match(line):
            pending = [match["text"].strip()]
            continue
        if pending is not None and (match := _MORE.match(line)) and match["text"]:
            pending.append(match["text"].strip())
            continue
        key = _KEY.match(line)
        if key is None:
            if line.strip() and not line.lstrip().startswith("#"):
                pending = None  # a list item or a value: any description was not for a key
            continue
        indent = len(key["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key["key"]))
        if pending is not None:
            docs[".".join(k for _, k in stack)] = " ".join(pending)
            pending = None
    return docs


def _leaves(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict) and value:
        out: list[str] = []
        for key, sub in value.items():
            out.extend(_leaves(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return [prefix]


def _lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def _type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def render_table(values_text: str) -> str:
    """The markdown table; raises ValueError naming undocumented keys."""
    values = yaml.safe_load(values_text)
    docs = documented_keys(values_text)
    missing = [
        leaf
        for leaf in _leaves(values)
        if not any(leaf == d or leaf.startswith(d + ".") for d in docs)
    ]
    if missing:
        raise ValueError("values without a `# --` description: " + ", ".join(missing))
    rows = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for path, text in docs.items():
        value = _lookup(values, path)
        default = json.dumps(value, ensure_ascii=False).replace("|", PIPE)
        rows.append(f"| `{path}` | {_type(value)} | `{default}` | {text.replace('|', PIPE)} |")
    return "\n".join(rows)


def updated_readme(readme: str, table: str) -> str:
    head, start, rest = readme.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"README.md needs the markers {START} and {END}")
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="fail when README.md is stale")
    mode.add_argument("--write", action="store_true", help="rewrite README.md's table")
    args = parser.parse_args(argv)
    readme_path = CHART / "README.md"
    try:
        table = render_table((CHART / "values.yaml").read_text(encoding="utf-8"))
        readme = readme_path.read_text(encoding="utf-8")
        fresh = updated_readme(readme, table)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.write:
        readme_path.write_text(fresh, encoding="utf-8")
        return 0
    if fresh != readme:
        print(
            "error: helm/moderator/README.md's values table is stale; run "
            "`python scripts/chart_values_table.py --write`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
