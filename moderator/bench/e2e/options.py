"""What `bench e2e` is asked to run (`E2EOptions`), its fixed settings, and its percentile."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np

from moderator.bench.model import B32
from moderator.embed.paths import DEMO_NAME
from moderator.errors import ConfigError

REPO_ROOT: Final = Path(__file__).resolve().parents[3]
# Events of up to ~1.8 MB (a 1.3 MB PNG in base64): over Kafka's 1 MB default record limit.
MAX_RECORD_BYTES: Final = 16 * 1024 * 1024
SURFACE: Final = "upload"
# Defaults that finish in about a minute per phase on a 2-core CPU box.
DEFAULT_EVENTS: Final = {DEMO_NAME: 600, B32: 200}
DEFAULT_EVENTS_OTHER: Final = 200
READY_TIMEOUT_S: Final = 300.0  # model load + policy compile + group join
POLL_S: Final = 0.05
WARMUP_FRACTION: Final = 0.2
WARMUP_MAX_S: Final = 2.0

Progress = Callable[[str], None]


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class E2EOptions:
    model: str = DEMO_NAME
    events: int | None = None
    broker: str = "127.0.0.1:9092"
    peers: Sequence[str] = ("naive",)  # "naive", "strong": each runs after ours
    peer_model: Path | None = None
    peer_batch: int = 1
    peer_threads: int = 0
    peer_latency: bool = True
    duration: float = 20.0
    unique: int = 32
    png_fraction: float = 0.2
    url_fraction: float = 0.0
    partitions: int = 6
    producers: int = 1
    providers: Sequence[str] = ("cuda", "cpu")
    precision: str = "auto"
    policy: Path | None = None
    timeout: float = 600.0
    service_env: dict[str, str] = field(default_factory=dict)
    replicas: int = 1
    replica_devices: Sequence[int] = ()
    keep_topics: bool = False
    seed: int = 0
    encoding: str = "json"  # inline images as JSON + base64, or "binary" CloudEvents
    cores_broker: str | None = None  # e.g. "0-7": pin the local broker there
    cores_load: str | None = None  # the load generator and collector (this process)
    service_cores: frozenset[int] | None = None  # set by the run: the systems' own cores


def default_events(model: str) -> int:
    return DEFAULT_EVENTS.get(model, DEFAULT_EVENTS_OTHER)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation); None for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def default_policy(model: str) -> Path:
    """policies/demo.yaml for the demo model, else policies/default.yaml: from the working
    directory, else from the checkout this package runs from."""
    name = "demo.yaml" if model == DEMO_NAME else "default.yaml"
    for base in (Path.cwd(), REPO_ROOT):
        if (base / "policies" / name).is_file():
            return base / "policies" / name
    raise ConfigError(f"policies/{name} not found here; pass --policy")
