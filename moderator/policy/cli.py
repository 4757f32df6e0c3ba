"""`moderator policy …`: the authoring tools (validate, explain, test, diff).

The commands take the model loader as a parameter (`make_app(load_encoder)`), so tests run
them against a fake encoder and the shipped `app` uses `moderator.embed.load_model` on CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from moderator.cache.memory import MemoryEmbeddingCache
from moderator.errors import ModeratorError, PolicyError
from moderator.exits import fail
from moderator.policy.compile import compile_policy
from moderator.policy.evaluate import (
    ConceptReport,
    evaluate,
    is_image,
    read_labels,
    unknown_labels,
)
from moderator.policy.load import load_policies
from moderator.policy.score import CompiledPolicy, Outcome, ScoreMatrix
from moderator.policy.tokens import (
    CLIP_CONTEXT_LENGTH,
    MODEL_PATH_VAR,
    TokenCounter,
    clip_tokens,
    configured_model,
    model_tokens,
)
from moderator.types import Embeddings, Encoder

EncoderLoader = Callable[[str], Encoder]
TokensLoader = Callable[[str], TokenCounter]
# Images per encoder call in the offline tools: small enough for a laptop CPU.
IMAGE_BATCH = 32
# Long prompts are cut in tables (only there) so a row fits a terminal.
CELL_WIDTH = 34


def load_cpu_model(spec: str) -> Encoder:
    """The real loader: an exported model directory or `demo`, on CPU."""
    from moderator.embed import load_model

    model: Encoder = load_model(spec, providers=("cpu",))
    return model


ModelOption = Annotated[str, typer.Option("--model", "-m", help="Model directory or `demo`.")]
PolicyOption = Annotated[
    Path, typer.Option("--policy", "-p", help="Policy file or folder.", exists=True)
]
SurfaceOption = Annotated[
    str | None, typer.Option(help="Score as events from this surface (default: none).")
]


def make_app(
    load_encoder: EncoderLoader = load_cpu_model, load_tokens: TokensLoader = model_tokens
) -> typer.Typer:
    """The `policy` command group, using `load_encoder` to turn `--model` into an Encoder and
    `load_tokens` to read the tokenizer of the model the environment names."""
    app = typer.Typer(
        help="Author policies: validate, explain, test, diff.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.command()
    def validate(
        paths: Annotated[list[Path], typer.Argument(help="Policy files or folders.")],
        model: Annotated[
            str | None,
            typer.Option(
                "--model",
                "-m",
                help="Count prompt tokens (and check example images) with this model. Default: "
                f"the tokenizer of ${MODEL_PATH_VAR}'s model if set, else OpenAI CLIP's.",
            ),
        ] = None,
    ) -> None:
        """Check policies; print every problem as file:line: field: message (hint)."""
        encoder = load_encoder(model) if model else None
        tokens: TokenCounter | None = encoder
        counted = f"the model {model}"
        if encoder is None:
            configured = configured_model(os.environ)
            counted = (
                f"the tokenizer of {configured} (${MODEL_PATH_VAR})"
                if configured
                else f"OpenAI CLIP's tokenizer ({CLIP_CONTEXT_LENGTH} tokens at most)"
            )
            try:
                tokens = load_tokens(configured) if configured else clip_tokens()
            except ModeratorError as exc:
                raise fail(exc) from exc
        failed = False
        for path in paths:
            try:
                loaded = load_policies(path, tokens=tokens)
                if encoder is not None:
                    asyncio.run(compile_policy(loaded, encoder, MemoryEmbeddingCache()))
            except PolicyError as exc:
                failed = True
                for problem in exc.problems:
                    typer.echo(problem)
                continue
            for warning in loaded.warnings:
                typer.echo(f"warning: {warning}")
            typer.secho(
                f"ok: {path} ({len(loaded.concepts)} concepts, {loaded.name})",
                fg=typer.colors.GREEN,
            )
        typer.echo(f"note: prompt lengths counted with {counted}")
        if failed:
            raise typer.Exit(1)

    @app.command()
    def explain(
        images: Annotated[list[Path], typer.Argument(help="Image files.", exists=True)],
        model: ModelOption,
        policy: PolicyOption,
        surface: SurfaceOption = None,
        top: Annotated[int, typer.Option(help="Rows per image (0 = every concept).")] = 0,
    ) -> None:
        """Show how each concept scored an image, and why the decision came out as it did."""
        encoder = load_encoder(model)
        compiled = _compile(policy, encoder)
        embeddings, kept = _embed_files(encoder, images)
        matrix = compiled.scores(embeddings)
        outcomes = compiled.score(embeddings, [surface] * len(kept), top_k=0)
        applies = compiled.applicable([surface] * len(kept))
        for i, (path, outcome) in enumerate(zip(kept, outcomes, strict=True)):
            typer.echo(f"image     {path}")
            typer.echo(f"policy    {compiled.name}  version {compiled.version}")
            typer.echo(f"decision  {outcome.decision.value.upper()}{_because(outcome)}")
            typer.echo("")
            typer.echo(_explain_table(compiled, matrix, i, applies[i], top))
            typer.echo("")

    @app.command("test")
    def test_(
        model: ModelOption,
        policy: PolicyOption,
        labels: Annotated[
            Path,
            typer.Option(
                help="CSV of `path,concept_id` rows (`none` = negative) or a folder of "
                "<concept_id>/ and none/ subfolders.",
                exists=True,
            ),
        ],
        target_precision: Annotated[
            float, typer.Option(min=0.0, max=1.0, help="Precision the suggested threshold reaches.")
        ] = 0.9,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
        plots: Annotated[
            Path | None, typer.Option(help="Write a precision-recall PNG per concept here.")
        ] = None,
    ) -> None:
        """Precision, recall and F1 per concept, and the threshold reaching a target precision."""
        try:
            labeled = read_labels(labels)
        except ModeratorError as exc:
            raise fail(exc) from exc
        encoder = load_encoder(model)
        compiled = _compile(policy, encoder)
        unknown = unknown_labels(compiled, labeled)
        if unknown:
            raise fail(
                ModeratorError(
                    f"labels name concepts the policy does not have: {', '.join(unknown)}"
                )
            )
        embeddings, kept = _embed_files(encoder, [item.path for item in labeled])
        by_path = {item.path: item.concepts for item in labeled}
        reports = evaluate(
            compiled,
            compiled.scores(embeddings),
            [by_path[p] for p in kept],
            target_precision,
        )
        written = []
        if plots is not None:
            from moderator.policy.prcurve import draw_pr_curve

            for report in reports:
                target = plots / f"{report.concept_id}.png"
                written.append(draw_pr_curve(report, target_precision, target))
        if as_json:
            payload = {
                "policy": compiled.name,
                "policy_version": compiled.version,
                "model": encoder.model_id,
                "images": len(kept),
                "target_precision": target_precision,
                "concepts": [r.as_dict() for r in reports],
            }
            typer.echo(json.dumps(payload, indent=2))
        else:
            typer.echo(f"policy {compiled.name} version {compiled.version}, {len(kept)} images")
            typer.echo(_test_table(reports, target_precision))
            for path in written:
                typer.echo(f"wrote {path}")

    @app.command()
    def diff(
        old: Annotated[Path, typer.Argument(help="The current policy.", exists=True)],
        new: Annotated[Path, typer.Argument(help="The edited policy.", exists=True)],
        model: ModelOption,
        images: Annotated[
            Path, typer.Option(help="Folder of sample images (searched recursively).", exists=True)
        ],
        surface: SurfaceOption = None,
    ) -> None:
        """Which images change decision between two policies, and why."""
        encoder = load_encoder(model)
        cache = MemoryEmbeddingCache()  # shared: prompts the two versions share embed once
        before = _compile(old, encoder, cache)
        after = _compile(new, encoder, cache)
        files = sorted(p for p in images.rglob("*") if is_image(p)) if images.is_dir() else [images]
        embeddings, kept = _embed_files(encoder, files)
        surfaces = [surface] * len(kept)
        typer.echo(f"old {before.name} {before.version}  →  new {after.name} {after.version}")
        for line in _concept_changes(before, after):
            typer.echo(line)
        changes: Counter[str] = Counter()
        for path, a, b in zip(
            kept, before.score(embeddings, surfaces), after.score(embeddings, surfaces), strict=True
        ):
            if a.decision is b.decision:
                continue
            changes[f"{a.decision.value} → {b.decision.value}"] += 1
            typer.echo(f"{path}: {a.decision.value} → {b.decision.value}")
            typer.echo(f"    before{_because(a) or ': nothing matched'}")
            typer.echo(f"    after {_because(b) or ': nothing matched'}")
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(changes.items())) or "none"
        typer.echo(f"{len(kept)} images, {sum(changes.values())} changed decision ({summary})")

    @app.command()
    def schema(
        write: Annotated[
            bool, typer.Option(help="Write policies/schema.json instead of printing it.")
        ] = False,
    ) -> None:
        """The JSON Schema of policy files (editors use it for completion and checks)."""
        from moderator.policy.schema import render_json_schema, write_json_schema

        if write:
            typer.echo(f"wrote {write_json_schema()}")
        else:
            typer.echo(render_json_schema(), nl=False)

    def _compile(
        path: Path, encoder: Encoder, cache: MemoryEmbeddingCache | None = None
    ) -> CompiledPolicy:
        try:
            loaded = load_policies(path, tokens=encoder)
            return asyncio.run(compile_policy(loaded, encoder, cache or MemoryEmbeddingCache()))
        except PolicyError as exc:
            for problem in exc.problems:
                typer.echo(problem, err=True)
            raise typer.Exit(1) from exc

    return app


def _embed_files(encoder: Encoder, paths: Sequence[Path]) -> tuple[Embeddings, list[Path]]:
    """Embed image files in batches; unreadable or undecodable ones are reported and skipped."""
    rows: list[Embeddings] = []
    kept: list[Path] = []
    for start in range(0, len(paths), IMAGE_BATCH):
        chunk = list(paths[start : start + IMAGE_BATCH])
        data = []
        for path in chunk:
            try:
                data.append((path, path.read_bytes()))
            except OSError as exc:
                typer.secho(f"skipped {path}: {exc.strerror}", fg=typer.colors.YELLOW, err=True)
        try:
            rows.append(encoder.encode_images([d for _, d in data]))
            kept.extend(p for p, _ in data)
            continue
        except ModeratorError:
            pass  # one bad image spoils the batch: redo one by one to find it
        for path, blob in data:
            try:
                rows.append(encoder.encode_images([blob]))
                kept.append(path)
            except ModeratorError as exc:
                typer.secho(f"skipped {path}: {exc}", fg=typer.colors.YELLOW, err=True)
    if not kept:
        raise fail(ModeratorError("no usable images"))
    return np.concatenate(rows).astype(np.float32), kept


def _because(outcome: Outcome) -> str:
    cause = outcome.cause
    if cause is None:
        logged = [m.concept_id for m in outcome.matches]
        return f"  (logged: {', '.join(logged)})" if logged else ""
    relation = "≥" if cause.status.is_match else "<"
    return (
        f": {cause.concept_id} {cause.status.value}, score {cause.score:.4f} {relation} "
        f"threshold {cause.threshold:.4f}"
    )


def _cut(text: str, width: int = CELL_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _explain_table(
    compiled: CompiledPolicy, m: ScoreMatrix, i: int, applies: np.ndarray, top: int
) -> str:
    margins = m.score[i] - compiled.thresholds
    order = np.argsort(-margins, kind="stable")
    rows = []
    for j in order[: top or None]:
        c = compiled.concepts[j]
        counter = m.counter[i, j]
        counter_cell = (
            "" if np.isnan(counter) else f"{counter:.3f} {c.counter_prompts[m.best_counter[i, j]]}"
        )
        example = m.example[i, j]
        status = m.status_of(i, j).value if applies[j] else "n/a (surface)"
        rows.append(
            [
                c.id,
                c.mode.value,
                c.scoring.value,
                c.action.value,
                f"{m.score[i, j]:.3f}",
                f"{c.threshold:.3f}",
                f"{margins[j]:+.3f}",
                status,
                _cut(f"{m.cosine[i, j]:.3f} {c.prompts[m.best_prompt[i, j]]}"),
                _cut(counter_cell),
                "" if np.isnan(example) else f"{example:.3f}/{c.example_threshold:.2f}",
            ]
        )
    headers = [
        "concept", "mode", "scoring", "action", "score", "thresh", "margin", "status",
        "best prompt (cosine)", "best counter-prompt", "example",
    ]  # fmt: skip
    return _format_table(headers, rows)


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _test_table(reports: Sequence[ConceptReport], target: float) -> str:
    rows = [
        [
            r.concept_id,
            f"{r.threshold:.3f}",
            str(r.positives),
            str(r.negatives),
            str(r.tp),
            str(r.fp),
            str(r.fn),
            _num(r.precision),
            _num(r.recall),
            _num(r.f1),
            _num(r.target_threshold, 3),
            _num(r.target_recall),
        ]
        for r in reports
    ]
    headers = [
        "concept", "thresh", "pos", "neg", "tp", "fp", "fn", "precision", "recall", "f1",
        f"thresh@P≥{target:.2f}", "recall there",
    ]  # fmt: skip
    return _format_table(headers, rows)


def _concept_changes(before: CompiledPolicy, after: CompiledPolicy) -> list[str]:
    old = {c.id: c.canonical() for c in before.concepts}
    new = {c.id: c.canonical() for c in after.concepts}
    lines = [f"  + {cid} (added)" for cid in sorted(new.keys() - old.keys())]
    lines += [f"  - {cid} (removed)" for cid in sorted(old.keys() - new.keys())]
    for cid in sorted(old.keys() & new.keys()):
        fields = [k for k in new[cid] if new[cid][k] != old[cid][k]]
        if fields:
            lines.append(f"  ~ {cid} ({', '.join(fields)} changed)")
    return lines


app = make_app()
