"""deploy/docker-compose.yml: the local stack has every piece, wired to each other correctly.

No Docker engine is needed: the files are parsed and cross-checked against the Prometheus and
Grafana provisioning files and the service's settings. (The Compose schema itself is checked by
scripts/lint-deploy.sh.)
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from moderator.settings import KafkaSettings, known_env_vars

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
REQUIRED_SERVICES = {"kafka", "kafka-init", "redis", "moderator", "prometheus", "grafana"}


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return dict(_load("docker-compose.yml")["services"])


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → host path (relative to deploy/) of bind mounts; named volumes skipped."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = source
    return out


def test_every_required_service_is_there(services: dict[str, dict[str, Any]]) -> None:
    assert services.keys() >= REQUIRED_SERVICES


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        assert re.search(r":[\w.-]+$", image), f"{name}: {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: pin a version, not latest"


def test_kafka_is_4x_in_kraft_mode(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"])
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert not any("ZOOKEEPER" in key for key in env)
    assert "healthcheck" in kafka


def test_topic_init_creates_the_services_topics_once(services: dict[str, dict[str, Any]]) -> None:
    init = services["kafka-init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init.get("restart") == "no"
    script = "\n".join(init["command"])
    assert "--if-not-exists" in script
    defaults = KafkaSettings()
    for topic in (defaults.input_topic, defaults.verdict_topic, defaults.dlq_topic):
        assert topic in script
    moderator = services["moderator"]
    assert moderator["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert moderator["environment"]["MODERATOR_KAFKA__CREATE_TOPICS"] == "false"


def test_service_is_built_from_the_dockerfile_and_configured_by_real_settings(
    services: dict[str, dict[str, Any]],
) -> None:
    moderator = services["moderator"]
    build = moderator["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    env = moderator["environment"]
    assert set(env) <= known_env_vars(), set(env) - known_env_vars()
    assert env["MODERATOR_KAFKA__BOOTSTRAP_SERVERS"].split(":")[0] == "kafka"
    assert env["MODERATOR_REDIS__URL"].startswith("redis://redis:")
    # The policy path sits inside the mounted folder, so edits on the host hot-reload.
    policy = PurePosixPath(env["MODERATOR_POLICY__PATH"])
    mounts = _mounts(moderator)
    folder = next(t for t in mounts if policy.is_relative_to(t))
    assert (DEPLOY / mounts[folder] / policy.relative_to(folder)).is_file()


def test_service_runs_locked_down_and_drains_before_sigkill(
    services: dict[str, dict[str, Any]],
) -> None:
    moderator = services["moderator"]
    assert moderator["read_only"] is True
    assert "/tmp" in moderator["tmpfs"]
    assert moderator["cap_drop"] == ["ALL"]
    drain = float(moderator["environment"]["MODERATOR_PIPELINE__DRAIN_TIMEOUT_S"])
    grace = int(moderator["stop_grace_period"].rstrip("s"))
    assert grace > drain
    assert "/readyz" in " ".join(moderator["healthcheck"]["test"])


def test_ports_are_bound_to_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


def test_bind_mounts_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, source in _mounts(service).items():
            assert (DEPLOY / source).exists(), f"{name}: {source} (for {target}) is missing"


def test_prometheus_scrapes_the_service_and_loads_the_alerts(
    services: dict[str, dict[str, Any]],
) -> None:
    mounts = _mounts(services["prometheus"])
    config = yaml.safe_load((DEPLOY / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    for rule_file in config["rule_files"]:
        assert (DEPLOY / mounts[rule_file]).resolve() == DEPLOY / "prometheus" / "alerts.yml"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for c in jobs["moderator"]["static_configs"] for t in c["targets"]]
    port = services["moderator"].get("environment", {}).get("MODERATOR_HTTP__PORT", "8080")
    assert targets == [f"moderator:{port}"]
    assert jobs["moderator"].get("metrics_path", "/metrics") == "/metrics"


def test_grafana_is_provisioned_with_the_datasource_and_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    mounts = _mounts(services["grafana"])
    provisioning = DEPLOY / mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "moderator.yml").read_text())
    (provider,) = providers["providers"]
    folder = PurePosixPath(provider["options"]["path"])
    dashboards = [t for t in mounts if PurePosixPath(t).parent == folder]
    assert [(DEPLOY / mounts[t]).resolve() for t in dashboards] == [
        DEPLOY / "grafana" / "moderator.json"
    ]


def test_gpu_override_reserves_an_nvidia_gpu() -> None:
    override = _load("docker-compose.gpu.yml")["services"]["moderator"]
    (device,) = override["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert set(override["environment"]) <= known_env_vars()
    assert yaml.safe_load(override["environment"]["MODERATOR_MODEL__PROVIDERS"])[0] == "cuda"
