"""Hot reload for `serve`: poll the policy path, recompile changes off the hot path, swap.

Scorers read `reloader.current` once per batch and score the whole batch with it, so an event
is scored exactly once, by one policy version, whatever happens mid-batch. A swap is a single
attribute assignment of an immutable CompiledPolicy (atomic under the GIL and on one event loop).

Change detection compares content fingerprints, not modification times: Kubernetes updates a
mounted ConfigMap by swapping a `..data` symlink, which leaves the visible files' own mtimes
untouched. Files are read through their symlinks and hashed.

An edit that does not validate or compile keeps the last good policy; the errors are logged
once per distinct content (not every poll) and passed to `on_result`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

from moderator.cache.keys import EmbeddingCache
from moderator.cache.memory import MemoryEmbeddingCache
from moderator.errors import ModeratorError, PolicyError
from moderator.log import get
from moderator.policy.compile import DEFAULT_TTL_S, compile_policy
from moderator.policy.load import PolicySet, load_policies, policy_files
from moderator.policy.score import CompiledPolicy
from moderator.types import Encoder

log = get("policy")

ResultCallback = Callable[[bool, str | None, str | None, str | None], None]
"""on_result(ok, name, version, error): after every load attempt. When ok, the name and version
of the policy now live (unchanged content reports the same version again); otherwise the
error text, while the previous policy stays live."""


def fingerprint(path: Path, extra: Iterable[Path] = ()) -> str:
    """sha256 over the policy files' names and contents (through symlinks) plus `extra` files.

    A missing or unreadable file contributes a marker instead of raising, so a half-written
    ConfigMap shows up as a change (and then a validation error), never as a crash.
    """
    digest = hashlib.sha256()
    files = policy_files(path) if path.exists() else []
    for file in [*files, *sorted(set(extra))]:
        digest.update(str(file).encode("utf-8") + b"\0")
        try:
            digest.update(hashlib.sha256(file.read_bytes()).digest())
        except OSError as exc:
            digest.update(f"unreadable:{exc.errno}".encode())
    if not files:
        digest.update(b"missing" if not path.exists() else b"empty")
    return digest.hexdigest()


class PolicyReloader:
    """Keeps `current` up to date with the policy at `path` (a file or a folder)."""

    def __init__(
        self,
        path: Path,
        encoder: Encoder,
        cache: EmbeddingCache | None = None,
        *,
        interval_s: float = 2.0,
        on_result: ResultCallback | None = None,
        text_ttl_s: int = DEFAULT_TTL_S,
    ) -> None:
        self.path = Path(path)
        self.encoder = encoder
        # Without a shared cache, remember embeddings here so a reload still embeds only edits.
        self.cache: EmbeddingCache = cache if cache is not None else MemoryEmbeddingCache()
        self.interval_s = interval_s
        self.on_result: ResultCallback = on_result or (lambda ok, name, version, error: None)
        self.text_ttl_s = text_ttl_s
        self._current: CompiledPolicy | None = None
        self._examples: tuple[Path, ...] = ()
        self._seen: str | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def current(self) -> CompiledPolicy:
        """The live policy; read it once per batch. Raises before the first successful load."""
        if self._current is None:
            raise RuntimeError("PolicyReloader.load() has not succeeded yet")
        return self._current

    @property
    def loaded(self) -> bool:
        """A policy is live (for readiness probes, which must not raise)."""
        return self._current is not None

    async def start(self) -> CompiledPolicy:
        """Load (raising PolicyError if invalid), then poll in a background task until stop()."""
        compiled = await self.load()
        self._stop.clear()
        self._task = asyncio.create_task(self.run(), name="policy-reload")
        return compiled

    async def stop(self) -> None:
        """End polling and wait for a reload in progress to finish."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def load(self) -> CompiledPolicy:
        """First load, at start: raises PolicyError when the policy is invalid."""
        async with self._lock:
            seen = await asyncio.to_thread(fingerprint, self.path)
            try:
                compiled, loaded = await self._build()
            except ModeratorError as exc:
                self.on_result(False, None, None, str(exc))
                raise
            self._install(compiled, loaded, seen)
            return compiled

    async def check(self) -> bool:
        """Poll once: reload if the content changed. True when a new version went live."""
        async with self._lock:
            seen = await asyncio.to_thread(fingerprint, self.path, self._examples)
            if seen == self._seen:
                return False
            self._seen = seen  # a bad edit is reported once, not every poll
            try:
                compiled, loaded = await self._build()
            except ModeratorError as exc:
                self._reject(exc)
                return False
            except Exception as exc:  # keep serving the last good policy whatever went wrong
                log.exception("policy reload failed unexpectedly")
                self.on_result(False, None, None, f"{type(exc).__name__}: {exc}")
                return False
            previous = self._current
            # `seen` was taken before reading: if the files changed meanwhile, the next poll
            # sees a different fingerprint and loads again, so no edit is ever missed.
            self._install(compiled, loaded, seen)
            return previous is None or previous.version != compiled.version

    async def run(self) -> None:
        """Poll every `interval_s` until `stop()`; waits on an event, never spins."""
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                try:
                    await self.check()
                except Exception:  # a dead poller would freeze the policy silently
                    log.exception("policy check failed; polling goes on")

    async def _build(self) -> tuple[CompiledPolicy, PolicySet]:
        loaded = await asyncio.to_thread(load_policies, self.path, tokens=self.encoder)
        compiled = await compile_policy(loaded, self.encoder, self.cache, ttl_s=self.text_ttl_s)
        return compiled, loaded

    def _install(self, compiled: CompiledPolicy, loaded: PolicySet, seen: str) -> None:
        previous = self._current
        self._examples = loaded.example_files
        self._seen = seen
        if previous is not None and previous.version == compiled.version:
            log.info("policy unchanged", extra={"fields": {"version": compiled.version}})
        else:
            self._current = compiled
            log.info(
                "policy live",
                extra={
                    "fields": {
                        "version": compiled.version,
                        "previous": previous.version if previous else None,
                        "name": compiled.name,
                        "concepts": len(compiled.concepts),
                    }
                },
            )
        for warning in loaded.warnings:
            log.warning("policy warning", extra={"fields": {"detail": warning}})
        self.on_result(True, compiled.name, compiled.version, None)

    def _reject(self, exc: ModeratorError) -> None:
        problems = exc.problems if isinstance(exc, PolicyError) else [str(exc)]
        kept = self._current.version if self._current else None
        log.error(
            "policy edit rejected; keeping the last good policy",
            extra={"fields": {"kept": kept, "problems": problems}},
        )
        self.on_result(False, None, None, str(exc))
