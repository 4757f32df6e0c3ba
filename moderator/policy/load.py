"""Read policy YAML into validated, fully resolved concepts, or explain every mistake at once.

Policy authors are not programmers, so each problem is one line an editor can jump to:

    default.yaml:14: concepts[weapons.gun].threshhold: unknown key (did you mean `threshold`?)

Line numbers come from YAML's compose step (each node keeps its start mark), kept in a map from
field path to line; pydantic's error locations are looked up in that map. Everything is checked
before anything is raised, so one run lists all problems, not the first.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.constructor import ConstructorError

from moderator.errors import PolicyError
from moderator.policy.messages import explain_error, field_name
from moderator.policy.schema import (
    Action,
    Concept,
    Defaults,
    Mode,
    Policy,
    Scoring,
    Severity,
)
from moderator.policy.tokens import TokenCounter, clip_tokens
from moderator.policy.yamllines import LineMap, Loc, YAMLLimitError, compose, to_python

__all__ = ["ConceptSpec", "PolicySet", "TokenCounter", "load_policies", "policy_files"]

POLICY_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 1024 * 1024
"""Largest policy file read, as much as a Kubernetes ConfigMap holds: hundreds of concepts fit
in a tenth of it, and PyYAML (pure Python, for the line marks) needs seconds per MiB."""


@dataclass(frozen=True)
class ConceptSpec:
    """A concept with every default applied and every path resolved: what compile consumes."""

    id: str
    category: str
    description: str | None
    severity: Severity
    action: Action
    mode: Mode
    scoring: Scoring
    prompts: tuple[str, ...]
    counter_prompts: tuple[str, ...]
    benign: tuple[str, ...]
    """The file's `benign` texts minus this concept's own texts; empty for absolute scoring."""
    threshold: float
    review_band: float
    surfaces: tuple[str, ...] | None
    """Case-folded (events' surfaces match case-insensitively); None means every surface."""
    examples: tuple[Path, ...]
    example_threshold: float
    origin: str
    """`file:line` of the concept's entry, for messages about it."""

    def canonical(self) -> dict[str, Any]:
        """Everything that changes scoring, as plain JSON data (origin and docs left out)."""
        return {
            "id": self.id,
            "category": self.category,
            "severity": self.severity.value,
            "action": self.action.value,
            "mode": self.mode.value,
            "scoring": self.scoring.value,
            "prompts": list(self.prompts),
            "counter_prompts": list(self.counter_prompts),
            "benign": list(self.benign),
            "threshold": self.threshold,
            "review_band": self.review_band,
            "surfaces": None if self.surfaces is None else sorted(self.surfaces),
            "example_threshold": self.example_threshold,
        }


@dataclass(frozen=True)
class PolicySet:
    """Everything loaded from one path (a file or a folder of files)."""

    names: tuple[str, ...]
    concepts: tuple[ConceptSpec, ...]
    files: tuple[Path, ...]
    warnings: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "+".join(self.names)

    @property
    def example_files(self) -> tuple[Path, ...]:
        return tuple(p for c in self.concepts for p in c.examples)


def policy_files(path: Path) -> list[Path]:
    """The YAML files a path stands for: itself, or a folder's *.yaml/*.yml (not recursive).

    Hidden entries are skipped: Kubernetes mounts a ConfigMap as `..data` and `..<timestamp>`
    folders next to symlinks, and only the symlinks are the policy.
    """
    if path.is_dir():
        return sorted(
            p
            for p in path.iterdir()
            if p.suffix in POLICY_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
    return [path]


def load_policies(
    paths: Path | str | Sequence[Path | str], *, tokens: TokenCounter | None = None
) -> PolicySet:
    """Load and validate policy files/folders as one set; raises PolicyError listing every problem.

    Prompt lengths are counted with `tokens` (usually the Encoder), or without it with OpenAI
    CLIP's tokenizer against its 77 tokens; a prompt over the limit is an error either way.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    if tokens is None:
        tokens = clip_tokens()
    problems: list[str] = []
    warnings: list[str] = []
    loaded: list[_LoadedFile] = []
    files: list[Path] = []
    for raw_path in paths:
        path = Path(raw_path)
        if not path.exists():
            problems.append(f"{path}: no such file or folder")
            continue
        found = policy_files(path)
        if not found:
            problems.append(f"{path}: no policy files (*.yaml, *.yml) in this folder")
        files.extend(found)
    for file in files:
        result = _FileChecker(file, tokens).check()
        problems.extend(result.problems)
        warnings.extend(result.warnings)
        if result.loaded is not None:
            loaded.append(result.loaded)
    problems.extend(_duplicate_ids(loaded))
    if problems:
        raise PolicyError(problems)
    concepts = tuple(spec for item in loaded for spec in _resolve(item))
    return PolicySet(
        names=tuple(item.policy.name for item in loaded),
        concepts=concepts,
        files=tuple(files),
        warnings=tuple(warnings),
    )


# --- checking one file ------------------------------------------------------------------------


@dataclass(frozen=True)
class _LoadedFile:
    path: Path
    policy: Policy
    lines: LineMap


@dataclass
class _FileResult:
    problems: list[str]
    warnings: list[str]
    loaded: _LoadedFile | None = None


class _FileChecker:
    """Validates one file, collecting `file:line: field: message (hint)` lines."""

    def __init__(self, path: Path, tokens: TokenCounter) -> None:
        self.path = path
        self.root = path.absolute().parent
        self.tokens = tokens
        self.lines = LineMap()
        self.raw: Any = None
        self.result = _FileResult([], [])

    def error(
        self, loc: Loc, message: str, hint: str | None = None, *, line: int | None = None
    ) -> None:
        self.result.problems.append(self._format(loc, message, hint, line))

    def warn(self, loc: Loc, message: str, hint: str | None = None) -> None:
        self.result.warnings.append(self._format(loc, message, hint, None))

    def _format(self, loc: Loc, message: str, hint: str | None, line: int | None) -> str:
        where = f"{self.path}:{line or self.lines.line(loc)}"
        field = field_name(loc, self.raw)
        text = f"{where}: {field}: {message}" if field else f"{where}: {message}"
        return f"{text} ({hint})" if hint else text

    def check(self) -> _FileResult:
        if not self._read():
            return self.result
        if not isinstance(self.raw, dict):
            self.error(
                (),
                "expected a policy (keys `version`, `name`, `concepts`), found "
                + ("an empty file" if self.raw is None else type(self.raw).__name__),
                "start from policies/default.yaml",
            )
            return self.result
        policy = self._validate()
        defaults = _try(Defaults, self.raw.get("defaults")) or Defaults()
        raw_concepts = self.raw.get("concepts")
        concepts: list[tuple[int, Concept]] = []
        for i, item in enumerate(raw_concepts if isinstance(raw_concepts, list) else []):
            concept = _try(Concept, item)
            if concept is not None:
                concepts.append((i, concept))
        self._check_defaults(defaults)
        benign = self.raw.get("benign")
        if isinstance(benign, list):
            for j, text in enumerate(benign):
                if isinstance(text, str) and text.strip():
                    self._check_length(("benign", j), text.strip())
        for i, concept in concepts:
            self._check_concept(("concepts", i), concept, defaults)
        if isinstance(raw_concepts, list) and not raw_concepts and policy is not None:
            self.warn(("concepts",), "no concepts: this file restricts nothing")
        if policy is not None and not self.result.problems:
            self.result.loaded = _LoadedFile(self.path, policy, self.lines)
        return self.result

    def _read(self) -> bool:
        try:
            with self.path.open("rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                self.result.problems.append(
                    f"{self.path}: over {MAX_FILE_BYTES} bytes, too large for a policy file "
                    "(split it into several files in one folder)"
                )
                return False
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.result.problems.append(f"{self.path}: cannot read: {exc}")
            return False
        try:
            node = compose(text)
        except YAMLLimitError as exc:  # before its base class, whose hint is about syntax
            line = exc.problem_mark.line + 1 if exc.problem_mark else 1
            self.result.problems.append(f"{self.path}:{line}: YAML: {exc.problem}")
            return False
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            problem = exc.problem or exc.context or "invalid YAML"
            self.result.problems.append(
                f"{self.path}:{line}: YAML syntax: {problem} "
                "(check the indentation, and put text containing `:` or `#` in quotes)"
            )
            return False
        except yaml.YAMLError as exc:
            self.result.problems.append(f"{self.path}:1: YAML syntax: {exc}")
            return False
        dupes: list[tuple[Loc, int, int]] = []
        try:
            self.raw = None if node is None else to_python(node, (), self.lines, dupes)
        except (ConstructorError, YAMLLimitError) as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else 1
            self.result.problems.append(f"{self.path}:{line}: YAML: {exc.problem}")
            return False
        for loc, line, first in dupes:
            self.error(
                loc,
                f"key `{loc[-1]}` appears twice (first on line {first})",
                "YAML would silently keep only one of them; delete the other",
                line=line,
            )
        return True

    def _validate(self) -> Policy | None:
        try:
            return Policy.model_validate(self.raw)
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(err["loc"])
                self.error(loc, *explain_error(err, loc))
            return None

    def _check_defaults(self, defaults: Defaults) -> None:
        if not -1 <= defaults.threshold <= 1:
            self.error(
                ("defaults", "threshold"),
                f"{defaults.threshold} is outside -1..1",
                "absolute thresholds are cosine similarities; CLIP matches are around 0.25-0.35",
            )
        if not 0 <= defaults.relative_threshold <= 1:
            self.error(
                ("defaults", "relative_threshold"),
                f"{defaults.relative_threshold} is outside 0..1",
                "relative thresholds are probabilities, e.g. 0.5",
            )

    def _check_concept(self, loc: Loc, concept: Concept, defaults: Defaults) -> None:
        scoring = concept.scoring or defaults.scoring
        if concept.threshold is not None:
            self._check_threshold((*loc, "threshold"), concept.threshold, scoring)
        if scoring is Scoring.RELATIVE and not concept.counter_prompts and not self._has_benign():
            self.error(
                (*loc, "scoring") if concept.scoring else loc,
                "relative scoring needs something to compare against",
                "add `counter_prompts` to this concept or a `benign` list to the file; "
                "with only its own prompts the probability is always 1",
            )
        action = concept.action or defaults.action
        band = concept.review_band if concept.review_band is not None else defaults.review_band
        if action is Action.LOG and band > 0 and concept.review_band is not None:
            self.warn(
                (*loc, "review_band"),
                "has no effect on a `log` concept",
                "only `flag` and `review` concepts send near misses to review",
            )
        prompts = set(concept.prompts)
        for j, text in enumerate(concept.counter_prompts):
            if text in prompts:
                self.error(
                    (*loc, "counter_prompts", j),
                    f"`{text}` is also one of the prompts",
                    "a text cannot count both for and against the concept; remove one",
                )
        for field in ("prompts", "counter_prompts"):
            seen: set[str] = set()
            for j, text in enumerate(getattr(concept, field)):
                if text in seen:
                    self.warn((*loc, field, j), f"`{text}` is listed twice", "delete one")
                seen.add(text)
                self._check_length((*loc, field, j), text)
        for j, example in enumerate(concept.examples):
            self._check_example((*loc, "examples", j), example)

    def _has_benign(self) -> bool:
        benign = self.raw.get("benign") if isinstance(self.raw, dict) else None
        return isinstance(benign, list) and any(isinstance(b, str) and b.strip() for b in benign)

    def _check_threshold(self, loc: Loc, value: float, scoring: Scoring) -> None:
        if scoring is Scoring.RELATIVE and not 0 <= value <= 1:
            self.error(
                loc,
                f"{value} is outside 0..1",
                "relative scoring gives a probability; e.g. 0.5 means 'more likely than not'",
            )
        elif scoring is Scoring.ABSOLUTE and not -1 <= value <= 1:
            self.error(
                loc,
                f"{value} is outside -1..1",
                "absolute scoring compares a cosine similarity; CLIP matches are around 0.25-0.35",
            )
        elif scoring is Scoring.ABSOLUTE and value < 0:
            self.warn(
                loc,
                f"{value} is below 0, so almost every image will match",
                "CLIP image-text cosines are rarely negative; use 0..1",
            )

    def _check_length(self, loc: Loc, text: str) -> None:
        count, limit = self.tokens.count_tokens(text), self.tokens.context_length
        if count > limit:
            reader = getattr(self.tokens, "reader", "the model")
            self.error(
                loc,
                f"{count} tokens, {reader} reads at most {limit}",
                "shorten it; moderator never cuts prompts silently",
            )

    def _check_example(self, loc: Loc, example: str) -> None:
        rel = Path(example)
        if rel.is_absolute():
            self.error(
                loc,
                f"`{example}` is an absolute path",
                "write it relative to the policy's folder, e.g. examples/image.jpg",
            )
            return
        root = self.root.resolve()
        target = (self.root / rel).resolve()
        if not target.is_relative_to(root):
            lexical = Path(*[p for p in rel.parts if p != "."])
            via_link = ".." not in lexical.parts
            self.error(
                loc,
                f"`{example}` "
                + (f"is a link to {target}, " if via_link else "points ")
                + f"outside the policy's folder {root}",
                "copy the image into the policy's folder",
            )
            return
        if not target.exists():
            near = _near_files(self.root / rel)
            self.error(
                loc,
                f"`{example}` does not exist (looked in {self.root})",
                f"did you mean `{near}`?" if near else "check the spelling and the folder",
            )
        elif not target.is_file():
            self.error(loc, f"`{example}` is a folder, not an image", "name an image file")


def _try(model: type[BaseModel], data: Any) -> Any:
    """Validate leniently, leaving out the keys pydantic refused, so that the semantic checks
    still see the rest of a half-broken concept (its other mistakes get reported too)."""
    if not isinstance(data, dict):
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        refused = {err["loc"][0] for err in exc.errors() if err["loc"]}
    try:
        return model.model_validate({k: v for k, v in data.items() if k not in refused})
    except ValidationError:
        return None


def _near_files(path: Path) -> str | None:
    folder = path.parent
    if not folder.is_dir():
        return None
    names = [p.name for p in folder.iterdir()]
    match = difflib.get_close_matches(path.name, names, n=1)
    return str(path.parent / match[0]) if match else None


# --- across files -------------------------------------------------------------------------


def _duplicate_ids(loaded: Iterable[_LoadedFile]) -> list[str]:
    problems: list[str] = []
    first: dict[str, str] = {}
    for item in loaded:
        for i, concept in enumerate(item.policy.concepts):
            where = f"{item.path}:{item.lines.line(('concepts', i, 'id'))}"
            if concept.id in first:
                problems.append(
                    f"{where}: concepts[{concept.id}].id: `{concept.id}` is already used at "
                    f"{first[concept.id]} (ids must be unique across all policy files; rename one)"
                )
            else:
                first[concept.id] = where
    return problems


def _resolve(item: _LoadedFile) -> list[ConceptSpec]:
    policy, d = item.policy, item.policy.defaults
    specs = []
    for i, c in enumerate(policy.concepts):
        scoring = c.scoring or d.scoring
        default_threshold = d.relative_threshold if scoring is Scoring.RELATIVE else d.threshold
        own = set(c.prompts) | set(c.counter_prompts)
        benign = (
            tuple(dict.fromkeys(b for b in policy.benign if b not in own))
            if scoring is Scoring.RELATIVE
            else ()
        )
        specs.append(
            ConceptSpec(
                id=c.id,
                category=c.category,
                description=c.description,
                severity=c.severity or d.severity,
                action=c.action or d.action,
                mode=c.mode or d.mode,
                scoring=scoring,
                prompts=tuple(dict.fromkeys(c.prompts)),
                counter_prompts=tuple(dict.fromkeys(c.counter_prompts)),
                benign=benign,
                threshold=c.threshold if c.threshold is not None else default_threshold,
                review_band=c.review_band if c.review_band is not None else d.review_band,
                surfaces=(
                    tuple(dict.fromkeys(s.casefold() for s in c.surfaces))
                    if c.surfaces is not None
                    else None
                ),
                examples=tuple((item.path.absolute().parent / e).resolve() for e in c.examples),
                example_threshold=(
                    c.example_threshold if c.example_threshold is not None else d.example_threshold
                ),
                origin=f"{item.path}:{item.lines.line(('concepts', i))}",
            )
        )
    return specs
