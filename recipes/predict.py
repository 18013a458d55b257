"""Run a trained Motus on one clip of a build in any of the five modes: `pyramid predict CHECKPOINT --mode vla`.

Writes `prediction.mp4` (the condition frame then the predicted or given future frames, decoded by
the VAE), `actions.npy` (the action chunk in the embodiment's units, real dimensions only) and
`prediction.json` (what was given and what was predicted). Each file is written atomically and `prediction.json`
last, after an earlier one is removed: a run killed midway leaves no `prediction.json` beside its files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from pyramid.atomic import atomic_write, atomic_write_bytes
from pyramid.errors import EpisodeError
from pyramid.paths import overlap_problem
from pyramid.training.checkpoints import STATE_FILE, read_state
from pyramid.video_io import write_video
from pyramid.yaml_config import validation_problems
from recipes.motus.build import build_encoders, build_motus
from recipes.motus.checkpoint import load_weights
from recipes.motus.config import DataConfig, Recipe
from recipes.motus.data import ClipExamples, collate
from recipes.motus.schedule import GIVEN_CLEAN, Mode


@dataclass
class PredictionFiles:
    video: Path
    actions: Path
    summary: Path


def load_recipe_of(checkpoint: str | Path) -> Recipe:
    """The recipe a `pyramid train` checkpoint was trained with (its training state keeps it)."""
    state = read_state(checkpoint)
    path = Path(checkpoint) / STATE_FILE
    if not isinstance(state.get("recipe"), dict):
        raise EpisodeError(path, "no training recipe in it: not a `pyramid train` checkpoint (a latent-action VAE "
                                 "checkpoint from `pyramid train-vae` is for `pyramid label`)")
    try:
        return Recipe.model_validate(state["recipe"])
    except ValidationError as exc:
        raise EpisodeError(path, "the recipe saved in it is invalid: "
                                 + "; ".join(validation_problems(exc)[:3])) from exc


def predict_clip(checkpoint: str | Path, mode: str, out_dir: str | Path, data: DataConfig | None = None,
                 clip: int = 0, steps: int | None = None, seed: int = 0) -> PredictionFiles:
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    recipe = load_recipe_of(checkpoint)
    steps = recipe.model.inference_steps if steps is None else steps
    mode = Mode(mode)
    data = data or recipe.data
    if problem := overlap_problem(out_dir, [data.root, checkpoint], "the output"):
        raise FileExistsError(problem)
    if data.targets == "none":  # a stage-1 checkpoint still needs an action chunk's shape (and actions for world_model)
        data = data.model_copy(update={"targets": "actions"})
    dataset = ClipExamples(data, recipe.model, seed=seed)  # before the model: a bad build or clip fails fast
    if not 0 <= clip < len(dataset):
        raise EpisodeError(data.root, f"no usable clip {clip} (--clip): the build has {len(dataset)} usable clips, "
                                      f"0 to {len(dataset) - 1}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_motus(recipe.model)
    load_weights(checkpoint, model)
    model.to(device).eval()
    encoders = build_encoders(recipe.model, device, with_vlm=True, seed=recipe.train.seed)
    batch = collate([dataset[(clip, clip)]])
    inputs = encoders.inputs(batch, device)
    latents = inputs["latents"]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        prediction = model.predict(
            mode, latents[:, :, :1], latents.shape[2], inputs["text"], action_shape=tuple(inputs["actions"].shape[1:]),
            actions=inputs["actions"], video_latents=latents, state=inputs.get("state"),
            und_features=inputs.get("und_features"), und_mask=inputs.get("und_mask"),
            num_steps=steps, generator=torch.Generator().manual_seed(seed))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "prediction.json"
    summary_path.unlink(missing_ok=True)  # it vouches for the files beside it, so it goes before they change
    frames = encoders.video.decode(prediction.video_latents)[0].cpu().numpy()
    video_path = write_video(out / "prediction.mp4", frames, fps=recipe.model.frames.video_fps)
    embodiment = batch["embodiment"][0]
    real_dims = int(batch["action_mask"][0].sum())
    actions = prediction.actions[0].float().cpu().numpy()[:, :real_dims]
    actions = dataset.normalizer.denormalize(actions, embodiment, data.targets)
    moves = data.targets == "actions" and embodiment in data.displacement_actions
    if moves:
        actions = dataset.moves_per_step(actions, clip)
    atomic_write(out / "actions.npy", lambda tmp: np.save(tmp, actions))
    summary = {"checkpoint": str(checkpoint), "mode": mode.value, "clip": batch["key"][0],
               "instruction": batch["instruction"][0], "given_clean": GIVEN_CLEAN.get(mode),
               "video_frames": int(frames.shape[0]), "action_shape": list(actions.shape), "steps": steps,
               "action_units": data.targets, "action_rate_hz": recipe.model.frames.action_fps,
               "actions_are": "moves per step" if moves else "as recorded"}
    atomic_write_bytes(summary_path, json.dumps(summary, indent=1).encode())
    return PredictionFiles(video_path, out / "actions.npy", summary_path)
