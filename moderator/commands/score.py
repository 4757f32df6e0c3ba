"""`moderator score`: the service's scoring path for files on disk, without Kafka.

Each image goes through the same decode, embed, `CompiledPolicy.score` and `build_verdict`
calls as in `serve`, so a verdict printed here is the one the service would publish (only
`processed_at` and timings differ). An unusable image yields an error object carrying the
same reason code the service would put in the DLQ.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moderator.embed import load_model
from moderator.errors import ModeratorError
from moderator.pipeline.events import ImageEvent
from moderator.policy import MemoryEmbeddingCache, compile_policy, load_policies
from moderator.service.verdict import build_verdict


async def score_files(
    paths: Sequence[Path], *, model: str, policy: Path, top_k: int = 5
) -> list[dict[str, Any]]:
    """One verdict (or error object) per path, in order."""
    runtime = await asyncio.to_thread(load_model, model, providers=("cuda", "cpu"))
    loaded = load_policies(policy, tokens=runtime)
    compiled = await compile_policy(loaded, runtime, MemoryEmbeddingCache())
    results: list[dict[str, Any]] = []
    for path in paths:
        data = await asyncio.to_thread(path.read_bytes)
        event = ImageEvent(id=str(path), image_bytes=data)
        image_sha = hashlib.sha256(data).hexdigest()
        started = time.monotonic()
        try:
            embedding = await asyncio.to_thread(runtime.encode_images, [data])
        except ModeratorError as exc:
            results.append({"id": str(path), "error": exc.reason.value, "detail": str(exc)})
            continue
        embedded = time.monotonic()
        outcome = compiled.score(embedding, [None], top_k=top_k)[0]
        timings = {"embed": embedded - started, "score": time.monotonic() - embedded}
        verdict = build_verdict(
            event, outcome, compiled, runtime, image_sha=image_sha, timings=timings, cached=False
        )
        results.append(verdict.wire())
    return results
