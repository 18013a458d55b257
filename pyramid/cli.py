"""The `pyramid` command line.

A user error (a bad recipe, a missing or corrupt file, an unusable output) ends in one line on stderr and
exit code 2; a build over its failure limit exits 1. `--debug` (or PYRAMID_DEBUG=1) shows tracebacks.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from pyramid.cli_errors import describe_error, fail
from pyramid.errors import DEBUG_ENV, EpisodeError, SourceError, debugging

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn manipulation video into Motus training data.")


@app.callback()
def options(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error (also: PYRAMID_DEBUG=1).")) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"


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
    from pyramid.sources.base import DuplicateIds

    counts = {"ok": 0, "errors": 0}
    duplicates = DuplicateIds()
    for ref in reader.discover():
        try:
            if problem := duplicates.problem(ref.episode_id, str(ref.path)):
                raise EpisodeError(ref.path, problem)
            row = reader.load(ref).summary()
            counts["ok"] += 1
        except EpisodeError as exc:
            row = {"episode_id": ref.episode_id, "error": str(exc)}
            counts["errors"] += 1
        typer.echo(json.dumps(row) if as_json else _describe(row))
    if not as_json:
        typer.echo(f"{reader.name}: {counts['ok']} episodes readable, {counts['errors']} unreadable", err=True)
    if not counts["ok"]:
        # nothing a build could use (a root one folder off lists none): say so in the exit code, as a script running
        # inspect first needs
        problem = (f"none of the {counts['errors']} {reader.name} episodes is readable" if counts["errors"] else
                   f"no {reader.name} episode found: is it the dataset's root?")
        typer.echo(f"error: {root}: {problem}", err=True)
        raise typer.Exit(code=1)


def _describe(row: dict) -> str:
    if "error" in row:
        return f"{row['episode_id']}  ERROR  {row['error']}"
    return (
        f"{row['episode_id']}  level {row['level']}  {row['embodiment']}  {row['num_frames']} frames @ {row['fps']:g} fps  "
        f"cameras={','.join(_camera_words(name, size) for name, size in row['camera_sizes'].items())}  state={row['state_dim']}  "
        f"action={row['action_dim']}  {row['task']!r}"
    )


def _camera_words(name: str, size: list[int] | None) -> str:
    return f"{name} {size[0]}x{size[1]}" if size else name


@app.command("sample-data")
def sample_data(
    out_dir: Path = typer.Argument(..., help="Directory to write the sample datasets into."),
    episodes: int = typer.Option(32, min=1, help="Robot episodes (LeRobot v3.0, with actions)."),
    clips: int = typer.Option(8, min=0, help="Unlabelled plain video clips."),
    seed: int = typer.Option(0, help="Random seed; the same seed writes the same data."),
    sim: Optional[str] = typer.Option(None, "--sim", help="Write simulated 3-D robot episodes instead: 'metaworld' (needs the sim extra of the package)."),
    task: Optional[list[str]] = typer.Option(None, "--task", help="With --sim: a MetaWorld task, e.g. pick-place-v3 (repeatable; default: six tasks)."),
    variations: Optional[int] = typer.Option(None, help="With --sim: object/goal placements per task (default 8)."),
    camera: Optional[list[str]] = typer.Option(None, "--camera", help="With --sim: a MetaWorld camera (repeatable; default: corner)."),
    max_steps: Optional[int] = typer.Option(None, help="With --sim: most frames per episode (default 200)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="With --sim: rendering processes (default 2)."),
) -> None:
    """Write a small LeRobot v3.0 robot dataset and a folder of unlabelled clips whose motion follows the actions.

    With --sim metaworld: MetaWorld's scripted Sawyer experts, rendered in 3-D, as a LeRobot v3.0 dataset.
    """
    sim_options = {"tasks": task, "variations": variations, "cameras": camera, "max_steps": max_steps, "workers": workers}
    sim_options = {name: value for name, value in sim_options.items() if value not in (None, [], ())}
    if sim is not None:
        _write_sim_sample(sim, out_dir, seed, sim_options)
        return
    if sim_options:
        fail("--task, --variations, --camera, --max-steps and --workers need --sim metaworld")
    from pyramid.sample_data import write_sample_data

    try:
        paths = write_sample_data(out_dir, robot_episodes=episodes, video_clips=clips, seed=seed)
    except ValueError as exc:
        fail(str(exc))
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")


def _write_sim_sample(sim: str, out_dir: Path, seed: int, options: dict) -> None:
    if sim != "metaworld":
        fail(f"--sim must be 'metaworld', got {sim!r}")
    from pyramid.sim_metaworld import write_metaworld_sample

    try:
        sample = write_metaworld_sample(out_dir, seed=seed, **options)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"metaworld: {sample.root}")
    typer.echo(sample.summary())


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
    from pyramid.recipe import BuildRecipeError, load_recipe
    from pyramid.summary import print_summary

    try:
        recipe = load_recipe(recipe_path, output=str(output.resolve()) if output else None)
        result = run_build(recipe, address=address, workers=workers, progress=not quiet, retry_failed=retry_failed)
    except (BuildRecipeError, SourceError, BuildError) as exc:
        fail(str(exc))
    print_summary(result)
    if result.failed_fraction > recipe.max_failed_fraction:
        typer.echo(f"error: {result.failed_fraction:.0%} of episodes failed (limit {recipe.max_failed_fraction:.0%}); see {result.output / 'manifest.json'}", err=True)
        raise typer.Exit(code=1)


@app.command("export-motus")
def export_motus(
    build_dir: Path = typer.Argument(..., help="Output directory of a finished, labelled `pyramid build`."),
    out_dir: Path = typer.Argument(..., help="Where to write videos/, latent_action_dim14/, umt5_wan/ and metas/."),
    text_encoder: Optional[Path] = typer.Option(None, "--text-encoder", help="Required: a local Wan2.2 directory (text_encoder/ + tokenizer/: UMT5) for umt5_wan/."),
    downsample_rate: Optional[int] = typer.Option(None, "--downsample-rate", min=1, help="Motus's global_downsample_rate (default: frames 0.2 s apart, as Motus samples 30 fps video)."),
    num_video_frames: int = typer.Option(8, "--num-video-frames", min=1, help="Motus's num_video_frames (a multiple of 4)."),
    device: str = typer.Option("cpu", "--device", help="Where the text encoder runs (cpu, cuda)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT_DIR if it holds an earlier export."),
) -> None:
    """Write a build in the layout of the original Motus trainer's latent_action dataset, with a config snippet."""
    from pyramid.errors import ExportError
    from pyramid.sinks.motus_layout import CONFIG_NAME, export_motus as run_export

    try:
        counts = run_export(build_dir, out_dir, text_encoder, downsample_rate=downsample_rate,
                            num_video_frames=num_video_frames, device=device, overwrite=overwrite)
    except ExportError as exc:
        fail(str(exc))
    skipped = counts.skipped.describe()
    typer.echo(f"{out_dir}: {counts.episodes} episodes from {counts.clips} clips" + (f"; left out: {skipped}" if skipped else ""))
    typer.echo(f"Motus config values: {out_dir / CONFIG_NAME}")
    typer.echo(f"(Motus's episode cache names files under {out_dir.resolve()}: after moving or copying the export, "
               "run `pyramid rescan-motus` on it where it lies)")


@app.command("rescan-motus")
def rescan_motus(
    export_dir: Path = typer.Argument(..., help="An `export-motus` folder, where it lies now (moved or copied)."),
) -> None:
    """Rewrite an export's Motus episode cache and config dataset_dir for its current location (Motus never rescans)."""
    from pyramid.errors import ExportError
    from pyramid.sinks.motus_layout import MOTUS_CACHE, rescan_export

    try:
        count = rescan_export(export_dir)
    except ExportError as exc:
        fail(str(exc))
    typer.echo(f"{export_dir / MOTUS_CACHE}: {count} episodes under {export_dir.resolve()}")


@app.command("export-lerobot")
def export_lerobot(
    input_path: Path = typer.Argument(..., metavar="BUILD_OR_SOURCE", help="A finished `pyramid build` output, or a source dataset root."),
    out_dir: Path = typer.Argument(..., help="The LeRobot v3.0 dataset to write."),
    source: Optional[str] = typer.Option(None, "--source", "-s", help="Source kind of a dataset root; auto-detected when omitted."),
    embodiment: Optional[str] = typer.Option(None, "--embodiment", help="Export only this embodiment (a LeRobot dataset holds one robot)."),
    codec: str = typer.Option("libsvtav1", "--codec", help="libsvtav1 (AV1, LeRobot's default) or libx264."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT_DIR if it holds an earlier LeRobot export."),
    size: Optional[str] = typer.Option(None, "--size", metavar="HEIGHTxWIDTH", help="Fit every camera to this size, e.g. 384x320 (default: each episode's own; episodes of another size are left out)."),
    resize: Optional[str] = typer.Option(None, "--resize", help="With --size: pad (the default: keep the aspect ratio, black bars, as Motus does) or crop (centre)."),
) -> None:
    """Write a build (with latent actions when labelled) or any source dataset as a LeRobot v3.0 dataset."""
    from pyramid.errors import ExportError
    from pyramid.sinks.lerobot_export import export_lerobot as run_export

    if resize not in (None, "pad", "crop"):
        fail(f"--resize: expected pad or crop, got '{resize}'")
    if resize is not None and size is None:
        fail("--resize fits frames to --size: give --size HEIGHTxWIDTH as well")
    try:
        summary = run_export(input_path, out_dir, source=source, embodiment=embodiment, codec=codec, overwrite=overwrite,
                             size=None if size is None else frame_size(size, "--size"), fit=resize or "pad")
    except (ExportError, ValueError) as exc:
        fail(str(exc))
    skipped = summary.skipped.describe()
    typer.echo(f"{out_dir}: {summary.episodes} episodes, {summary.frames} frames" + (f"; left out: {skipped}" if skipped else ""))
    for note in summary.notes:
        typer.echo(f"({note})")
    if "other_embodiment" in summary.skipped and embodiment is None:
        typer.echo("(a LeRobot dataset holds one robot's features: --embodiment picks which to export)")


def frame_size(text: str, option: str) -> tuple[int, int]:
    """(height, width) from 'HEIGHTxWIDTH' with positive even sides (yuv420p video), or a one-line error."""
    from pyramid.recipe import is_video_size

    height, _, width = text.lower().partition("x")
    sides = [int(side) for side in (height, width) if side.isdecimal()]
    if len(sides) != 2 or not is_video_size(sides):
        fail(f"{option}: expected HEIGHTxWIDTH with positive even sides, e.g. 384x320; got '{text}'")
    return sides[0], sides[1]


def _register_other_commands() -> None:
    # The latent-action and trainer packages own their commands; both import heavy libraries lazily.
    from latent_action.commands import register as register_latent_action
    from recipes.commands import register as register_trainer

    register_latent_action(app)
    register_trainer(app)


_register_other_commands()


INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


def main(argv: list[str] | None = None) -> None:
    """The console entry point: every error a user can cause becomes one line and an exit code."""
    # bitsandbytes (installed beside transformers) warns at import that it cannot fetch a CPU kernel from
    # the hub; nothing here quantises, so the line is noise on every command that loads a model.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # A crash in native code (a codec, Ray, Lance) prints where each thread was instead of ending without a word.
    if not faulthandler.is_enabled():
        try:
            faulthandler.enable()
        except (OSError, ValueError, AttributeError):  # stderr is no file (captured by a caller): nowhere to print
            pass
    try:
        code = app(args=argv, prog_name="pyramid", standalone_mode=False)
    except SystemExit:
        raise
    except typer.Abort:
        code = INTERRUPTED
    except typer.TyperException as exc:  # a bad option or argument (click's usage errors): one line, not a framed box
        command = exc.ctx.command_path if getattr(exc, "ctx", None) else "pyramid"
        typer.echo(f"error: {command}: {' '.join(exc.format_message().split())} (see {command} --help)", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
        if debugging():
            raise
        code, message = describe_error(exc)
        typer.echo(f"error: {message}", err=True)
        sys.exit(code)
    if code == INTERRUPTED:  # typer turns Ctrl-C (KeyboardInterrupt) into this code without a word
        typer.echo("error: interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)
