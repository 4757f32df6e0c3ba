"""Settings errors that never show a secret.

pydantic echoes each bad input in its errors, and PyYAML quotes the offending source line, so a
mistyped `MODERATOR_REDIS__URL` would print its password in the start-up error. Reports built
here hide a secret field's value, show containers (which may hold one) by type only, keep YAML
errors to line and column, and finally mask every secret the settings were given (secret
fields' values and the credentials of any URL, in any setting) wherever they still appear.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, get_args
from urllib.parse import unquote

import yaml
from pydantic import BaseModel, SecretStr

SecretPaths = frozenset[tuple[str, str]]
MASK = "**********"

# The credentials part of any URL-like text, `scheme://user:password@`, up to the last `@`.
_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#\s'\"]+)@")


def secret_paths(settings: type[BaseModel]) -> SecretPaths:
    """(group, field) of every SecretStr setting in a model of groups, e.g. ("redis", "url")."""
    paths = set()
    for group, field in settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        for name, sub in model.model_fields.items():
            if sub.annotation is SecretStr or SecretStr in get_args(sub.annotation):
                paths.add((group, name))
    return frozenset(paths)


def credentials_in(text: str) -> set[str]:
    """The user-info parts (and passwords alone) of every URL in `text`, raw and decoded."""
    found: set[str] = set()
    for userinfo in _USERINFO.findall(text):
        secret = userinfo.split(":", 1)[1] if ":" in userinfo else userinfo
        found |= {userinfo, secret, unquote(userinfo), unquote(secret)}
    return found


def secrets_in(data: Any, paths: SecretPaths, path: tuple[str, ...] = ()) -> set[str]:
    """Every text a message must not show: secret fields' values and URL credentials."""
    found: set[str] = set()
    if isinstance(data, Mapping):
        for key, value in data.items():
            found |= secrets_in(value, paths, (*path, str(key).lower()))
        return found
    if isinstance(data, list | tuple | set):
        for item in data:
            found |= secrets_in(item, paths, path)
        return found
    if path[:2] in paths and data is not None:
        found |= {str(data), repr(data)}
    if isinstance(data, str):
        found |= credentials_in(data)
    return found


def env_secrets(
    environ: Mapping[str, str], paths: SecretPaths, prefix: str, delimiter: str
) -> set[str]:
    """Secrets in `PREFIX_GROUP__FIELD` variables, found before any parsing can fail."""
    found: set[str] = set()
    for name, value in environ.items():
        if name.upper().startswith(prefix):
            path = tuple(name[len(prefix) :].lower().split(delimiter))
            found |= secrets_in(value, paths, path)
    return found


def mask(text: str, secrets: set[str]) -> str:
    """`text` with every secret replaced, longest first (a password inside a longer URL)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def describe(error: Mapping[str, Any], paths: SecretPaths, prefix: str, delimiter: str) -> str:
    """One pydantic error as `VARIABLE: what is wrong (got ...)`, secrets left out."""
    loc = [str(p) for p in error["loc"]]
    var = prefix + delimiter.join(loc).upper()
    value = error.get("input")
    if tuple(loc[:2]) in paths:
        shown = "value hidden: it is a secret"
    elif isinstance(value, Mapping | list | tuple | set):
        shown = f"got a {type(value).__name__}"  # it may hold a secret setting
    else:
        shown = f"got {value!r}"
    return f"{var}: {error['msg']} ({shown})"


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message without the quoted source lines, which may hold a secret."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__
    parts = []
    for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
        if text:
            at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            parts.append(f"{text}{at}")
    return ", ".join(parts) or type(exc).__name__
