"""Training checkpoints: a diffusers model directory plus what it takes to resume exactly.

    step_0000500/
      config.json, diffusion_pytorch_model.safetensors   the VAE (`LatentActionVAE.from_pretrained(dir)`)
      action_normalizer.json                             per-embodiment q01/q99 of the real actions
      heldout_episodes.json                              labelled episodes kept out of training
      optimizer.safetensors                              AdamW moments and step counts
      trainer_state.json                                 step, optimizer param groups, LR scheduler, RNG states
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from latent_action.action_space import ActionNormalizer
from latent_action.model import LatentActionVAE
from pyramid.errors import EpisodeError

STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step_{step:07d}"


def latest_checkpoint(checkpoints: Path) -> Path | None:
    steps = sorted((int(m.group(1)), p) for p in checkpoints.glob("step_*") if (m := STEP_DIR.match(p.name)) and p.is_dir())
    return steps[-1][1] if steps else None


def save_checkpoint(
    directory: Path,
    vae: LatentActionVAE,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    step: int,
    normalizer: ActionNormalizer,
    heldout: set[str],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint under a temporary name and rename it when complete."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    vae.save_pretrained(partial)
    normalizer.save(partial / "action_normalizer.json")
    (partial / "heldout_episodes.json").write_text(json.dumps(sorted(heldout), indent=1))
    tensors, optimizer_json = _split_optimizer_state(optimizer.state_dict())
    save_file(tensors, str(partial / "optimizer.safetensors"))
    state = {
        "step": step,
        "optimizer": optimizer_json,
        "scheduler": scheduler.state_dict(),
        "rng": _rng_states(generator),
        **(extra or {}),
    }
    (partial / "trainer_state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(partial, directory)
    return directory


def restore_checkpoint(
    directory: Path,
    vae: LatentActionVAE,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
) -> int:
    """Load weights, optimizer, scheduler and RNG state in place; return the step to continue from."""
    from safetensors.torch import load_model

    try:
        state = json.loads((directory / "trainer_state.json").read_text())
        load_model(vae, str(directory / "diffusion_pytorch_model.safetensors"), device=str(next(vae.parameters()).device))
        tensors = load_file(str(directory / "optimizer.safetensors"), device=str(next(vae.parameters()).device))
    except (OSError, ValueError, KeyError) as exc:
        raise EpisodeError(directory, f"cannot resume from this checkpoint ({exc.__class__.__name__}: {exc})") from exc
    optimizer.load_state_dict(_join_optimizer_state(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    _restore_rng(generator, state["rng"])
    return int(state["step"])


def prune_checkpoints(checkpoints: Path, keep: int) -> None:
    steps = sorted((int(m.group(1)), p) for p in checkpoints.glob("step_*") if (m := STEP_DIR.match(p.name)))
    for _, path in steps[:-keep]:
        shutil.rmtree(path)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory as given, or the latest checkpoint of a training run (`run.out_dir` or its checkpoints/)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for folder in (path / "checkpoints", path):
        if folder.is_dir() and (latest := latest_checkpoint(folder)) is not None:
            return latest
    raise EpisodeError(path, "not a latent-action VAE checkpoint (no config.json) nor a training run with checkpoints")


def load_trained(directory: str | Path, device: str | torch.device = "cpu") -> tuple[LatentActionVAE, ActionNormalizer, set[str]]:
    """A trained VAE (eval mode), its action normalisation and its held-out episode ids.

    `directory` is a checkpoint, or a training run whose latest checkpoint is taken.
    """
    directory = resolve_checkpoint(directory)
    vae = LatentActionVAE.from_pretrained(str(directory), low_cpu_mem_usage=False).to(device).eval()
    normalizer = ActionNormalizer.load(directory / "action_normalizer.json")
    heldout_file = directory / "heldout_episodes.json"
    heldout = set(json.loads(heldout_file.read_text())) if heldout_file.is_file() else set()
    return vae, normalizer, heldout


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], saved: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for name, value in saved.get("scalars", {}).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": saved["param_groups"]}


def _encode(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode()


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _rng_states(generator: torch.Generator) -> dict[str, Any]:
    states = {"noise": _encode(generator.get_state()), "torch": _encode(torch.get_rng_state())}
    if torch.cuda.is_available():
        states["cuda"] = [_encode(s) for s in torch.cuda.get_rng_state_all()]
    return states


def _restore_rng(generator: torch.Generator, states: dict[str, Any]) -> None:
    generator.set_state(_decode(states["noise"]))
    torch.set_rng_state(_decode(states["torch"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_decode(s) for s in states["cuda"]])
