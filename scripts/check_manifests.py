"""Validate manifests rendered by `helm template` (called by scripts/lint-deploy.sh).

Built-in kinds are validated against the Kubernetes OpenAPI schemas that the `kubernetes-validate`
package ships, in strict mode (unknown fields fail), for each `--k8s` version. Custom resources
(ServiceMonitor, PrometheusRule, ScaledObject, TriggerAuthentication) have no schema there; they
are checked against the subset of their CRD schemas written below, which covers every field the
chart renders. A kind with neither fails: nothing passes unvalidated.

On top of schemas, the rules this service depends on: secrets only through secretKeyRef, every
MODERATOR_* variable a real setting, the policy folder mounted whole (hot reload), probes on
/healthz and /readyz, a grace period longer than the drain, a non-root read-only container; and
the chart's settings and policy ConfigMaps must load with the service's own loaders.

usage: check_manifests.py RENDERED.yaml --k8s 1.29.0 [--k8s 1.37.0] [--expect KIND] [--absent KIND]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from moderator.errors import ModeratorError  # noqa: E402
from moderator.policy.load import load_policies  # noqa: E402
from moderator.settings import known_env_vars, load_settings  # noqa: E402

Manifest = dict[str, Any]

# Seconds the pod needs after the drain deadline to commit offsets and close its clients.
GRACE_MARGIN_S = 5
SECRET_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL", re.IGNORECASE)
# In ConfigMap data: a YAML key naming a password, or a URL with user:password@.
SECRET_TEXT = re.compile(r"^\s*[\w.-]*password[\w.-]*\s*:|://[^/\s:@]+:[^/\s@]+@", re.I | re.M)

_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "labels": _LABELS,
        "annotations": _LABELS,
    },
}
# Prometheus durations: 30s, 1m30s, 2h ...
_DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
_SECRET_REF = {
    "type": "object",
    "required": ["parameter", "name", "key"],
    "additionalProperties": False,
    "properties": {
        "parameter": {"type": "string"},
        "name": {"type": "string"},
        "key": {"type": "string"},
    },
}


def _crd(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


# Subsets of the CRDs' openAPIV3Schema (prometheus-operator monitoring.coreos.com/v1, KEDA
# keda.sh/v1alpha1): the fields the chart renders, with their types, enums and required keys.
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _crd(
        {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": _LABELS},
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "scheme": {"enum": ["http", "https"]},
                        },
                    },
                },
            },
        }
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _crd(
        {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                                    "properties": {
                                        "record": {"type": "string"},
                                        "alert": {"type": "string"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": _DURATION,
                                        "labels": _LABELS,
                                        "annotations": _LABELS,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        }
    ),
    ("keda.sh/v1alpha1", "ScaledObject"): _crd(
        {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"const": "kafka"},
                            # KEDA trigger metadata values are strings, numbers included.
                            "metadata": {
                                "type": "object",
                                "required": [
                                    "bootstrapServers",
                                    "consumerGroup",
                                    "topic",
                                    "lagThreshold",
                                ],
                                "additionalProperties": {"type": "string"},
                                "properties": {
                                    "lagThreshold": {"type": "string", "pattern": "^[0-9]+$"},
                                    "activationLagThreshold": {
                                        "type": "string",
                                        "pattern": "^[0-9]+$",
                                    },
                                    "offsetResetPolicy": {"enum": ["earliest", "latest"]},
                                    "sasl": {"enum": ["plaintext", "scram_sha256", "scram_sha512"]},
                                    "tls": {"enum": ["enable", "disable"]},
                                },
                            },
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        }
    ),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): _crd(
        {
            "type": "object",
            "required": ["secretTargetRef"],
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {"type": "array", "minItems": 1, "items": _SECRET_REF}
            },
        }
    ),
}


class Problems:
    """Collects every problem so one run reports them all."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{self.source}: {where}: {message}")


def _name(doc: Manifest) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def validate_schema(doc: Manifest, versions: list[str], problems: Problems) -> None:
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key in CRD_SCHEMAS:
        for error in jsonschema.Draft7Validator(CRD_SCHEMAS[key]).iter_errors(doc):
            path = ".".join(str(p) for p in error.absolute_path)
            problems.add(_name(doc), f"{path}: {error.message}")
        return
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.add(_name(doc), f"Kubernetes {version}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.add(_name(doc), f"no schema to validate against: {exc.message}")


def _containers(doc: Manifest) -> Iterator[Manifest]:
    yield from doc["spec"]["template"]["spec"].get("containers", [])


def check_deployment(doc: Manifest, problems: Problems) -> None:
    where = _name(doc)
    pod = doc["spec"]["template"]["spec"]
    if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
        problems.add(where, "pod securityContext.runAsNonRoot must be true")
    known = known_env_vars()
    for container in _containers(doc):
        cw = f"{where} container {container['name']}"
        sc = container.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.add(cw, "securityContext.readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.add(cw, "securityContext.allowPrivilegeEscalation must be false")
        live = container.get("livenessProbe", {}).get("httpGet", {}).get("path")
        ready = container.get("readinessProbe", {}).get("httpGet", {}).get("path")
        if (live, ready) != ("/healthz", "/readyz"):
            problems.add(cw, f"probes must be /healthz (liveness) and /readyz, got {live}, {ready}")
        env = {e["name"]: e for e in container.get("env", [])}
        for name, entry in env.items():
            if name.startswith("MODERATOR_") and name not in known:
                problems.add(cw, f"env {name} is not a setting the service knows")
            secret_like = SECRET_ENV.search(name) or (
                name == "MODERATOR_REDIS__URL" and "@" in str(entry.get("value", ""))
            )
            if secret_like and "secretKeyRef" not in entry.get("valueFrom", {}):
                problems.add(cw, f"env {name} carries a secret: it must come from a secretKeyRef")
        drain = float(env.get("MODERATOR_PIPELINE__DRAIN_TIMEOUT_S", {}).get("value", 20.0))
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace < drain + GRACE_MARGIN_S:
            problems.add(
                where, f"terminationGracePeriodSeconds {grace} < drain {drain} + {GRACE_MARGIN_S}"
            )
        policy_dir = env.get("MODERATOR_POLICY__PATH", {}).get("value")
        mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == policy_dir]
        if not mounts:
            problems.add(cw, f"no volume is mounted at the policy path {policy_dir}")
        elif any("subPath" in m for m in mounts):
            problems.add(cw, "the policy ConfigMap is mounted with subPath, which never updates")


def check_configmap(doc: Manifest, problems: Problems) -> None:
    where = _name(doc)
    data: dict[str, str] = doc.get("data", {})
    for key, text in data.items():
        if SECRET_TEXT.search(text):
            problems.add(where, f"{key} looks like it holds a secret; use a Secret")
    name = doc["metadata"]["name"]
    with tempfile.TemporaryDirectory(prefix="moderator-lint-") as tmp:
        folder = Path(tmp)
        for key, text in data.items():
            (folder / key).write_text(text, encoding="utf-8")
        try:
            if name.endswith("-settings"):
                load_settings(environ={}, config_file=folder / "moderator.yaml")
            elif name.endswith("-policies"):
                load_policies(folder)
        except ModeratorError as exc:
            problems.add(where, f"the service would refuse it: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rendered", type=Path)
    parser.add_argument("--k8s", action="append", required=True, help="Kubernetes version")
    parser.add_argument("--expect", action="append", default=[], help="kind that must be rendered")
    parser.add_argument("--absent", action="append", default=[], help="kind that must not be")
    args = parser.parse_args(argv)

    docs = [d for d in yaml.safe_load_all(args.rendered.read_text(encoding="utf-8")) if d]
    problems = Problems(args.rendered.name)
    kinds = [d.get("kind", "?") for d in docs]
    for kind in args.expect:
        if kind not in kinds:
            problems.add("render", f"expected a {kind}, rendered {sorted(set(kinds))}")
    for kind in args.absent:
        if kind in kinds:
            problems.add("render", f"{kind} must not be rendered with these values")
    for doc in docs:
        validate_schema(doc, args.k8s, problems)
        if doc.get("kind") == "Deployment":
            check_deployment(doc, problems)
        elif doc.get("kind") == "ConfigMap":
            check_configmap(doc, problems)
    for line in problems.items:
        print(f"  FAIL {line}", file=sys.stderr)
    if not problems.items:
        print(
            f"  ok   {args.rendered.name}: {len(docs)} manifests ({', '.join(sorted(set(kinds)))})"
            f" valid for Kubernetes {', '.join(args.k8s)}"
        )
    return 1 if problems.items else 0


if __name__ == "__main__":
    sys.exit(main())
