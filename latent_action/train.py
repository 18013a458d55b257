"""The latent-action VAE training recipe: setup, the loop, evaluation previews and checkpoints, top to bottom.

Run it with `pyramid train-vae CONFIG.yaml [--resume]`; `train(config)` is the same thing from Python.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from latent_action.action_space import ActionNormalizer
from latent_action.checkpoint import (changed_settings, checkpoint_dir, latest_checkpoint, load_heldout, prune_checkpoints,
                                      restore_checkpoint, save_checkpoint)
from latent_action.config import TrainConfig
from latent_action.images import distance_from_white, random_shift, to_model_input, to_uint8, white
from latent_action.losses import LossTerms, latent_action_loss
from latent_action.model import LatentActionVAE
from latent_action.pairs import (EpisodePairs, FlowSettings, LancePairs, PairSet, SkippedEpisodes, UnreadableEpisode, heldout_episodes,
                                 hide_labels, indices_of, read_episodes)
from latent_action.plots import write_preview
from latent_action.presets import PRESETS, build_vae, describe_counts, parameter_counts
from latent_action.sampler import MixedPairSampler
from pyramid.atomic import atomic_write_bytes
from pyramid.cameras import CameraView
from pyramid.errors import EpisodeError
from pyramid.locks import exclusive
from pyramid.paths import overlap_problem
from pyramid.training.checkpoints import checkpoint_to_resume
from pyramid.training.lr_schedule import warmup_cosine

PREVIEW_PAIRS = 8
LOG_FILE = "train_log.jsonl"  # in run.out_dir: a JSON record per logged step and per evaluation
SKIPPED_FILE = "skipped_episodes.json"  # in run.out_dir: the episodes training left out, and why
LOCK_FILE = ".train.lock"  # in run.out_dir, held while a run writes there
EVAL_PAIRS = 64


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, S, S] in the model's input encoding
    motion: torch.Tensor  # [B, 1, S, S] in [0, 1]: how far each pixel is from "no motion"
    action: torch.Tensor  # [B, 14], normalised; zero where the pair has no action
    mask: torch.Tensor  # [B, 14], 1 where action carries a real value


@dataclass
class TrainingData:
    pairs: PairSet
    heldout: set[str]  # episodes kept out of training (data.holdout_by)
    train_indices: np.ndarray
    eval_indices: np.ndarray  # held-out pairs (training pairs when nothing is held out)
    normalizer: ActionNormalizer
    skipped: dict[str, str]  # episode id -> why it was left out (a video that will not decode...)
    heldout_tasks: list[str]  # holdout_by tasks: every episode of these is unseen, also one training did not load


def train(config: TrainConfig, resume: bool = False, show_progress: bool = True, echo: Callable[[str], None] = print) -> Path:
    """Train (or continue training) and return the directory of the last checkpoint."""
    check_out_dir(config)
    # One run per out_dir: two saved checkpoints over each other, and one's log lines went to a file the other replaced.
    with exclusive(config.run.out_dir, LOCK_FILE, "another train-vae run is writing here"):
        return _train(config, resume, show_progress, echo)


def _train(config: TrainConfig, resume: bool, show_progress: bool, echo: Callable[[str], None]) -> Path:
    from tqdm import tqdm

    out_dir, checkpoints = config.run.out_dir, config.run.out_dir / "checkpoints"
    last = checkpoint_to_resume(checkpoints, resume)  # refuses an out_dir with checkpoints unless resuming
    if last is not None:
        refuse_changed_config(last, config)
    device = resolve_device(config.run.device)
    torch.manual_seed(config.run.seed)

    data = prepare_data(config, echo)
    if last is not None:
        refuse_other_data(last, data)
    if data.skipped:
        atomic_write_bytes(out_dir / SKIPPED_FILE, json.dumps(data.skipped, indent=1).encode())
    vae = build_model(config, data.pairs.settings).to(device).train()
    echo(f"model '{config.model.preset}': {describe_counts(parameter_counts(vae))}")
    optimizer = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=config.optim.lr,
                                  betas=config.optim.betas, weight_decay=config.optim.weight_decay)
    schedule = warmup_cosine(config.optim.warmup_steps, config.optim.max_steps, config.optim.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    sampler = MixedPairSampler(data.pairs.table.labelled, data.pairs.table.group, data.train_indices,
                               config.data.labelled_fraction, sampling_weights(config), config.run.seed)
    generator = torch.Generator(device=device).manual_seed(config.run.seed)  # the reparameterisation noise
    step = 0
    if last is not None:
        step = restore_checkpoint(last, vae, optimizer, scheduler, generator)
        echo(f"resumed from {last} at step {step}")

    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.run.bf16 and device.type == "cuda")
    shift = round(config.augment.max_shift * vae.config.image_size)
    bar = tqdm(total=config.optim.max_steps, initial=step, disable=not show_progress, desc="train-vae", dynamic_ncols=True)
    last_saved = None
    started = time.perf_counter()
    log_path = out_dir / LOG_FILE
    keep_log_until(log_path, step)
    with log_path.open("a") as log:
        while step < config.optim.max_steps:
            # Batches and their shifts are functions of (seed, step): a resumed run draws the same ones.
            batch = make_batch(data.pairs, sampler.batch(step, config.optim.batch_size), data.normalizer, vae, device,
                               shift, np.random.default_rng([config.run.seed, step, 1]))
            with autocast:
                output = vae(batch.images, sample=True, generator=generator)
            terms = latent_action_loss(output.reconstruction, batch.images, output.mu, output.logvar, output.z,
                                       batch.action, batch.mask, batch.motion, **config.loss.model_dump())
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(vae.parameters(), config.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            final = step == config.optim.max_steps
            if step % config.run.log_every == 0 or final:
                record = {"step": step, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm), **terms.as_floats(),
                          "elapsed_s": round(time.perf_counter() - started, 3)}  # steps/s between records, this run
                _write(log, record)
                bar.set_postfix(loss=f"{record['total']:.4f}", rec=f"{record['reconstruction']:.4f}",
                                align=f"{record['alignment']:.3f}", kl=f"{record['kl']:.2f}")
            if step % config.run.eval_every == 0 or final:
                preview = out_dir / "previews" / f"step_{step:07d}.png"
                _write(log, {"step": step, "eval": evaluate(vae, data, config, device, preview)})
            if step % config.run.checkpoint_every == 0 or final:
                last_saved = save_checkpoint(checkpoint_dir(checkpoints, step), vae, optimizer, scheduler, generator, step,
                                             data.normalizer, data.heldout, {"train_config": json.loads(config.model_dump_json()),
                                                                             "heldout_tasks": data.heldout_tasks})
                prune_checkpoints(checkpoints, config.run.keep_checkpoints)
    bar.close()
    return last_saved or latest_checkpoint(checkpoints)


def refuse_changed_config(checkpoint: Path, config: TrainConfig) -> None:
    """An EpisodeError listing the settings that differ from those the checkpoint was trained with (config.RESUMABLE aside)."""
    changes = changed_settings(checkpoint, config)
    if changes:
        raise EpisodeError(checkpoint, f"trained with other settings (checkpoint's -> config's: {'; '.join(changes)}): "
                                       "resume with the checkpoint's settings, or train afresh in another run.out_dir")


def refuse_other_data(checkpoint: Path, data: TrainingData) -> None:
    """An EpisodeError where the data is not what the checkpoint was trained on (a dataset written again in place,
    another at the moved root): its held-out episodes or its action statistics differ. Training on would score on
    another split, perhaps of episodes it has trained on, with actions scaled anew."""
    if (checkpoint / "heldout_episodes.json").is_file() and (saved := load_heldout(checkpoint)) != data.heldout:
        raise EpisodeError(checkpoint, f"trained on other data: {len(saved - data.heldout)} of its {len(saved)} held-out "
                                       f"episodes are not held out in this data, and {len(data.heldout - saved)} others are; "
                                       f"resume on the data it was trained on, or train afresh in another run.out_dir")
    stats_path = checkpoint / "action_normalizer.json"
    if stats_path.is_file() and ActionNormalizer.load(stats_path).to_json() != data.normalizer.to_json():
        raise EpisodeError(checkpoint, "trained on other data: the actions of this data's training episodes have other "
                                       "statistics than those it was trained with; resume on the data it was trained on, "
                                       "or train afresh in another run.out_dir")


def check_out_dir(config: TrainConfig) -> None:
    """A ValueError, before any data is read, where run.out_dir is a file or overlaps what training reads."""
    out_dir = config.run.out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: run.out_dir is a file, not a directory")
    inputs = [source.root for source in config.data.sources] + ([config.data.lance] if config.data.lance else [])
    if problem := overlap_problem(out_dir, inputs, "run.out_dir"):
        raise ValueError(problem)


def keep_log_until(path: Path, step: int) -> None:
    """Leave in the training log only the records of steps up to `step`, where training goes on from: a run killed
    after its last checkpoint logged steps that the resumed run logs again (and a fresh run none of them). A line
    torn by the kill is dropped with them."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(errors="replace").splitlines(keepends=True)
            if (record := _record(line)) is not None and isinstance(record.get("step"), int) and record["step"] <= step]
    atomic_write_bytes(path, "".join(kept).encode())


def _record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and line.endswith("\n") else None


def _write(log, record: dict) -> None:
    log.write(json.dumps(record) + "\n")
    log.flush()


def prepare_data(config: TrainConfig, echo: Callable[[str], None]) -> TrainingData:
    """The flow pairs, the held-out split, the label share and the action normalisation fitted on the training pairs."""
    skipped = SkippedEpisodes(echo)
    pairs = open_pairs(config, PRESETS[config.model.preset].image_size, skipped)
    heldout = heldout_episodes(pairs.table, config.data.holdout_fraction, config.data.holdout_by, config.data.holdout_tasks)
    tasks = []
    if config.data.holdout_by == "tasks":
        tasks = sorted({task for episode, task in zip(pairs.table.episode_id, pairs.table.task) if episode in heldout})
        echo(f"held out of training: every episode of {len(tasks)} task(s): {'; '.join(tasks)}")
    train_indices = indices_of(pairs.table, heldout, keep=False)
    heldout_indices = indices_of(pairs.table, heldout, keep=True)
    labels = config.data.labels
    hidden = hide_labels(pairs.table, train_indices, labels.share, labels.by, labels.seed)
    labelled = int(pairs.table.labelled[train_indices].sum())
    echo(f"pairs: {len(train_indices)} for training ({labelled} labelled"
         + (f"; actions of {hidden} hidden by labels.share {labels.share:g} by {labels.by}" if hidden else "")
         + f"), {len(heldout_indices)} held out from {len(heldout)} episodes")
    if labelled in (0, len(train_indices)) and 0 < config.data.labelled_fraction < 1:
        kind = "unlabelled" if labelled == 0 else "labelled"
        echo(f"every training pair is {kind}: batches are all {kind}, whatever labelled_fraction says"
             + (" (set data.labels.share to train with fewer labels)" if labelled else ""))
    eval_indices = heldout_indices if len(heldout_indices) else train_indices
    return TrainingData(pairs, heldout, train_indices, eval_indices, fit_normalizer(pairs, train_indices), skipped, tasks)


def resolve_device(name: str) -> torch.device:
    """`auto` (a GPU when there is one), `cpu`, `cuda` or `cuda:N`; a ValueError saying why for anything else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this machine has no CUDA device (use cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")
    return device


def build_model(config: TrainConfig, settings: FlowSettings) -> LatentActionVAE:
    import flow

    recorded = {
        "flow_backend": settings.backend, "flow_max_magnitude": settings.max_magnitude,
        "frame_height": settings.frame_height, "frame_width": settings.frame_width,
        "flow_fps": settings.fps, "flow_stride": settings.stride,
        "flow_still_threshold": settings.still_threshold, "flow_still_radius": settings.still_radius,
        "flow_options": flow.resolved_options(settings.backend, dict(settings.options)),
        "flow_resize": settings.fit, "flow_camera_layouts": list(settings.layouts),
        "flow_camera_t_names": [list(names) for names in settings.t_names],
    }
    if config.model.head_hidden_dim:
        recorded["head_hidden_dim"] = config.model.head_hidden_dim
    return build_vae(config.model.preset, config.model.dcae_path, config.model.freeze_dcae, **recorded)


def open_pairs(config: TrainConfig, image_size: int, skipped: SkippedEpisodes) -> PairSet:
    data = config.data
    if data.lance is not None:
        pairs = LancePairs(data.lance, image_size)
        refuse_other_flow(data.flow, pairs.settings, data.lance)
        return pairs
    refuse_colliding_sources(data.sources)
    views = [CameraView.of_recipe(source.cameras, data.flow.resize) for source in data.sources]
    pairs = EpisodePairs(image_size, FlowSettings.from_config(data.flow, views))
    estimator = pairs.settings.estimator()
    for number, (source, view) in enumerate(zip(data.sources, views)):
        for episode in read_episodes(source.root, source.kind, source.embodiment, source.max_episodes):
            if isinstance(episode, UnreadableEpisode):
                skipped.add(episode)
                continue
            try:
                pairs.add_episode(episode, group=f"sources[{number}]", estimator=estimator, view=view)
            except EpisodeError as exc:
                skipped.add(episode, exc)
    if not len(pairs):
        raise ValueError(f"the configured sources hold no episode with two or more frames at {data.flow.fps:g} fps")
    return pairs


def refuse_colliding_sources(sources) -> None:
    """A ValueError where two sources would give their episodes the same ids: the held-out split and the label share
    are drawn by episode id, so their episodes would be taken for one another."""
    from pyramid.sources.base import colliding_roots, detect_source, get_source

    kinds = [(get_source(source.kind) if source.kind else detect_source(source.root)).name for source in sources]
    if problem := colliding_roots(zip(kinds, (source.root for source in sources))):
        raise ValueError(f"data.sources: {problem}")


# data.flow keys -> the FlowSettings field each sets
FLOW_KEYS = {"backend": "backend", "options": "options", "fps": "fps", "stride": "stride", "frame_height": "frame_height",
             "frame_width": "frame_width", "still_threshold": "still_threshold", "still_radius": "still_radius",
             "max_magnitude": "max_magnitude", "resize": "fit"}


def refuse_other_flow(flow_config, built: FlowSettings, lance: Path) -> None:
    """A ValueError naming each `data.flow` key a config sets that contradicts how the build made its flow.lance: the VAE
    trains on, and records, the build's flow, so such a key would say something about the VAE that is not true."""
    import flow

    wanted = FlowSettings.from_config(flow_config)
    resolved = {"options": (flow.resolved_options(wanted.backend, dict(wanted.options)), flow.resolved_options(built.backend, dict(built.options))),
                "backend": (wanted.backend.partition(":")[0], built.backend.partition(":")[0])}
    problems = []
    for key in sorted(flow_config.model_fields_set & FLOW_KEYS.keys()):
        mine, theirs = resolved.get(key, (getattr(wanted, FLOW_KEYS[key]), getattr(built, FLOW_KEYS[key])))
        if mine != theirs:
            problems.append(f"data.flow.{key} is {mine!r}, the build's is {theirs!r}")
    if problems:
        raise ValueError(f"{lance}: made with other flow settings than data.flow says ({'; '.join(problems)}): a VAE trained "
                         "from a build's flow.lance takes the build's; leave those keys out, or build with them")


def sampling_weights(config: TrainConfig) -> dict[str, float]:
    """Weight per sampling group: `sources[i]` entries for episodes, source names for a Lance dataset."""
    if config.data.lance is not None:
        return dict(config.data.source_weights)
    return {f"sources[{number}]": source.weight for number, source in enumerate(config.data.sources)}


def fit_normalizer(pairs: PairSet, train_indices: np.ndarray) -> ActionNormalizer:
    table = pairs.table
    labelled = [(table.embodiment[i], table.action_names.get(table.embodiment[i], []), table.action[i])
                for i in train_indices if table.action[i] is not None]
    return ActionNormalizer.fit(labelled)


def make_batch(pairs: PairSet, indices: np.ndarray, normalizer: ActionNormalizer, vae: LatentActionVAE,
               device: torch.device, shift: int = 0, rng: np.random.Generator | None = None) -> Batch:
    """Model inputs, motion maps and normalised actions of the pairs at `indices`, shifted when `shift` > 0."""
    table, encoding = pairs.table, vae.config.input_encoding
    encoded = [normalizer.encode(table.embodiment[i], table.action[i]) for i in indices]
    images = to_model_input(pairs.images(indices), vae.config.image_size, encoding)
    if shift > 0 and rng is not None:
        images = random_shift(images, shift, white(encoding), rng)
    actions = torch.from_numpy(np.stack([value for value, _ in encoded]))
    masks = torch.from_numpy(np.stack([mask for _, mask in encoded]))
    motion = distance_from_white(images, encoding)
    return Batch(images.to(device), motion.to(device), actions.to(device), masks.to(device))


@torch.no_grad()
def evaluate(vae: LatentActionVAE, data: TrainingData, config: TrainConfig, device: torch.device, preview_path: Path) -> dict[str, float]:
    """Losses on a fixed set of (held-out) pairs, decoding the mean, and a preview image of input vs reconstruction."""
    indices = data.eval_indices
    chosen = indices[np.linspace(0, len(indices) - 1, min(EVAL_PAIRS, len(indices))).astype(int)]
    vae.eval()
    batch = make_batch(data.pairs, chosen, data.normalizer, vae, device)
    output = vae(batch.images, sample=False)
    terms: LossTerms = latent_action_loss(output.reconstruction, batch.images, output.mu, output.logvar, output.z,
                                          batch.action, batch.mask, batch.motion, **config.loss.model_dump())
    vae.train()
    shown = np.linspace(0, len(chosen) - 1, min(PREVIEW_PAIRS, len(chosen))).astype(int)
    encoding = vae.config.input_encoding
    write_preview(preview_path, to_uint8(batch.images[shown], encoding), to_uint8(output.reconstruction[shown], encoding))
    return terms.as_floats()
