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

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from pyramid.atomic import atomic_directory
from pyramid.training.checkpoints import STATE_FILE, load_rng, save_rng
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
    tensors = {}
    for name in experts:
        path = directory / name / WEIGHTS
        if not path.exists():
            raise FileNotFoundError(f"{path}: no {name} weights in this checkpoint")
        tensors.update({f"{name}.{k}": v for k, v in load_file(path).items()})
    strict = set(experts) == set(EXPERTS)
    set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=strict))


def load_checkpoint(directory: Path, model, optimizer, scheduler, generator: torch.Generator) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote; returns the training state (step, samples consumed, ...)."""
    load_weights(directory, model)
    state = json.loads((directory / STATE_FILE).read_text())
    moments: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(directory / "optimizer.safetensors").items():
        param, _, name = key.rpartition("/")
        moments.setdefault(param, {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in state["param_groups"]]
    # strict=False: a parameter that never received a gradient (e.g. the state encoder in a stage without
    # states) has no AdamW state to save, and none to restore.
    set_optimizer_state_dict(model, optimizer, {"state": moments, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True, strict=False))
    scheduler.load_state_dict(state["scheduler"])
    generators = load_rng(directory)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if f"noise_generator_rank{rank}" in generators:
        generator.set_state(generators[f"noise_generator_rank{rank}"])
    else:  # more processes than the run that saved: new ranks draw fresh noise (the resume is no longer exact)
        generator.manual_seed(int(generators["noise_generator_rank0"].sum()) + 7919 * rank)
    return state


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
