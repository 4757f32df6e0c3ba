"""Shape of deploy/prometheus/alerts.yml and coverage of its promtool unit tests.

promtool itself (check rules, test rules) runs in scripts/lint-deploy.sh; here: every alert the
issue asks for exists, is labelled and explained, and has both a case where it fires and a case
where it must stay silent in alerts.test.yml.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml
from promql_refs import ALERT_TESTS, ALERTS, REPO, alert_rules

REQUIRED_ALERTS = {
    "ModeratorConsumerLagGrowing",
    "ModeratorNoVerdicts",
    "ModeratorDeadLetterSpike",
    "ModeratorConceptFlagRateSpike",
    "ModeratorPolicyReloadFailing",
    "ModeratorNotReady",
}
SEVERITIES = {"critical", "warning", "info"}


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in alert_rules() if "alert" in rule}


def _alert_cases() -> list[dict[str, Any]]:
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    return [case for test in tests["tests"] for case in test.get("alert_rule_test", [])]


def test_required_alerts_exist() -> None:
    assert _alerts().keys() >= REQUIRED_ALERTS


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_alert_is_labelled_and_explained(name: str) -> None:
    rule = _alerts()[name]
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip()
    assert rule["annotations"]["description"].strip()
    assert "for" in rule, "every alert waits before firing: a single bad scrape must not page"


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_alert_has_a_firing_and_a_silent_case(name: str) -> None:
    cases = [case for case in _alert_cases() if case["alertname"] == name]
    assert any(case["exp_alerts"] for case in cases), f"{name} never fires in alerts.test.yml"
    assert any(not case["exp_alerts"] for case in cases), f"{name} has no negative case"


def test_flood_breaker_is_per_concept() -> None:
    rule = _alerts()["ModeratorConceptFlagRateSpike"]
    recorded = {r["record"]: r["expr"] for r in alert_rules() if "record" in r}
    share = recorded["moderator:concept_matches:rate10m"]
    assert "by (namespace, job, concept)" in " ".join(share.split())
    assert 'mode="enforce"' in share, "shadow concepts affect no user and must not page"
    assert "moderator:concept_match_ratio:rate1d_offset1h" in rule["expr"]


def test_tests_load_the_rules_file_beside_them() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    assert [ALERT_TESTS.parent / f for f in tests["rule_files"]] == [ALERTS]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: scripts/lint-deploy.sh")
def test_promtool_unit_tests_pass() -> None:
    # Where promtool is installed (lint-deploy.sh installs it), run the real thing here too.
    done = subprocess.run(
        ["promtool", "test", "rules", str(ALERT_TESTS.relative_to(REPO))],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
