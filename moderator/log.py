"""Structured logging: `key=value` text by default, one JSON object per line when asked.

Fields travel as `extra={"fields": {...}}`. Secrets never reach a handler: values that are
`SecretStr`, and URL passwords in any field or message, are masked by the formatter itself,
so a careless call site cannot leak them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from pydantic import SecretStr

# user:password@ in URLs (redis://, kafka SASL URLs, image URLs with credentials).
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]*:[^/@\s]*@")
_MASK = "***"


def redact(text: str) -> str:
    """Mask credentials embedded in URLs."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{_MASK}:{_MASK}@", text)


def _clean(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return _MASK
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields = _clean(getattr(record, "fields", {}) or {})
        message = redact(record.getMessage())
        if record.exc_info:
            fields["exc"] = redact(self.formatException(record.exc_info))
        if self.as_json:
            payload = {
                "ts": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": message,
                **fields,
            }
            return json.dumps(payload, default=str)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        tail = " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        return f"{stamp} {record.levelname:<7} {record.name}: {message}" + (
            f" {tail}" if tail else ""
        )


def _quote(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (" " in text or not text) else text


def configure(level: str = "INFO", as_json: bool = False) -> None:
    """Install one stderr handler on the `moderator` and `aiokafka` loggers (idempotent), so
    the client's own lines carry a time, a level and their logger like ours."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(as_json))
    ours = logging.getLevelName(level)
    # aiokafka is chatty at INFO about group membership; keep its warnings.
    for name, at in (("moderator", ours), ("aiokafka", max(ours, logging.WARNING))):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(at)
        logger.propagate = False


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"moderator.{name}")
