"""The `pyramid train` and `pyramid predict` commands; `register(app)` adds them to the `pyramid` CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pyramid.cli_errors import fail

MODES = "vla, vgm, world_model, idm or joint"
FORMATS = ("webdataset", "lance")


def train_command(
    recipe: Path = typer.Argument(..., help="A training recipe, e.g. recipes/configs/train/stage1.yaml."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in train.output_dir "
                                                         "(an output with checkpoints is refused without it)."),
) -> None:
    """Train Motus for one stage.

    For several GPUs: torchrun --nproc-per-node N -m recipes.train RECIPE.yaml [--resume]
    """
    import torch.distributed as dist

    from recipes.motus.config import TrainRecipeError, load_recipe
    from recipes.train import train

    try:
        loaded = load_recipe(recipe)
    except TrainRecipeError as exc:
        fail(str(exc))
    result = train(loaded, resume=resume, log=typer.echo)
    if not dist.is_initialized() or dist.get_rank() == 0:  # under torchrun, one process says it
        typer.echo(f"done at step {result['step']}: {result['checkpoint']}")


def predict_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory (…/checkpoints/step_NNNNNNN)."),
    mode: str = typer.Option("joint", "--mode", "-m", help=f"One of {MODES}."),
    out: Path = typer.Option(Path("prediction"), "--out", "-o", help="Directory for prediction.mp4/actions.npy."),
    data_root: Optional[Path] = typer.Option(None, "--data", help="A build to take the clip from (default: the "
                                                                   "checkpoint's training data)."),
    data_format: Optional[str] = typer.Option(None, "--format", help=" or ".join(FORMATS) + "."),
    clip: int = typer.Option(0, help="Which usable clip of the build (0, 1, ...)."),
    steps: Optional[int] = typer.Option(None, help="Euler steps, at least 1 (default: the model config's, 10)."),
    seed: int = typer.Option(0, help="Seed of the initial noise and of the clip window."),
) -> None:
    """Predict video and/or actions for one clip in one of the five modes."""
    from recipes.predict import load_recipe_of, predict_clip

    check_predict_options(mode, data_format, clip, steps)
    if not (checkpoint / "training_state.json").exists():
        fail(f"{checkpoint}: not a checkpoint directory (no training_state.json)")
    if out.exists() and not out.is_dir():
        fail(f"{out}: --out is a file, not a directory")
    data = load_recipe_of(checkpoint).data
    updates = {k: v for k, v in {"root": str(data_root) if data_root else None, "format": data_format}.items() if v}
    files = predict_clip(checkpoint, mode, out, data.model_copy(update=updates), clip, steps, seed)
    typer.echo(f"{files.video}\n{files.actions}\n{files.summary}")


def check_predict_options(mode: str, data_format: str | None, clip: int, steps: int | None) -> None:
    """Options that are wrong whatever the checkpoint, refused before anything loads."""
    from recipes.motus.schedule import Mode

    if mode not in {m.value for m in Mode}:
        fail(f"unknown mode {mode!r} (use {MODES})")
    if data_format is not None and data_format not in FORMATS:
        fail(f"--format: unknown data format {data_format!r} (use {' or '.join(FORMATS)})")
    if clip < 0:
        fail(f"--clip: a clip number is 0 or more, got {clip}")
    if steps is not None and steps < 1:
        fail(f"--steps: at least 1 Euler step, got {steps}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("predict")(predict_command)
