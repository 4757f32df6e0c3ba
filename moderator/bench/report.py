"""One result format for every bench: a table for people, a JSON object for records.

A figure without its machine is worthless, so every report carries the device (GPU card, CPU
model, core count, load average at start and end: the CPU box is shared), the library
versions, the date and the exact command line. The JSON is written to a file on every run;
`--json` prints it instead of the table.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final, TextIO

__all__ = [
    "Column",
    "Report",
    "default_output",
    "environment",
    "format_table",
    "format_value",
    "load_average",
]

# Packages whose versions decide the figures; absent ones are reported as null.
VERSIONED: Final = (
    "moderator",
    "onnxruntime-gpu",
    "onnxruntime",
    "numpy",
    "pillow",
    "aiokafka",
    "google-crc32c",
    "pybase64",
    "nvidia-nvimgcodec-cu13",
    "torch",
    "transformers",
    "torchcodec",
    "torchvision",
)
_NVIDIA_SMI_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: the row key it shows and its header."""

    key: str
    header: str


@dataclass
class Report:
    """What a bench found. `results` holds the headline fields (`ratio` among them), `rows`
    the per-case figures the table shows."""

    bench: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env.setdefault("load_average_start", load_average())

    def finish(self) -> None:
        """Record the environment as the run ends (load average included)."""
        self.env = environment(self.env.get("load_average_start"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            **self.results,
            "rows": self.rows,
            "config": self.config,
            "notes": self.notes,
            "environment": self.env,
        }

    def table(self) -> str:
        """The rows as an aligned text table, then the headline fields and notes."""
        lines = [
            format_table(
                [c.header for c in self.columns],
                [[format_value(row.get(c.key)) for c in self.columns] for row in self.rows],
            )
        ]
        for key, value in self.results.items():
            if not isinstance(value, dict | list):
                lines.append(f"{key}: {format_value(value)}")
        env = self.env
        lines.append(
            f"device: {env.get('device')} | cpu: {env.get('cpu_model')} × {env.get('cpu_count')}"
            f" | load avg {_loads(env.get('load_average_start'))} → "
            f"{_loads(env.get('load_average_end'))}"
        )
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)

    def emit(self, *, as_json: bool, out: Path | None, stream: TextIO | None = None) -> Path:
        """Write the JSON file (always) and print the table, or the JSON with `as_json`."""
        stream = stream or sys.stdout  # looked up now: the CLI runner swaps sys.stdout
        if "date" not in self.env:
            self.finish()
        path = out or default_output(self.bench)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.as_dict(), indent=2, default=str)
        path.write_text(text + "\n")
        if as_json:
            stream.write(json.dumps(self.as_dict(), default=str) + "\n")
        else:
            stream.write(self.table() + "\n")
            stream.write(f"json: {path}\n")
        return path


def default_output(bench: str) -> Path:
    """`.run/bench/<bench>-<UTC time>.json` under the working directory (.run is ignored)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(".run") / "bench" / f"{bench}-{stamp}.json"


def format_value(value: Any) -> str:
    """Three significant figures for floats (1234 → 1234, 0.01234 → 0.0123), '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        magnitude = abs(value)
        if magnitude >= 100 or magnitude == 0:
            return f"{value:.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned numbers, a rule under the header."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def environment(load_average_start: list[float] | None = None) -> dict[str, Any]:
    """Device, CPU, versions, date and command line of this run."""
    gpus = _gpu_names()
    return {
        "device": ", ".join(gpus) if gpus else "cpu",
        "gpus": gpus,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_start": load_average_start,
        "load_average_end": load_average(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in VERSIONED},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["moderator", *sys.argv[1:]])
        if Path(sys.argv[0]).name == "moderator"
        else shlex.join(sys.argv),
    }


def _loads(values: Any) -> str:
    if not values:
        return "?"
    return "/".join(f"{v:.2f}" for v in values)


def _version(name: str) -> str | None:
    if name == "moderator":  # also right when run from a checkout that is not installed
        from moderator import __version__

        return __version__
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _gpu_names() -> list[str]:
    """GPU names from torch when it is already loaded (never imported here), else nvidia-smi."""
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=_NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]
