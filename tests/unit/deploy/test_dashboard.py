"""The Grafana dashboard and the alert rules query only metrics the service really exports.

The registry is the service's own (`moderator.service.metrics.Metrics`): every labelled metric
gets one child so that its samples (`_total`, `_bucket`, `_count`, `_sum`, `_created`,
`_info`) and label names appear in `registry.collect()`, exactly as /metrics would show them.
"""

from __future__ import annotations

import ast
from collections import defaultdict

import pytest
from prometheus_client import Info
from prometheus_client.metrics import MetricWrapperBase
from promql_refs import REPO, Query, dashboard_queries, load_dashboard, panels, rule_queries

from moderator.service.metrics import Metrics

# Labels Prometheus attaches to every scraped series (static config and Kubernetes discovery),
# plus the bucket bound of histograms.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container", "le"}


def _dict_keys_passed_to(source: str, call: str) -> set[str]:
    """Keys of dict literals passed to `<...>.<call>(...)` (or returned from `def <call>`)."""
    keys: set[str] = set()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        candidates: list[ast.expr] = []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == call:
                candidates = list(node.args)
        elif isinstance(node, ast.FunctionDef) and node.name == call:
            candidates = [n.value for n in ast.walk(node) if isinstance(n, ast.Return) and n.value]
        for arg in candidates:
            if isinstance(arg, ast.Dict):
                keys.update(
                    k.value
                    for k in arg.keys
                    if isinstance(k, ast.Constant) and isinstance(k.value, str)
                )
    return keys


def _info_labels() -> dict[str, set[str]]:
    """The label names the service puts on its Info metrics, read from the code that sets them."""
    service = "\n".join(
        p.read_text(encoding="utf-8") for p in sorted((REPO / "moderator" / "service").glob("*.py"))
    )
    runtime = (REPO / "moderator" / "embed" / "runtime.py").read_text(encoding="utf-8")
    policy = _dict_keys_passed_to(service, "info") - {"fields"}
    model = _dict_keys_passed_to(runtime, "info")
    assert {"name", "version"} <= policy, "moderator/service no longer sets moderator_policy_info"
    assert {"model_id", "provider"} <= model, "ClipRuntime.info() keys changed"
    return {"moderator_policy_info": policy, "moderator_model_info": model}


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Sample name → label names, for every sample the service's registry can export."""
    metrics = Metrics()
    for value in vars(metrics).values():
        # _labelnames is prometheus_client's only record of a metric's label names.
        labelnames = getattr(value, "_labelnames", ())
        if isinstance(value, MetricWrapperBase) and labelnames and not isinstance(value, Info):
            value.labels(*["x"] * len(labelnames))
    samples: dict[str, set[str]] = defaultdict(set)
    for family in metrics.registry.collect():
        for sample in family.samples:
            samples[sample.name].update(sample.labels)
    for name, labels in _info_labels().items():
        samples[name].update(labels)
    return dict(samples)


def test_registry_exports_the_suffixed_names(exported: dict[str, set[str]]) -> None:
    # The suffixes the queries rely on: counters _total, histograms _bucket/_sum/_count, Info _info.
    assert "moderator_verdicts_total" in exported
    assert "moderator_verdicts" not in exported
    assert {"decision", "surface"} <= exported["moderator_verdicts_total"]
    for suffix in ("_bucket", "_sum", "_count"):
        assert f"moderator_stage_duration_seconds{suffix}" in exported
    assert "le" in exported["moderator_stage_duration_seconds_bucket"]
    assert "moderator_policy_info" in exported


def _check(queries: list[Query], exported: dict[str, set[str]]) -> list[str]:
    problems = []
    for query in queries:
        unknown = query.metrics - exported.keys()
        if unknown:
            problems.append(f"{query.where}: not exported: {sorted(unknown)}")
            continue
        allowed = TARGET_LABELS.union(*(exported[m] for m in query.metrics))
        stray = query.labels - allowed
        if stray:
            problems.append(f"{query.where}: labels {sorted(stray)} are on none of its metrics")
    return problems


def test_every_dashboard_query_names_exported_metrics_and_labels(
    exported: dict[str, set[str]],
) -> None:
    queries = dashboard_queries(load_dashboard())
    assert len(queries) > 30
    assert _check(queries, exported) == []


def test_every_alert_rule_names_exported_metrics_and_labels(exported: dict[str, set[str]]) -> None:
    queries = rule_queries()
    assert len(queries) >= 10
    assert _check(queries, exported) == []


def test_the_check_catches_a_wrong_name_and_a_wrong_label(exported: dict[str, set[str]]) -> None:
    bad = [
        Query("typo", "rate(moderator_verdict_total[5m])"),
        Query("unsuffixed", "rate(moderator_verdicts[5m])"),
        Query("label", "sum by (reason) (rate(moderator_verdicts_total[5m]))"),
    ]
    assert len(_check(bad, exported)) == 3


def test_every_exported_metric_is_on_the_dashboard(exported: dict[str, set[str]]) -> None:
    used = set().union(*(q.metrics for q in dashboard_queries(load_dashboard())))
    families = {
        family.name
        for family in Metrics().registry.collect()
        if family.name.startswith("moderator")
    }
    missing = {f for f in families if not any(u.startswith(f) for u in used)}
    assert missing == set(), f"metrics without a panel: {sorted(missing)}"


# Topic → (metric that must be queried, labels it must be broken down by, text in the query).
REQUIRED_TOPICS: dict[str, tuple[str, set[str], str]] = {
    "throughput": ("moderator_events_consumed_total", set(), "rate("),
    "decisions by concept": ("moderator_concept_matches_total", {"concept"}, "rate("),
    "decisions by surface": ("moderator_verdicts_total", {"surface"}, "rate("),
    "dead letters by reason": ("moderator_dlq_records_total", {"reason"}, "rate("),
    "end-to-end latency quantiles": (
        "moderator_end_to_end_latency_seconds_bucket",
        {"le"},
        "histogram_quantile(",
    ),
    "per-stage latency quantiles": (
        "moderator_stage_duration_seconds_bucket",
        {"stage", "le"},
        "histogram_quantile(",
    ),
    "batch size": ("moderator_batch_size_bucket", {"le"}, "histogram_quantile("),
    "in flight": ("moderator_in_flight_events", set(), ""),
    "consumer lag": ("moderator_consumer_lag", {"topic"}, ""),
    "cache hit ratio": ("moderator_cache_requests_total", {"kind"}, 'result="hit"'),
    "policy version": ("moderator_policy_info", {"version"}, ""),
    "policy reload failures": ("moderator_policy_reload_failing", set(), ""),
}


@pytest.mark.parametrize("topic", sorted(REQUIRED_TOPICS))
def test_dashboard_has_a_panel_per_topic(topic: str) -> None:
    metric, by, text = REQUIRED_TOPICS[topic]
    found = [
        q.where
        for q in dashboard_queries(load_dashboard())
        if metric in q.metrics and by <= q.grouping and text in q.expr
    ]
    assert found, f"no panel shows {topic} ({metric} by {sorted(by)})"


def test_panels_are_well_formed() -> None:
    dashboard = load_dashboard()
    all_panels = list(panels(dashboard))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in all_panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        # One data source variable, so the dashboard works provisioned, imported or sidecar-loaded.
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("description"), f"panel {panel['title']!r} needs a description"
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"], f"{panel['title']}: ignores the Job variable"
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names[:2] == ["datasource", "job"]
    assert dashboard["uid"] == "moderator-overview"
