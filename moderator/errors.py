"""Every error moderator raises on purpose, and the dead-letter reason each one maps to.

    ModeratorError
    ├── ConfigError                 settings or files a human must fix before start
    ├── EventError                  the event itself is malformed          → invalid_event
    ├── AcquireError                                                       → fetch_failed
    │   ├── FetchBlocked            URL refused by the SSRF guard          → fetch_blocked
    │   └── TooLarge                body over the byte limit               → too_large
    ├── DecodeError                 bytes are not a usable image           → decode_error
    │   ├── UnsupportedFormat       a format outside the allowlist         → unsupported_format
    │   ├── DecompressionBomb       declared pixels over the limit         → decompression_bomb
    │   └── DecodeCrashed           the decode process died on it, twice   → decode_crashed
    ├── InvalidEmbedding            NaN or Inf in an embedding             → invalid_embedding
    ├── ModelError                  model directory missing, corrupt or mismatched
    ├── TextTooLong                 a prompt over the model's context length
    └── PolicyError                 a policy file that does not validate

    ServiceFault (not a ModeratorError: never dead-lettered)
    ├── KafkaFailed                 a Kafka request failed (poll, commit, admin)
    │   ├── CommitFailed            an offset commit was refused (rebalance, broker away)
    │   └── PublishFailed           the broker refused a send
    └── InferenceFailed             the model runtime failed on a batch

Pipeline errors carry a stable `reason` (a `Reason`), which is what lands in the DLQ
`x-error-reason` header: consumers of the DLQ switch on it, so its values never change.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Stable dead-letter reason codes (a public contract: add, never rename)."""

    INVALID_EVENT = "invalid_event"
    FETCH_FAILED = "fetch_failed"
    FETCH_BLOCKED = "fetch_blocked"
    TOO_LARGE = "too_large"
    DECODE_ERROR = "decode_error"
    UNSUPPORTED_FORMAT = "unsupported_format"
    DECOMPRESSION_BOMB = "decompression_bomb"
    INTERNAL_ERROR = "internal_error"
    DECODE_CRASHED = "decode_crashed"
    INVALID_EMBEDDING = "invalid_embedding"


class ServiceFault(Exception):
    """A fault of the service, not of the event it was handling: never dead-lettered. The event
    is left unanswered and uncommitted, to be answered again (after a restart if need be)."""


class KafkaFailed(ServiceFault):
    """A Kafka request failed; `moderator.kafka` raises it in place of aiokafka's errors."""


class CommitFailed(KafkaFailed):
    """An offset commit was refused: the offsets stay uncommitted and the work is redone."""


class PublishFailed(KafkaFailed):
    """The broker did not take a record (a verdict, a dead letter, an event)."""


class InferenceFailed(ServiceFault):
    """The model runtime failed on a batch (a CUDA error, a broken session): every event in
    it would fail the same way, so none of them is dead-lettered."""


class ModeratorError(Exception):
    """Root of moderator's errors; `reason` is the DLQ code when one applies."""

    reason: Reason = Reason.INTERNAL_ERROR


class ConfigError(ModeratorError):
    """Settings or files that a human must fix; raised at start, never per event."""


class EventError(ModeratorError):
    reason = Reason.INVALID_EVENT


class AcquireError(ModeratorError):
    """Image bytes could not be fetched; `attempts` (fetch attempts made) feeds `x-attempts`."""

    reason = Reason.FETCH_FAILED

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


class FetchBlocked(AcquireError):
    reason = Reason.FETCH_BLOCKED


class TooLarge(AcquireError):
    reason = Reason.TOO_LARGE


class DecodeError(ModeratorError):
    reason = Reason.DECODE_ERROR


class UnsupportedFormat(DecodeError):
    reason = Reason.UNSUPPORTED_FORMAT


class DecompressionBomb(DecodeError):
    reason = Reason.DECOMPRESSION_BOMB


class DecodeCrashed(DecodeError):
    """The decode process died while holding the image, on its retry too."""

    reason = Reason.DECODE_CRASHED


class InvalidEmbedding(ModeratorError):
    """An embedding (fresh or cached) holds NaN or Inf: scoring it could only guess."""

    reason = Reason.INVALID_EMBEDDING


class ModelError(ModeratorError):
    """The model directory is missing, corrupt (hash mismatch) or not a CLIP export."""


class TextTooLong(ModeratorError):
    """A text is longer than the model's context; never truncated silently."""

    def __init__(self, text: str, tokens: int, limit: int) -> None:
        super().__init__(f"text has {tokens} tokens, the model's limit is {limit}: {text[:60]!r}")
        self.text = text
        self.tokens = tokens
        self.limit = limit


class PolicyError(ModeratorError):
    """A policy that does not validate; `problems` holds one line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
