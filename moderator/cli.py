"""The `moderator` command line. Heavy imports happen inside commands, so `--help` stays fast
and `serve` never imports the torch-based export wing."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from moderator import __version__
from moderator.bench.cli import app as bench_app  # its commands import heavy modules lazily
from moderator.errors import ConfigError
from moderator.exits import EXIT_CODES, REPORTED, fail
from moderator.policy.cli import app as policy_app

app = typer.Typer(
    name="moderator",
    help="Image moderation: CLIP embeddings scored against text-prompt policies, on Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    epilog=EXIT_CODES,
)
app.add_typer(policy_app, name="policy", help="Author policies: validate, explain, test, diff.")
app.add_typer(bench_app, name="bench")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (also MODERATOR_CONFIG).", exists=True),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"moderator {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Run `moderator COMMAND --help` for each command's options."""


@app.command()
def settings(
    config: ConfigOption = None,
    markdown: Annotated[bool, typer.Option(help="Print the README settings table.")] = False,
) -> None:
    """Print the effective settings (secrets masked), or the README's settings table."""
    from moderator.settings import load_settings, settings_markdown, unknown_env_vars

    if markdown:
        typer.echo(settings_markdown())
        return
    try:
        loaded = load_settings(config_file=config)
    except ConfigError as exc:
        raise fail(exc) from exc
    typer.echo(loaded.model_dump_json(indent=2))
    import os

    for name in unknown_env_vars(os.environ):
        typer.secho(f"warning: unknown setting {name}", fg=typer.colors.YELLOW, err=True)


@app.command()
def export(
    model: Annotated[
        str, typer.Option(help="Hugging Face hub id or local directory of a CLIP checkpoint.")
    ] = "openai/clip-vit-base-patch32",
    out: Annotated[Path, typer.Option(help="Directory to write the ONNX model into.")] = Path(
        "models/clip-vit-base-patch32"
    ),
    precision: Annotated[
        str,
        typer.Option(
            help="fp32; fp16 (GPUs); int8 (CPUs: image tower dynamically quantized, ~3× faster)."
        ),
    ] = "fp32",
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    optimize: Annotated[
        bool, typer.Option(help="Fuse attention/layer-norm with the ORT transformers optimizer.")
    ] = True,
    name: Annotated[
        str | None, typer.Option(help="Model id to record (default: the hub id or dir name).")
    ] = None,
) -> None:
    """Export a CLIP checkpoint to ONNX (needs the `export` extra: torch + transformers)."""
    if precision not in ("fp32", "fp16", "int8"):
        raise fail(ConfigError(f"--precision must be fp32, fp16 or int8, got {precision!r}"))
    try:
        from moderator.export.clip import export_clip
    except ImportError as exc:
        raise fail(
            ConfigError(
                f"export needs torch and transformers: pip install 'moderator[export]' ({exc})"
            )
        ) from exc
    try:
        export_clip(
            model,
            out,
            precision=precision,  # type: ignore[arg-type]  # checked above
            opset=opset,
            optimize=optimize,
            name=name,
        )
    except REPORTED as exc:
        raise fail(exc) from exc
    typer.echo(f"exported {model} to {out}")


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Consume image events, publish verdicts; runs until SIGTERM/SIGINT, then drains."""
    from moderator.service.app import run_service

    try:
        code = run_service(config_file=config)
    except REPORTED as exc:
        raise fail(exc) from exc
    raise typer.Exit(code)


@app.command()
def score(
    images: Annotated[list[Path], typer.Argument(help="Image files to score.", exists=True)],
    model: Annotated[str, typer.Option(help="Model directory or `demo`.")] = "demo",
    policy: Annotated[Path, typer.Option(help="Policy file or directory.")] = Path(
        "policies/demo.yaml"
    ),
) -> None:
    """Score image files offline; one verdict JSON per line, exactly as the service writes it."""
    from moderator.commands.score import score_files

    try:
        verdicts = asyncio.run(score_files(images, model=model, policy=policy))
    except REPORTED as exc:
        raise fail(exc) from exc
    for verdict in verdicts:
        typer.echo(json.dumps(verdict))
    if any("error" in v for v in verdicts):
        raise typer.Exit(1)


@app.command()
def submit(
    images: Annotated[list[str], typer.Argument(help="Image files or http(s) URLs.")],
    config: ConfigOption = None,
    surface: Annotated[str | None, typer.Option(help="Surface to tag the events with.")] = None,
    cloudevents: Annotated[
        bool, typer.Option(help="Send files as binary-mode CloudEvents instead of JSON.")
    ] = False,
) -> None:
    """Publish image events to the input topic (try the service in a minute)."""
    from moderator.commands.submit import submit_images
    from moderator.settings import load_settings

    try:
        ids = asyncio.run(
            submit_images(
                load_settings(config_file=config), images, surface=surface, cloudevents=cloudevents
            )
        )
    except REPORTED as exc:
        raise fail(exc) from exc
    for image, event_id in zip(images, ids, strict=True):
        typer.echo(f"{event_id}\t{image}")


@app.command()
def tail(
    config: ConfigOption = None,
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest verdict.")] = False,
    limit: Annotated[int | None, typer.Option(help="Stop after this many records.")] = None,
    dlq: Annotated[bool, typer.Option(help="Follow the dead-letter topic instead.")] = False,
) -> None:
    """Follow the verdict (or dead-letter) topic as a readable table."""
    from moderator.commands.tail import tail_topic
    from moderator.settings import load_settings

    try:
        asyncio.run(
            tail_topic(load_settings(config_file=config), from_beginning, limit, dlq, sys.stdout)
        )
    except REPORTED as exc:
        raise fail(exc) from exc
    except KeyboardInterrupt:
        pass


@app.command()
def demo(
    config: ConfigOption = None,
    inline: Annotated[int, typer.Option(help="Inline images to send.")] = 24,
    by_url: Annotated[int, typer.Option(help="Images to send by URL.")] = 8,
) -> None:
    """Run the service on generated shapes against local Kafka/Redis (what `make demo` runs)."""
    from moderator.demo.run import run_demo
    from moderator.log import configure
    from moderator.settings import load_settings

    try:
        loaded = load_settings(config_file=config)
        # The demo's images come from a server on 127.0.0.1, which the SSRF guard refuses
        # by default; allowing private addresses is for this local demo only.
        loaded.pipeline.fetch_allow_private = True
        configure("WARNING", loaded.log.json_format)
        code = asyncio.run(run_demo(loaded, sys.stdout, inline=inline, by_url=by_url))
    except REPORTED as exc:
        raise fail(exc) from exc
    raise typer.Exit(code)


def main() -> None:
    app()
