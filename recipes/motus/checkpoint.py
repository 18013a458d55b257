"""Training checkpoints: one directory per step, safetensors + JSON only, enough to resume a run exactly,
in the convention `pyramid train-vae` shares (pyramid/training/checkpoints.py: naming, atomic write, state file, RNG, --resume).

    step_0000100/
      video/ action/ understanding/   config.json + safetensors per expert (diffusers `from_pretrained` reads them)
      optimizer.safetensors           AdamW moments and step counts, keyed by parameter name
      rng.safetensors                 each rank's training-noise generator state
      training_state.json             step, samples consumed, LR scheduler, optimizer hyper-parameters

Weights and optimizer state are gathered to full tensors first (torch.distributed.checkpoint's
state-dict API), so DDP and FSDP runs write the same files as a single process does.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from pyramid.atomic import atomic_directory
from pyramid.errors import EpisodeError
from pyramid.training.checkpoints import RNG_FILE, STATE_FILE, load_rng, read_state, read_tensors, require_fields, save_rng
from pyramid.training.checkpoints import latest_checkpoint as latest_in
from pyramid.training.checkpoints import step_directory as step_in
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

EXPERTS = ("video", "action", "understanding")
WEIGHTS = "diffusion_pytorch_model.safetensors"  # the name diffusers' from_pretrained looks for
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def step_directory(output_dir: str | Path, step: int) -> Path:
    return step_in(Path(output_dir) / "checkpoints", step)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    return latest_in(Path(output_dir) / "checkpoints")


def save_checkpoint(directory: Path, model, optimizer, scheduler, generator: torch.Generator,
                    state: dict[str, Any], is_writer: bool = True) -> Path:
    """Every rank must call this (gathering is collective); only the writer touches the disk."""
    weights = get_model_state_dict(model, options=FULL)
    optim = get_optimizer_state_dict(model, optimizer, options=FULL)
    generators = _gather(generator.get_state())  # each rank draws its own noise
    if not is_writer:
        return directory
    with atomic_directory(directory) as tmp:
        _write_experts(tmp, _unwrap(model), weights)
        moments = {f"{param}/{key}": value.contiguous() for param, entry in optim["state"].items()
                   for key, value in entry.items() if isinstance(value, torch.Tensor)}
        save_file(moments, tmp / "optimizer.safetensors")
        save_rng(tmp, {f"noise_generator_rank{rank}": state for rank, state in enumerate(generators)})
        training_state = {**state, "scheduler": scheduler.state_dict(),
                          "param_groups": [_jsonable(g) for g in optim["param_groups"]]}
        (tmp / STATE_FILE).write_text(json.dumps(training_state, indent=1))
    return directory


def _write_experts(folder: Path, unwrapped, weights: dict[str, torch.Tensor]) -> None:
    for name in EXPERTS:
        expert = getattr(unwrapped, name)
        (folder / name).mkdir(parents=True)
        expert.save_config(folder / name)
        prefix = f"{name}."
        tensors = {k[len(prefix):]: v.contiguous() for k, v in weights.items() if k.startswith(prefix)}
        save_file(tensors, folder / name / WEIGHTS, metadata={"format": "pt"})


def load_weights(directory: str | Path, model, experts: tuple[str, ...] = EXPERTS) -> None:
    """Load the named experts' weights from a checkpoint into `model` (strict for each expert loaded)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EpisodeError(directory, "not a checkpoint directory")
    if not any((directory / name).is_dir() for name in EXPERTS):
        raise EpisodeError(directory, f"not a `pyramid train` checkpoint (no {', '.join(EXPERTS)} folders)")
    tensors = {}
    for name in experts:
        path = directory / name / WEIGHTS
        if not path.exists():
            raise FileNotFoundError(f"{path}: no {name} weights in this checkpoint")
        tensors.update({f"{name}.{k}": v for k, v in read_tensors(path).items()})
    strict = set(experts) == set(EXPERTS)
    try:
        set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=strict))
    except RuntimeError as exc:
        raise EpisodeError(directory, f"weights do not fit the model ({first_problem(exc)})") from exc


def load_checkpoint(directory: Path, model, optimizer, scheduler, generator: torch.Generator) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote; returns the training state (step, samples consumed, ...)."""
    load_weights(directory, model)
    state = read_state(directory)
    require_fields(state, directory / STATE_FILE, {"step": int, "samples_consumed": int, "scheduler": dict,
                                                   "param_groups": list}, "pyramid train")
    moments: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in read_tensors(directory / "optimizer.safetensors").items():
        param, _, name = key.rpartition("/")
        moments.setdefault(param, {})[name] = value
    check_moment_shapes(directory / "optimizer.safetensors", model, moments)
    try:
        groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in state["param_groups"]]
        # strict=False: a parameter that never received a gradient (e.g. the state encoder in a stage without
        # states) has no AdamW state to save, and none to restore.
        set_optimizer_state_dict(model, optimizer, {"state": moments, "param_groups": groups},
                                 options=StateDictOptions(full_state_dict=True, strict=False))
        scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise EpisodeError(directory / STATE_FILE, f"optimizer or scheduler state does not fit this run "
                                                   f"({first_problem(exc)})") from exc
    restore_noise(directory, generator)
    return state


def check_moment_shapes(path: Path, model, moments: dict[str, dict[str, torch.Tensor]]) -> None:
    """AdamW would only fail at its first step on a moment of the wrong shape; name the file before that."""
    shapes = {name: parameter.shape for name, parameter in _unwrap(model).named_parameters()}
    for param, entry in moments.items():
        for key, value in entry.items():
            if key != "step" and param in shapes and value.shape != shapes[param]:
                raise EpisodeError(path, f"{param}/{key} has shape {list(value.shape)} but the model's parameter "
                                         f"has {list(shapes[param])}: the checkpoint is damaged or of another model")


def restore_noise(directory: Path, generator: torch.Generator) -> None:
    generators = load_rng(directory)
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        if f"noise_generator_rank{rank}" in generators:
            generator.set_state(generators[f"noise_generator_rank{rank}"])
        else:  # more processes than the run that saved: new ranks draw fresh noise (the resume is no longer exact)
            generator.manual_seed(int(generators["noise_generator_rank0"].sum()) + 7919 * rank)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise EpisodeError(directory / RNG_FILE, f"no usable noise generator state ({first_problem(exc)})") from exc


def first_problem(exc: BaseException) -> str:
    """The first line of an error's message (torch lists every mismatched tensor, one per line)."""
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} entry"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # "Error(s) in loading state_dict for X:" heads the list
        lines = lines[1:]
    more = f"; and {len(lines) - 1} more" if len(lines) > 1 else ""
    return (lines[0].rstrip(".") if lines else exc.__class__.__name__) + more


def _gather(state: torch.Tensor) -> list[torch.Tensor]:
    if not dist.is_initialized():
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def _unwrap(model):
    return getattr(model, "module", model)


def _jsonable(group: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()
            if isinstance(v, (int, float, str, bool, list, tuple)) or v is None}


# What a resumed run may change: how long it trains, where it reads, writes and finds weights, how often it logs and
# saves, its precision, and DDP or FSDP (checkpoints hold whole state dicts either way). The rest (model, data selection, optimiser, batch, seed, trainable experts) decides the
# trajectory: a new lr would be overridden by the optimizer state the checkpoint restores, a new `trainable` would
# freeze experts from the resume on.
RESUMABLE = frozenset({
    "train.steps", "train.output_dir", "train.log_every", "train.save_every", "train.precision", "train.init_from",
    "train.distributed",
    "data.root", "data.num_workers", "model.video.pretrained_path", "model.text.pretrained_path", "model.vlm.pretrained_path",
})


def refuse_changed_recipe(directory: Path, recipe) -> None:
    """An EpisodeError listing what `recipe` changed from the one the checkpoint was trained with (RESUMABLE aside);
    nothing for a checkpoint that did not record its recipe."""
    from pyramid.training.settings import setting_changes
    from recipes.motus.config import Recipe

    saved = read_state(directory).get("recipe")
    if not isinstance(saved, dict):
        return
    current = json.loads(recipe.model_dump_json())
    saved = _without_filled_rope_theta(saved, current)
    try:  # settings added since the checkpoint was saved take their defaults; the library arguments are compared whole
        saved = json.loads(Recipe.model_validate(saved).model_dump_json())
        changes = setting_changes(saved, current, RESUMABLE)
    except ValueError:  # a recipe of an older layout: the settings both name are compared
        changes = setting_changes(saved, current, RESUMABLE, only_shared=True)
    if changes:
        raise EpisodeError(directory, f"trained with another recipe (checkpoint's -> recipe's: {'; '.join(changes)}): "
                                      "resume with the checkpoint's recipe, or train afresh in another train.output_dir")


def _without_filled_rope_theta(saved: dict, current: dict) -> dict:
    """The saved recipe less the `rope_scaling.rope_theta` that transformers wrote into a recipe's Qwen3-VL
    `text_config` in place, before build.py passed it a copy, where the recipe given now has none."""
    def rope_scaling(recipe: dict) -> dict:
        architecture = ((recipe.get("model") or {}).get("vlm") or {}).get("architecture") or {}
        scaling = (architecture.get("text_config") or {}).get("rope_scaling")
        return scaling if isinstance(scaling, dict) else {}

    if "rope_theta" not in rope_scaling(saved) or "rope_theta" in rope_scaling(current):
        return saved
    saved = copy.deepcopy(saved)
    del rope_scaling(saved)["rope_theta"]
    return saved
