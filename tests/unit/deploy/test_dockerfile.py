"""deploy/Dockerfile without a Docker engine: its instructions, and its health check run for real.

hadolint lints the file in scripts/lint-deploy.sh; here: the base image, the non-root user, the
writable paths, the entry point and the settings it sets, what the build context admits, and
that the HEALTHCHECK (and the compose file's readiness check) command exits 0 only on a 200.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from moderator.settings import known_env_vars

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
IGNORE = REPO / "deploy" / "Dockerfile.dockerignore"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def _args() -> dict[str, str]:
    return {
        name: value
        for keyword, args in instructions()
        if keyword == "ARG" and "=" in args
        for name, value in [args.split("=", 1)]
    }


def _expand(text: str) -> str:
    args = _args()
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), text)


def _final_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(ins) if keyword == "FROM")
    return ins[last_from:]


def _env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in _final_stage():
        if keyword == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def test_runtime_base_is_a_cuda13_cudnn_runtime_image() -> None:
    keyword, base = _final_stage()[0]
    assert keyword == "FROM"
    image = _expand(base.split()[0])
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", image), image


def test_runs_as_a_fixed_non_root_user() -> None:
    users = [args for keyword, args in _final_stage() if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    uid = _expand(users[-1]).split(":")[0]
    assert uid.isdigit(), "a numeric uid lets Kubernetes verify runAsNonRoot"
    assert int(uid) != 0
    chart_values = yaml.safe_load((REPO / "helm" / "moderator" / "values.yaml").read_text())
    assert chart_values["podSecurityContext"]["runAsUser"] == int(uid)


def test_writable_paths_are_declared_volumes() -> None:
    volumes = [json.loads(args) for keyword, args in _final_stage() if keyword == "VOLUME"]
    declared = {v for vs in volumes for v in vs}
    env = _env()
    assert {"/tmp", env["XDG_CACHE_HOME"]} <= declared
    assert env["HOME"] in declared  # libraries that write under ~ land on a writable volume
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_entry_point_is_moderator_serve() -> None:
    final = dict(_final_stage())
    assert json.loads(final["ENTRYPOINT"]) == ["moderator"]
    assert json.loads(final["CMD"]) == ["serve"]
    assert final["STOPSIGNAL"] == "SIGTERM"
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'moderator = "moderator.cli:main"' in pyproject


def test_env_names_are_real_settings() -> None:
    names = {n for n in _env() if n.startswith("MODERATOR_")}
    assert names, "the image should set its paths and port"
    assert names <= known_env_vars(), names - known_env_vars()
    assert _env()["MODERATOR_MODEL__PATH"] == "/opt/moderator/model"


def _copy_sources() -> Iterator[str]:
    for keyword, args in instructions():
        if keyword == "COPY" and "--from=" not in args:
            *sources, _ = shlex.split(args)
            yield from (_expand(s).rstrip("/") for s in sources if not s.startswith("--"))


def _admitted(path: str) -> bool:
    """Whether Dockerfile.dockerignore lets `path` into the build context (last match wins)."""
    admitted = True
    for line in IGNORE.read_text(encoding="utf-8").splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            admitted = negate
    return admitted


def test_build_context_admits_every_copied_path() -> None:
    sources = list(_copy_sources())
    assert "moderator" in sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert _admitted(source), f"COPY {source}: excluded by Dockerfile.dockerignore"
    assert not _admitted(".venv")
    assert not _admitted(".git")
    assert _admitted("models/clip-b32"), "baked models come from models/"


class _Probe(http.server.BaseHTTPRequestHandler):
    statuses: ClassVar[dict[str, int]] = {}  # path → status; each test gets its own subclass

    def do_GET(self) -> None:
        self.send_response(self.statuses.get(self.path, 404))
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        return


@pytest.fixture
def probe_server() -> Iterator[tuple[http.server.HTTPServer, type[_Probe]]]:
    handler = type("Handler", (_Probe,), {"statuses": {}})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def _healthcheck_argv() -> list[str]:
    (args,) = [a for keyword, a in _final_stage() if keyword == "HEALTHCHECK"]
    argv: list[str] = json.loads(args.split(" CMD ", 1)[1])
    assert argv[0] == "python3"
    return [sys.executable, *argv[1:]]


def _compose_readiness_argv() -> list[str]:
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    test: list[str] = compose["services"]["moderator"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    return [sys.executable, *test[2:]]


def _run(argv: list[str], port: int) -> int:
    env = {**os.environ, "MODERATOR_HTTP__PORT": str(port)}
    return subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False).returncode


def test_healthcheck_passes_only_when_healthz_answers_200(
    probe_server: tuple[http.server.HTTPServer, type[_Probe]],
) -> None:
    server, handler = probe_server
    port = server.server_address[1]
    argv = _healthcheck_argv()
    handler.statuses["/healthz"] = 200
    assert _run(argv, port) == 0
    handler.statuses["/healthz"] = 503
    assert _run(argv, port) != 0


def test_healthcheck_fails_when_nothing_listens(
    probe_server: tuple[http.server.HTTPServer, type[_Probe]],
) -> None:
    server, _ = probe_server
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    assert _run(_healthcheck_argv(), port) != 0


def test_compose_readiness_check_follows_readyz(
    probe_server: tuple[http.server.HTTPServer, type[_Probe]],
) -> None:
    server, handler = probe_server
    argv = [a.replace(":8080/", f":{server.server_address[1]}/") for a in _compose_readiness_argv()]
    handler.statuses["/readyz"] = 200
    assert _run(argv, 0) == 0
    handler.statuses["/readyz"] = 503
    assert _run(argv, 0) != 0
