"""Write every query of the Grafana dashboard as a Prometheus recording rule, for promtool.

`promtool check rules` on the output parses each query with Prometheus's own PromQL parser, so a
typo in a panel fails CI instead of showing "no data" in Grafana. Grafana's variables are replaced
by values of the same shape first. (Which metric names the queries use is checked against the
service's registry by tests/unit/deploy/test_dashboard.py.)

usage: dashboard_promql.py DASHBOARD.json OUT_RULES.yml
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

# Grafana variables → stand-ins PromQL accepts in the same places.
_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${datasource}": "prometheus",
}
_TEMPLATE_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
_LABEL_VALUES = re.compile(r"^label_values\((?P<expr>.*),\s*[A-Za-z_][A-Za-z0-9_]*\)$")


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = _LABEL_VALUES.match(query.strip())
            yield f"variable {var['name']}", match["expr"] if match else query


def substitute(expr: str) -> str:
    for name, value in _VARIABLES.items():
        expr = expr.replace(name, value)
    # Dashboard variables ($job, $instance, ...) only ever sit inside regex matchers.
    return _TEMPLATE_VAR.sub(".*", expr)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    dashboard = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute(expr), "labels": {"where": where}}
        for i, (where, expr) in enumerate(queries(dashboard))
    ]
    out = {"groups": [{"name": "dashboard-queries", "rules": rules}]}
    Path(argv[1]).write_text(yaml.safe_dump(out, sort_keys=False), encoding="utf-8")
    print(f"  {len(rules)} dashboard queries written to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
