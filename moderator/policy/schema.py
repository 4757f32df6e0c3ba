"""The policy file format, as pydantic models: the single source of the JSON Schema and the docs.

Policies are written by trust-and-safety staff, so every field carries a description (it ends up
in `policies/schema.json`, which editors use for completion and hover help) and unknown keys are
refused (`extra="forbid"`): a misspelt `threshhold` must fail loudly, not silently fall back to
the default. Fields a concept leaves out inherit the file's `defaults`; `load.py` resolves them.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "policies" / "schema.json"
"""Where the committed JSON Schema lives (a unit test fails when it is stale)."""

# Concept ids appear in verdicts, metrics labels and dashboards: keep them boring and stable.
CONCEPT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$"

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
"""A non-empty string; surrounding whitespace is dropped (it would change the embedding)."""

Finite = Annotated[float, Field(allow_inf_nan=False)]


class Severity(StrEnum):
    """How harmful a match is; breaks ties between matches with the same action."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


class Action(StrEnum):
    """What a match asks for: `flag` and `review` decide; `log` only records the match."""

    FLAG = "flag"
    REVIEW = "review"
    LOG = "log"

    @property
    def rank(self) -> int:
        return _ACTION_RANK[self]


class Mode(StrEnum):
    """`enforce` concepts decide verdicts; `shadow` ones are scored and reported, never decide."""

    ENFORCE = "enforce"
    SHADOW = "shadow"


class Scoring(StrEnum):
    """How a concept's score is computed (policies/README.md has the formulas)."""

    ABSOLUTE = "absolute"
    RELATIVE = "relative"


_SEVERITY_RANK = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}
_ACTION_RANK = {Action.LOG: 0, Action.REVIEW: 1, Action.FLAG: 2}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=False)


class Defaults(_Strict):
    """Values every concept in this file inherits unless it sets its own."""

    scoring: Scoring = Field(Scoring.ABSOLUTE, description="Default scoring method.")
    threshold: Finite = Field(
        0.26,
        description="Default threshold of `absolute` concepts: a cosine similarity. "
        "CLIP image-text cosines are small (matches are typically 0.25-0.35).",
    )
    relative_threshold: Finite = Field(
        0.5,
        description="Default threshold of `relative` concepts: a probability in 0..1.",
    )
    review_band: Finite = Field(
        0.0,
        ge=0,
        le=1,
        description="Default width of the band just below the threshold that sends an image "
        "to review instead of allowing it (0 = no band).",
    )
    example_threshold: Finite = Field(
        0.9,
        ge=-1,
        le=1,
        description="Default image-to-image cosine at which a reference example counts as a "
        "match (0.9 catches near-duplicates and light edits, not merely similar scenes).",
    )
    action: Action = Field(Action.FLAG, description="Default action of a match.")
    severity: Severity = Field(Severity.MEDIUM, description="Default severity.")
    mode: Mode = Field(Mode.ENFORCE, description="Default mode.")


class Concept(_Strict):
    """One restricted concept: what to look for, how to score it, and what a match does."""

    id: Annotated[str, StringConstraints(pattern=CONCEPT_ID_PATTERN)] = Field(
        description="Unique id across all loaded files, lower-case and dot-separated, "
        "e.g. `weapons.firearm`. It appears in verdicts and metrics: do not rename casually."
    )
    category: Text = Field(description="Grouping for reports and dashboards, e.g. `weapons`.")
    description: str | None = Field(None, description="Free text for humans; never scored.")
    severity: Severity | None = Field(
        None, description="`low`, `medium`, `high` or `critical` (default: `defaults.severity`)."
    )
    action: Action | None = Field(
        None,
        description="`flag`, `review` or `log`; `log` records the match and allows the image "
        "(default: `defaults.action`).",
    )
    mode: Mode | None = Field(
        None,
        description="`enforce` decides verdicts; `shadow` is scored and reported but never "
        "decides, to try a concept on live traffic (default: `defaults.mode`).",
    )
    scoring: Scoring | None = Field(
        None,
        description="`absolute`: the best prompt's cosine similarity must reach `threshold`. "
        "`relative`: softmax over this concept's prompts, counter_prompts and the file's "
        "`benign` list; the probability on the concept's prompts must reach `threshold` "
        "(default: `defaults.scoring`).",
    )
    prompts: list[Text] = Field(
        min_length=1,
        description="Short descriptions of what the concept looks like, one visual situation "
        "each; the concept scores its best-matching prompt.",
    )
    counter_prompts: list[Text] = Field(
        default_factory=list,
        description="Harmless look-alikes (a toy gun, a hair dryer). In absolute scoring an "
        "image that matches a counter-prompt at least as well as the concept is not a match; "
        "in relative scoring they take probability away from the concept.",
    )
    threshold: Finite | None = Field(
        None,
        description="Score at or above which the concept matches: a cosine (-1..1, in practice "
        "0..1) for absolute, a probability (0..1) for relative. Default: `defaults.threshold` "
        "or `defaults.relative_threshold`.",
    )
    review_band: Finite | None = Field(
        None,
        ge=0,
        le=1,
        description="Scores in [threshold - review_band, threshold) send the image to review "
        "instead of allowing it (default: `defaults.review_band`).",
    )
    surfaces: list[Text] | None = Field(
        None,
        min_length=1,
        description="Apply only to events from these surfaces (e.g. `profile_photo`), compared "
        "case-insensitively (stored in lower case). Leave out to apply everywhere. Events "
        "without a surface are checked by every concept.",
    )
    examples: list[Text] = Field(
        default_factory=list,
        description="Reference images (paths relative to this file's folder): an image whose "
        "embedding is at least `example_threshold` cosine-similar to one matches.",
    )
    example_threshold: Finite | None = Field(
        None,
        ge=-1,
        le=1,
        description="Image-to-image cosine for `examples` (default: `defaults.example_threshold`).",
    )


class Policy(_Strict):
    """One policy file."""

    version: Literal[1] = Field(description="Format version; always 1 for now.")
    name: Text = Field(description="Name shown in verdicts and logs, e.g. `platform-default`.")
    description: str | None = Field(None, description="Free text for humans.")
    defaults: Defaults = Field(
        default_factory=Defaults,
        description="Values concepts inherit.",
    )
    benign: list[Text] = Field(
        default_factory=list,
        description="Everyday image descriptions shared by this file's `relative` concepts as "
        "alternatives to compete against (e.g. `a photo`, `a landscape`).",
    )
    concepts: list[Concept] = Field(default_factory=list, description="The restricted concepts.")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file, as committed in policies/schema.json."""
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "moderator policy"
    return schema


def render_json_schema() -> str:
    """The schema's exact committed text (stable key order, trailing newline)."""
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json_schema(path: Path = SCHEMA_PATH) -> Path:
    """Write the schema file (`moderator policy schema --write`) after changing these models."""
    path.write_text(render_json_schema(), encoding="utf-8")
    return path
