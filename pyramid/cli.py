"""The `pyramid` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from pyramid.errors import EpisodeError, SourceError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Turn manipulation video into Motus training data.")


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def inspect(
    root: Path = typer.Argument(..., help="Dataset root directory."),
    source: Optional[str] = typer.Option(None, "--source", "-s", help="Source kind; auto-detected when omitted."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per episode."),
) -> None:
    """List every episode under ROOT with its fps, length, cameras and dimensions."""
    from pyramid.sources import open_source

    try:
        reader = open_source(root, source)
    except SourceError as exc:
        fail(str(exc))
    counts = {"ok": 0, "errors": 0}
    for ref in reader.discover():
        try:
            row = reader.read(ref).summary()
            counts["ok"] += 1
        except (EpisodeError, OSError, KeyError, ValueError) as exc:
            row = {"episode_id": ref.episode_id, "error": _error_text(ref.path, exc)}
            counts["errors"] += 1
        typer.echo(json.dumps(row) if as_json else _describe(row))
    if not as_json:
        typer.echo(f"{reader.name}: {counts['ok']} episodes readable, {counts['errors']} unreadable", err=True)


def _error_text(path: Path, exc: Exception) -> str:
    if isinstance(exc, EpisodeError):
        return str(exc)
    return f"{path}: {exc.__class__.__name__}: {exc}"


def _describe(row: dict) -> str:
    if "error" in row:
        return f"{row['episode_id']}  ERROR  {row['error']}"
    return (
        f"{row['episode_id']}  level {row['level']}  {row['embodiment']}  {row['num_frames']} frames @ {row['fps']:g} fps  "
        f"cameras={','.join(row['cameras'])}  state={row['state_dim']}  action={row['action_dim']}  {row['task']!r}"
    )


@app.command("sample-data")
def sample_data(
    out_dir: Path = typer.Argument(..., help="Directory to write the sample datasets into."),
    episodes: int = typer.Option(32, help="Robot episodes (LeRobot v3.0, with actions)."),
    clips: int = typer.Option(8, help="Unlabelled plain video clips."),
    seed: int = typer.Option(0, help="Random seed; the same seed writes the same data."),
) -> None:
    """Write a small LeRobot v3.0 robot dataset and a folder of unlabelled clips whose motion follows the actions."""
    from pyramid.sample_data import write_sample_data

    paths = write_sample_data(out_dir, robot_episodes=episodes, video_clips=clips, seed=seed)
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")


@app.command()
def build(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="Build recipe (YAML)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Override the recipe's output directory."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Parallel workers per stage (default: every CPU)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Process quarantined episodes of an unfinished build again."),
) -> None:
    """Build the pyramid: sources -> clips, flow, latent actions -> WebDataset shards, Lance, manifest, report."""
    from pyramid.errors import BuildError
    from pyramid.pipeline import build as run_build
    from pyramid.recipe import RecipeError, load_recipe
    from pyramid.summary import print_summary

    try:
        recipe = load_recipe(recipe_path, output=str(output.resolve()) if output else None)
        result = run_build(recipe, address=address, workers=workers, progress=not quiet, retry_failed=retry_failed)
    except (RecipeError, SourceError, BuildError) as exc:
        fail(str(exc))
    print_summary(result)
    if result.failed_fraction > recipe.max_failed_fraction:
        typer.echo(f"error: {result.failed_fraction:.0%} of episodes failed (limit {recipe.max_failed_fraction:.0%}); see {result.output / 'manifest.json'}", err=True)
        raise typer.Exit(code=1)


@app.command("export-motus")
def export_motus(
    build_dir: Path = typer.Argument(..., help="Output directory of a finished `pyramid build`."),
    out_dir: Path = typer.Argument(..., help="Where to write videos/, latent_action_dim14/ and metas/."),
) -> None:
    """Write a build in the layout the original Motus trainer reads."""
    from pyramid.sinks.motus_layout import export_motus as run_export

    try:
        counts = run_export(build_dir, out_dir)
    except FileNotFoundError as exc:
        fail(str(exc))
    typer.echo(f"{out_dir}: {counts['clips']} clips, {counts['latent_actions']} with latent actions")


def _register_other_commands() -> None:
    # The latent-action and trainer packages own their commands; both import heavy libraries lazily.
    from latent_action.commands import register as register_latent_action
    from recipes.commands import register as register_trainer

    register_latent_action(app)
    register_trainer(app)


_register_other_commands()


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
