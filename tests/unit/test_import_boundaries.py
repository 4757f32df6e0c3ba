"""Import boundaries: `serve` never imports the export wing (torch and transformers stay out of
the service), and only the Kafka package knows aiokafka."""

import ast
import subprocess
import sys
from pathlib import Path

import moderator


def test_service_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, moderator.service.app, moderator.cli, moderator.commands.score; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _imported(path: Path) -> set[str]:
    """The top-level packages a module imports (absolute imports, anywhere in it)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_kafka_package_imports_aiokafka() -> None:
    package = Path(moderator.__file__).parent
    allowed = {
        # The naive peer of `bench e2e` is written the way an outsider would write it, with
        # aiokafka directly: it is what ours is measured against, not part of ours.
        package / "bench" / "naive.py",
        package / "bench" / "strong.py",
    }
    offenders = [
        str(path.relative_to(package.parent))
        for path in sorted(package.rglob("*.py"))
        if not path.is_relative_to(package / "kafka")
        and path not in allowed
        and "aiokafka" in _imported(path)
    ]
    assert offenders == []


# What each part may import of the others: a stage imports only what comes before it on the
# path (events → acquire → decode → batch → embed → score → publish), and the wings
# (commands, export, demo, bench, harness, chaos) are never imported by what `serve` runs.
_WINGS = {"commands", "export", "demo", "bench", "harness", "chaos"}
_NOT_FROM = {
    "pipeline": {"cache", "embed", "policy", "kafka", "service"} | _WINGS,
    "cache": {"embed", "policy", "kafka", "service"} | _WINGS,
    "embed": {"cache", "policy", "kafka", "service"} | _WINGS,
    "policy": {"kafka", "service"} | _WINGS,
    "kafka": {"cache", "embed", "policy", "service"} | _WINGS,
    "service": _WINGS,
}


def _imported_parts(path: Path) -> set[str]:
    """The `moderator.<part>` names a module imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("moderator.")}
    return found


def test_dependencies_point_one_way_along_the_data_path() -> None:
    package = Path(moderator.__file__).parent
    wrong = {
        str(path.relative_to(package.parent)): sorted(_imported_parts(path) & banned)
        for part, banned in _NOT_FROM.items()
        for path in sorted((package / part).rglob("*.py"))
        if _imported_parts(path) & banned
    }
    assert wrong == {}
