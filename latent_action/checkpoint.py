"""Training checkpoints: a diffusers model directory plus what it takes to resume exactly, in the
convention `pyramid train` shares (pyramid/training/checkpoints.py: naming, atomic write, state file, RNG, --resume).

    step_0000500/
      config.json, diffusion_pytorch_model.safetensors   the VAE (`LatentActionVAE.from_pretrained(dir)`)
      action_normalizer.json                             per-embodiment q01/q99 of the real actions
      heldout_episodes.json                              episodes kept out of training (data.holdout_by)
      optimizer.safetensors                              AdamW moments and step counts
      rng.safetensors                                    the noise generator's, torch's (and CUDA's) RNG states
      training_state.json                                step, optimizer param groups, LR scheduler
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from latent_action.action_space import ActionNormalizer
from latent_action.config import TrainConfig, config_changes, parse_config
from latent_action.model import LatentActionVAE
from pyramid.atomic import atomic_directory
from pyramid.errors import EpisodeError, one_line
from pyramid.training.checkpoints import (RNG_FILE, STATE_FILE, latest_checkpoint, load_rng, prune_checkpoints,
                                          read_state, read_tensors, require_fields, save_rng, state_file, step_directory)

__all__ = ["checkpoint_dir", "latest_checkpoint", "prune_checkpoints", "save_checkpoint", "restore_checkpoint",
           "resolve_checkpoint", "load_trained", "checkpoint_fingerprint", "saved_train_config", "changed_settings"]

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


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

    state = read_state(directory)
    require_fields(state, state_file(directory), {"step": int, "optimizer": dict, "scheduler": dict}, "pyramid train-vae")
    weights = directory / WEIGHTS_FILE
    try:
        load_model(vae, str(weights), device=str(next(vae.parameters()).device))
    except RuntimeError as exc:  # load_model's size mismatch or missing keys: a model of another config
        raise EpisodeError(directory, f"cannot resume: its weights do not fit the model the config builds "
                                      f"({weights_mismatch(vae, weights) or one_line(exc, 300)})") from exc
    except (OSError, ValueError, KeyError, SafetensorError) as exc:  # a torn or foreign file
        raise EpisodeError(weights, f"cannot resume from this checkpoint ({exc.__class__.__name__}: {one_line(exc, 300)})") from exc
    tensors = read_tensors(directory / "optimizer.safetensors")  # names the file where it is missing or torn
    optimizer.load_state_dict(_join_optimizer_state(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    # Checkpoints from before the shared convention keep their RNG states in the state file, base64-encoded.
    old_rng = not (directory / RNG_FILE).is_file() and "rng" in state
    _restore_rng(generator, _decode_all(state["rng"]) if old_rng else load_rng(directory))  # load_rng names a missing file
    return state["step"]


def read_vae_config(checkpoint: str | Path) -> dict:
    """The VAE's config.json as a dict, read without loading its weights; an EpisodeError naming it where it is not JSON
    or not an object."""
    path = resolve_checkpoint(checkpoint) / "config.json"
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise EpisodeError(path, f"not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise EpisodeError(path, f"not a latent-action VAE's config (a JSON {type(config).__name__})")
    return config


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
    vae = load_vae(directory).to(device).eval()
    normalizer = ActionNormalizer.load(directory / "action_normalizer.json")
    return vae, normalizer, load_heldout(directory)


def load_vae(directory: Path) -> LatentActionVAE:
    """The checkpoint's VAE, from its safetensors weights (never from a pickle)."""
    weights = required_weights(directory)
    read_vae_config(directory)  # a config.json that is no JSON object, named before diffusers reads it its own way
    try:
        return LatentActionVAE.from_pretrained(str(directory), low_cpu_mem_usage=False, use_safetensors=True)
    except RuntimeError as exc:  # diffusers' size mismatch: weights of a model other than config.json describes
        model = LatentActionVAE.from_config(LatentActionVAE.load_config(str(directory)))
        raise EpisodeError(directory, f"its weights do not fit the model its config.json describes "
                                      f"({weights_mismatch(model, weights) or one_line(exc, 300)})") from exc
    except (TypeError, ValueError, KeyError, AttributeError, SafetensorError) as exc:  # not JSON, or not a VAE's, or torn
        raise EpisodeError(directory, f"not a readable latent-action VAE checkpoint ({exc.__class__.__name__}: "
                                      f"{one_line(exc, 300)})") from exc


def required_weights(directory: Path) -> Path:
    """The checkpoint's weights file, present and with a readable safetensors header (the tensors are not read)."""
    from safetensors import safe_open

    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise EpisodeError(weights, "missing: a latent-action VAE checkpoint keeps its weights in this file")
    try:
        with safe_open(str(weights), "pt") as file:
            file.keys()
    except (SafetensorError, OSError) as exc:
        raise EpisodeError(weights, f"not a readable safetensors file ({one_line(exc, 300)})") from None
    return weights


def weights_mismatch(model: torch.nn.Module, weights: Path) -> str | None:
    """The first tensor, in the model's order, whose shape in `weights` differs from the model's (or that one side lacks)."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as stored:
        shapes = {name: list(stored.get_slice(name).get_shape()) for name in stored.keys()}
    expected = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    for name, shape in expected.items():
        if name not in shapes:
            return f"{weights.name} lacks {name}"
        if shapes[name] != shape:
            return f"{name} is {shapes[name]} in {weights.name}, {shape} in the model"
    extra = [name for name in shapes if name not in expected]
    return f"{weights.name} holds {extra[0]}, which the model lacks" if extra else None


def load_holdout(directory: Path) -> tuple[str, set[str]]:
    """What the run's held-out episodes were drawn from ("episodes", or "tasks": whole tasks it never saw), and the
    tasks a `holdout_by: tasks` run held out (none otherwise), so that an episode of them training did not load
    (`max_episodes`, a skipped one, one added since) is scored as unseen, not used to fit the probe. Checkpoints from
    before the tasks were recorded give those their config named, if it did."""
    state = read_state(directory) if state_file(directory).is_file() else {}
    data = (state.get("train_config") or {}).get("data") or {}
    held_by = data.get("holdout_by", "episodes")
    tasks = state.get("heldout_tasks")
    if tasks is None:
        tasks = data.get("holdout_tasks") if held_by == "tasks" else None
    return held_by, {str(task) for task in tasks or []}


def load_heldout(directory: Path) -> set[str]:
    """The episode ids the run held out of training (none for a checkpoint without the file)."""
    path = directory / "heldout_episodes.json"
    if not path.is_file():
        return set()
    try:
        ids = json.loads(path.read_text())
    except ValueError as exc:
        raise EpisodeError(path, f"not a JSON list of held-out episode ids ({exc})") from exc
    if not isinstance(ids, list) or not all(isinstance(value, str) for value in ids):
        raise EpisodeError(path, "not a JSON list of held-out episode ids (strings)")
    return set(ids)


def checkpoint_fingerprint(directory: Path) -> str:
    """sha256 of the checkpoint's config.json and weights: what decides the latents it makes."""
    digest = hashlib.sha256()
    for path in (directory / "config.json", required_weights(directory)):
        with path.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def saved_train_config(directory: Path) -> dict | None:
    """The training config a checkpoint was saved with, as JSON (None for a checkpoint that did not record it)."""
    return read_state(directory).get("train_config")


def changed_settings(directory: Path, config: TrainConfig) -> list[str]:
    """The settings of `config` that differ from those the checkpoint was trained with, except those a resumed run
    may change (config.RESUMABLE); none for a checkpoint that did not record its config."""
    saved = saved_train_config(directory)
    if saved is None:
        return []
    current = json.loads(config.model_dump_json())
    try:  # fill in settings added since the checkpoint was saved with their defaults
        return config_changes(json.loads(parse_config(saved).model_dump_json()), current)
    except ValueError:  # a config of an older layout: compare the settings both know
        return config_changes(saved, current, only_shared=True)


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
