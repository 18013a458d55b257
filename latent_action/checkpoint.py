"""Training checkpoints: a diffusers model directory plus what it takes to resume exactly, in the
convention `pyramid train` shares (pyramid/training/checkpoints.py: naming, atomic write, state file, RNG, --resume).

    step_0000500/
      config.json, diffusion_pytorch_model.safetensors   the VAE (`LatentActionVAE.from_pretrained(dir)`)
      action_normalizer.json                             per-embodiment q01/q99 of the real actions
      heldout_episodes.json                              labelled episodes kept out of training
      optimizer.safetensors                              AdamW moments and step counts
      rng.safetensors                                    the noise generator's, torch's (and CUDA's) RNG states
      training_state.json                                step, optimizer param groups, LR scheduler
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from latent_action.action_space import ActionNormalizer
from latent_action.model import LatentActionVAE
from pyramid.atomic import atomic_directory
from pyramid.errors import EpisodeError
from pyramid.training.checkpoints import (RNG_FILE, STATE_FILE, latest_checkpoint, load_rng, prune_checkpoints,
                                          save_rng, state_file, step_directory)

__all__ = ["checkpoint_dir", "latest_checkpoint", "prune_checkpoints", "save_checkpoint", "restore_checkpoint",
           "resolve_checkpoint", "load_trained"]


def checkpoint_dir(checkpoints: Path, step: int) -> Path:
    return step_directory(checkpoints, step)


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
    with atomic_directory(directory) as partial:
        vae.save_pretrained(partial)
        normalizer.save(partial / "action_normalizer.json")
        (partial / "heldout_episodes.json").write_text(json.dumps(sorted(heldout), indent=1))
        tensors, optimizer_json = _split_optimizer_state(optimizer.state_dict())
        save_file(tensors, str(partial / "optimizer.safetensors"))
        save_rng(partial, _rng_states(generator))
        state = {"step": step, "optimizer": optimizer_json, "scheduler": scheduler.state_dict(), **(extra or {})}
        (partial / STATE_FILE).write_text(json.dumps(state, indent=1))
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
        state = json.loads(state_file(directory).read_text())
        load_model(vae, str(directory / "diffusion_pytorch_model.safetensors"), device=str(next(vae.parameters()).device))
        tensors = load_file(str(directory / "optimizer.safetensors"), device=str(next(vae.parameters()).device))
    except (OSError, ValueError, KeyError) as exc:
        raise EpisodeError(directory, f"cannot resume from this checkpoint ({exc.__class__.__name__}: {exc})") from exc
    optimizer.load_state_dict(_join_optimizer_state(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    # Checkpoints from before the shared convention keep their RNG states in the state file, base64-encoded.
    _restore_rng(generator, load_rng(directory) if (directory / RNG_FILE).is_file() else _decode_all(state["rng"]))
    return int(state["step"])


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


def _rng_states(generator: torch.Generator) -> dict[str, torch.Tensor]:
    states = {"noise": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda{index}": state for index, state in enumerate(torch.cuda.get_rng_state_all())})
    return {name: state.cpu() for name, state in states.items()}


def _restore_rng(generator: torch.Generator, states: dict[str, torch.Tensor]) -> None:
    generator.set_state(states["noise"])
    torch.set_rng_state(states["torch"])
    cuda = [states[name] for name in sorted((n for n in states if n.startswith("cuda")), key=lambda n: int(n[4:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _decode_all(states: dict[str, Any]) -> dict[str, torch.Tensor]:
    """RNG states as the older state file held them: base64 strings (a list of them for CUDA)."""
    decoded = {name: _decode(states[name]) for name in ("noise", "torch")}
    decoded.update({f"cuda{index}": _decode(text) for index, text in enumerate(states.get("cuda", []))})
    return decoded


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)
