"""helm/moderator without Helm: values against values.schema.json, docs, copies and templates.

Rendering with Helm and validating the manifests against Kubernetes schemas happens in
scripts/lint-deploy.sh; these tests cover what can be checked from the files alone, fast.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import moderator
from moderator.errors import ModeratorError
from moderator.policy.load import load_policies
from moderator.settings import load_settings

jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "moderator"
VALUE_SETS = {"default", "keda", "servicemonitor", "sasl"}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of a values file over values.yaml: maps merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _errors(values: dict[str, Any]) -> list[str]:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)
    ]


def _table_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "chart_values_table", REPO / "scripts" / "chart_values_table.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def defaults() -> dict[str, Any]:
    data: dict[str, Any] = _yaml(CHART / "values.yaml")
    return data


def _ci_sets() -> dict[str, dict[str, Any]]:
    return {
        path.name.removesuffix("-values.yaml"): _yaml(path) or {}
        for path in sorted((CHART / "ci").glob("*-values.yaml"))
    }


def test_schema_is_valid_draft7() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)


def test_ci_value_sets_cover_the_required_cases() -> None:
    sets = _ci_sets()
    assert sets.keys() >= VALUE_SETS
    assert sets["keda"]["autoscaling"]["keda"]["enabled"] is True
    assert sets["servicemonitor"]["serviceMonitor"]["enabled"] is True
    assert sets["sasl"]["kafka"]["sasl"]["enabled"] is True


@pytest.mark.parametrize("name", sorted(_ci_sets()))
def test_value_set_matches_the_schema(name: str, defaults: dict[str, Any]) -> None:
    assert _errors(_merge(defaults, _ci_sets()[name])) == []


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"replicaz": 2}, "replicaz"),
        ({"kafka": {"sasl": {"mechanism": "GSSAPI"}}}, "kafka.sasl.mechanism"),
        ({"settings": {"kafka": {"sasl_password": "hunter2"}}}, "settings.kafka.sasl_password"),
        ({"settings": {"redis": {"url": "redis://:pw@r:6379"}}}, "settings.redis.url"),
        ({"settings": {"pipline": {}}}, "settings"),
        ({"policies": {"files": {"policy.txt": "x"}}}, "policies.files"),
        ({"gpu": {"count": 0}}, "gpu.count"),
        ({"serviceMonitor": {"interval": "30 seconds"}}, "serviceMonitor.interval"),
    ],
)
def test_schema_refuses_bad_values(
    override: dict[str, Any], field: str, defaults: dict[str, Any]
) -> None:
    errors = _errors(_merge(defaults, override))
    assert errors, f"{override} was accepted"
    # The error names the field, in its path or (for unknown keys) in its message.
    assert any(field.rsplit(".", 1)[0] in e for e in errors), errors


def test_default_grace_period_covers_the_drain(defaults: dict[str, Any]) -> None:
    assert defaults["terminationGracePeriodSeconds"] >= defaults["drainTimeoutSeconds"] + 5
    for name, values in _ci_sets().items():
        merged = _merge(defaults, values)
        assert merged["terminationGracePeriodSeconds"] >= merged["drainTimeoutSeconds"] + 5, name


def test_chart_app_version_is_the_package_version() -> None:
    chart = _yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == moderator.__version__


@pytest.mark.parametrize(
    ("copy_path", "source"),
    [
        ("files/alerts.yml", "deploy/prometheus/alerts.yml"),
        ("files/moderator.json", "deploy/grafana/moderator.json"),
        ("files/policies/default.yaml", "policies/default.yaml"),
    ],
)
def test_chart_copies_match_their_sources(copy_path: str, source: str) -> None:
    # Helm cannot read files outside the chart, so it carries copies; they must not drift.
    assert (CHART / copy_path).read_bytes() == (REPO / source).read_bytes(), (
        f"cp {source} helm/moderator/{copy_path}"
    )


def test_readme_values_table_is_generated_from_values() -> None:
    script = _table_script()
    values_text = (CHART / "values.yaml").read_text(encoding="utf-8")
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    table = script.render_table(values_text)
    assert script.updated_readme(readme, table) == readme, (
        "run: python scripts/chart_values_table.py --write"
    )
    for key in yaml.safe_load(values_text):
        assert f"| `{key}" in readme, f"top-level value {key} is missing from README.md"


def test_values_table_refuses_an_undocumented_value() -> None:
    script = _table_script()
    text = (CHART / "values.yaml").read_text(encoding="utf-8") + "\nsneaky: 1\n"
    with pytest.raises(ValueError, match="sneaky"):
        script.render_table(text)


# `- name: MODERATOR_X` / `value: {{ .Values.a.b | quote }}` in the deployment's env list.
_ENV_FROM_VALUE = re.compile(
    r"- name: (MODERATOR_\w+)\n\s+value: \{\{ \.Values\.([\w.]+) \| quote \}\}"
)


def _helm_str(value: Any) -> str:
    """A scalar as Helm's `quote` prints it (Go's %v: booleans in lower case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _pod_env(values: dict[str, Any]) -> dict[str, str]:
    """The plain environment the deployment gives the container for these (merged) values."""
    deployment = (CHART / "templates" / "deployment.yaml").read_text(encoding="utf-8")
    env: dict[str, str] = {}
    for name, path in _ENV_FROM_VALUE.findall(deployment):
        node: Any = values
        for key in path.split("."):
            node = node[key]
        env[name] = _helm_str(node)
    env.update({e["name"]: e["value"] for e in values["extraEnv"] if "value" in e})
    return env


def _pod_policy_files(values: dict[str, Any]) -> dict[str, str] | None:
    """File name → text of the chart's policy ConfigMap; None when an existing one is mounted."""
    policies = values["policies"]
    if policies["existingConfigMap"]:
        return None
    default = (CHART / "files" / "policies" / "default.yaml").read_text(encoding="utf-8")
    return dict(policies["files"]) or {"default.yaml": default}


@pytest.mark.parametrize("name", sorted(_ci_sets()))
def test_each_value_set_gives_the_service_policies_and_settings_it_loads(
    name: str, tmp_path: Path, defaults: dict[str, Any]
) -> None:
    """What a pod of each CI value set reads (policy folder, settings file, env) loads as meant."""
    values = _merge(defaults, _ci_sets()[name])
    files = _pod_policy_files(values)
    if files is None:
        # The pods mount the named ConfigMap, and the chart renders none of its own.
        template = (CHART / "templates" / "configmap-policies.yaml").read_text(encoding="utf-8")
        assert template.startswith("{{- if not .Values.policies.existingConfigMap }}")
        helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
        mounted = helpers.split('define "moderator.policyConfigMap"')[1].split("end")[0]
        assert ".Values.policies.existingConfigMap" in mounted
    else:
        folder = tmp_path / "policies"
        folder.mkdir()
        for filename, text in files.items():
            (folder / filename).write_text(text, encoding="utf-8")
        policy_set = load_policies(folder)
        assert set(policy_set.names) == {yaml.safe_load(t)["name"] for t in files.values()}
        assert policy_set.concepts

    config = None
    if values["settings"]:
        config = tmp_path / "moderator.yaml"
        config.write_text(yaml.safe_dump(values["settings"]), encoding="utf-8")
    env = _pod_env(values)
    settings = load_settings(environ=env, config_file=config)
    assert settings.kafka.bootstrap_servers == values["kafka"]["bootstrapServers"]
    assert settings.kafka.group_id == values["kafka"]["groupId"]
    assert str(settings.model.path) == values["model"]["path"]
    assert settings.pipeline.drain_timeout_s == values["drainTimeoutSeconds"]
    assert settings.pipeline.decode_workers == values["decodeWorkers"]
    for group, fields in values["settings"].items():
        for field, value in fields.items():
            assert getattr(getattr(settings, group), field) == value, f"{group}.{field}"
    for extra in values["extraEnv"]:
        group, field = extra["name"].removeprefix("MODERATOR_").lower().split("__")
        assert _helm_str(getattr(getattr(settings, group), field)) == extra["value"], extra


def test_chart_default_policy_loads() -> None:
    try:
        policy_set = load_policies(CHART / "files" / "policies")
    except ModeratorError as exc:  # pragma: no cover - the message is the point
        pytest.fail(str(exc))
    assert policy_set


def test_policies_are_mounted_as_a_folder_and_not_rolled_on_edit() -> None:
    deployment = (CHART / "templates" / "deployment.yaml").read_text(encoding="utf-8")
    assert not re.search(r"^\s*subPath:", deployment, re.MULTILINE), "subPath never updates"
    assert "mountPath: /etc/moderator/policies" in deployment
    checksums = re.findall(r"checksum/[\w-]+: .*", deployment)
    assert checksums
    assert not any("polic" in line for line in checksums), "policy edits must hot-reload"


def test_secrets_only_reach_the_pod_through_secret_key_refs() -> None:
    deployment = (CHART / "templates" / "deployment.yaml").read_text(encoding="utf-8")
    for var in ("MODERATOR_KAFKA__SASL_PASSWORD", "MODERATOR_KAFKA__SASL_USERNAME"):
        block = deployment.split(f"- name: {var}", 1)[1].split("- name:", 1)[0]
        assert "secretKeyRef" in block, var
        assert "value:" not in block, var
    for template in (CHART / "templates").glob("configmap-*.yaml"):
        text = template.read_text(encoding="utf-8")
        assert "sasl" not in text.lower()
        assert ".Values.redis" not in text


def test_probes_and_gpu_resources_are_templated() -> None:
    deployment = (CHART / "templates" / "deployment.yaml").read_text(encoding="utf-8")
    assert re.search(r"livenessProbe:\s+httpGet:\s+path: /healthz", deployment)
    assert re.search(r"readinessProbe:\s+httpGet:\s+path: /readyz", deployment)
    assert ".Values.gpu.resourceName" in deployment
    assert "terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}" in (
        deployment
    )
