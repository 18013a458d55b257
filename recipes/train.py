"""Train Motus on a build's shards, one stage per recipe: `pyramid train recipes/configs/train/stage1.yaml`.

Reads top to bottom: set up (distributed, model, encoders, optimizer, data, resume), then the loop
(gradient accumulation, clipping, AdamW with warmup + cosine, logging, checkpoints). Launch with
`torchrun --nproc-per-node N -m recipes.train RECIPE.yaml` for several GPUs (DDP, or FSDP with
`train.distributed: fsdp`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pyramid.paths import overlap_problem
from pyramid.training.checkpoints import checkpoint_to_resume
from pyramid.training.lr_schedule import warmup_cosine
from recipes.motus.build import build_encoders, build_motus
from recipes.motus.checkpoint import (latest_checkpoint, load_checkpoint, load_weights, refuse_changed_recipe,
                                      save_checkpoint, step_directory)
from recipes.motus.config import Recipe
from recipes.motus.data import ClipExamples, make_loader
from recipes.motus.schedule import training_loss


def train(recipe: Recipe, resume: bool = False, log=print) -> dict:
    cfg = recipe.train
    rank, world_size, device = setup_distributed()
    is_main = rank == 0
    output = Path(cfg.output_dir)
    check_output_dir(output, Path(recipe.data.root))
    checkpoint = checkpoint_to_resume(output / "checkpoints", resume)  # refuses checkpoints unless resuming
    if checkpoint is not None:
        refuse_changed_recipe(checkpoint, recipe)
    dataset = ClipExamples(recipe.data, recipe.model, seed=cfg.seed)  # before the model: a bad build fails fast

    # Model: same seed on every rank, so random-init weights agree before the first step.
    torch.manual_seed(cfg.seed)
    model = build_motus(recipe.model)
    if cfg.init_from:
        load_weights(cfg.init_from, model)
    for name in ("video", "action", "understanding"):
        getattr(model, name).requires_grad_(name in cfg.trainable)
    for parameter in model.understanding.idle_parameters():
        parameter.requires_grad_(False)
    model.to(device)
    encoders = build_encoders(recipe.model, device, with_vlm=cfg.stage > 1, seed=cfg.seed)
    model = wrap_distributed(model, cfg.distributed, world_size, device, recipe.data.targets != "actions")

    # Optimiser: AdamW, linear warmup then cosine decay to lr * min_lr_ratio.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, cfg.steps,
                                                                           cfg.min_lr_ratio))
    noise = torch.Generator().manual_seed(cfg.seed * 1000 + rank)  # timesteps and noise; saved for exact resume

    step, consumed = 0, 0
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, noise)
        step, consumed = state["step"], state["samples_consumed"]
        log(f"resumed from {checkpoint} at step {step}")

    loader = make_loader(dataset, cfg.batch_size, cfg.seed, consumed, rank, world_size, recipe.data.num_workers)
    if is_main:
        log(f"stage {cfg.stage}: {len(dataset)} clips ({dict(dataset.skipped) or 'none'} skipped), "
            f"{sum(p.numel() for p in params) / 1e6:.1f}M trainable parameters, {world_size} process(es) on {device}")
    writer = tensorboard_writer(output) if is_main else None
    samples_per_step = cfg.batch_size * cfg.grad_accum_steps * world_size
    batches = iter(loader)
    history: list[float] = []

    model.train()
    while step < cfg.steps:
        started = time.perf_counter()
        for micro in range(cfg.grad_accum_steps):
            inputs = encoders.inputs(next(batches), device)
            sync = micro == cfg.grad_accum_steps - 1 or not hasattr(model, "no_sync")
            with precision_context(cfg.precision, device), (contextlib.nullcontext() if sync else model.no_sync()):
                losses = training_loss(model, **inputs, method=cfg.timesteps, video_weight=cfg.video_loss_weight,
                                       action_weight=cfg.action_loss_weight, generator=noise)
                (losses.total / cfg.grad_accum_steps).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        consumed += samples_per_step
        history.append(losses.total.item())

        if is_main and (step % cfg.log_every == 0 or step == cfg.steps):
            scalars = {"loss/total": losses.total.item(), "loss/video": losses.video.item(),
                       "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "samples_per_second": samples_per_step / (time.perf_counter() - started)}
            if losses.actions is not None:
                scalars["loss/actions"] = losses.actions.item()
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, step)
            log(f"step {step}/{cfg.steps}  " + "  ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in scalars.items()))
        if step % cfg.save_every == 0 or step == cfg.steps:
            directory = step_directory(output, step)
            state = {"step": step, "samples_consumed": consumed, "stage": cfg.stage, "recipe": recipe.model_dump()}
            save_checkpoint(directory, model, optimizer, scheduler, noise, state, is_writer=is_main)
            if is_main:
                log(f"saved {directory}")
    if writer is not None:
        writer.close()
    return {"step": step, "losses": history, "checkpoint": str(latest_checkpoint(output))}


BUILD_CONTENTS = ("manifest.json", "webdataset", "clips.lance")  # what marks a `pyramid build` output


def check_output_dir(output: Path, build: Path) -> None:
    """Refuse, before any work, an output that is a file, a build, or overlaps the build trained on."""
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"{output}: train.output_dir is a file, not a directory")
    if found := [name for name in BUILD_CONTENTS if (output / name).exists()]:
        raise FileExistsError(f"{output}: train.output_dir is a build directory (it holds {found[0]}): "
                              "choose another output directory")
    if problem := overlap_problem(output, [build], "train.output_dir"):
        raise FileExistsError(problem)


def setup_distributed() -> tuple[int, int, torch.device]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain `python` run is one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local_rank)
    return dist.get_rank(), dist.get_world_size(), torch.device("cpu")


def wrap_distributed(model: nn.Module, strategy: str, world_size: int, device: torch.device,
                     some_unused: bool) -> nn.Module:
    if world_size == 1:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # Without a state token (video-only or latent-action stages) the state encoder gets no gradient.
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=some_unused)
    from torch.distributed.fsdp import fully_shard

    # Motus calls the Wan blocks' sub-modules directly, so the unit of sharding is each Linear/Conv
    # (their forward is what runs); the root unit holds the norms and modulation tables.
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv3d)) and any(p.requires_grad for p in module.parameters()):
            fully_shard(module)
    return fully_shard(model)


def precision_context(precision: str, device: torch.device):
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def tensorboard_writer(output: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(output / "tensorboard"))


def main(argv: list[str] | None = None) -> None:
    """`torchrun ... -m recipes.train RECIPE.yaml [--resume]`: `pyramid train` in each process, with its options, help
    and one-line errors."""
    from pyramid.cli import main as pyramid_main

    try:
        pyramid_main(["train", *(sys.argv[1:] if argv is None else argv)])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
