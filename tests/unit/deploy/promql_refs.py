"""What PromQL expressions in deploy/ refer to: metric names and label names.

Only what the tests need, by regular expressions: PromQL syntax itself is checked by promtool in
scripts/lint-deploy.sh. The service's metrics all start with `moderator_`; recording rules use
`moderator:`, so they never match.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "deploy" / "grafana" / "moderator.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yml"

METRIC = re.compile(r"\bmoderator_[a-z0-9_]+\b")
_SELECTOR = re.compile(r"\{([^{}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
_LABEL_VALUES = re.compile(r"label_values\((?P<expr>.*),\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass(frozen=True)
class Query:
    where: str
    expr: str

    @property
    def metrics(self) -> set[str]:
        return set(METRIC.findall(self.expr))

    @property
    def labels(self) -> set[str]:
        """Label names used in matchers, grouping clauses and label_values()."""
        names: set[str] = set()
        for selector in _SELECTOR.findall(self.expr):
            names.update(_MATCHER.findall(selector))
        for group in _GROUPING.findall(self.expr):
            names.update(n.strip() for n in group.split(",") if n.strip())
        if match := _LABEL_VALUES.search(self.expr):
            names.add(match["label"])
        return names

    @property
    def grouping(self) -> set[str]:
        """Labels of `by (...)` clauses: what a panel breaks its series down by."""
        out: set[str] = set()
        for group in re.findall(r"\bby\s*\(([^()]*)\)", self.expr):
            out.update(n.strip() for n in group.split(",") if n.strip())
        return out


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""

    def walk(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard.get("panels", []))


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    out = [
        Query(f"panel {panel.get('title')!r}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append(Query(f"variable {var['name']!r}", query))
    return out


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def rule_queries() -> list[Query]:
    return [
        Query(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for rule in alert_rules()
    ]
