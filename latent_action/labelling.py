"""Latent actions for every stored-frame pair of an episode: the VAE's mean `mu`, float32 [P, 14].

P = stored frames - stride, with frames at the rate the VAE was trained at (`flow_fps`; a VAE from before
it was recorded uses every source frame, P = T - 1).

`label_episode` is the function; `LatentActionLabeller` is the same as a callable class that loads the
VAE once (a Ray Data actor); `label_source` labels a whole source root and writes
`latent_actions/<episode_id>.npy`, optionally `latent_action_dim14/<episode_id>.pt` (the Motus trainer's
layout: a float32 tensor [P, 14]) and `latent_stats.json`, which records the rate and stride. That folder alone is
not a Motus dataset: Motus reads P + 1 as the frame count of `videos/<id>.mp4`, which must hold exactly the frames
these pairs were made from, beside `umt5_wan/` and `metas/`; `pyramid export-motus` of a build writes all four.
`labelled_with.json` names the checkpoint (and its fingerprint) that made every latent in the output, so a
rerun reuses only latents of the same checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from latent_action.action_space import LATENT_ACTION_DIM
from latent_action.images import to_model_input
from latent_action.model import LatentActionVAE
from latent_action.pairs import (EPISODE_FAILURES, FlowSettings, SkippedEpisodes, UnreadableEpisode, episode_flows, flow_to_rgb,
                                 read_episodes)
from pyramid.atomic import atomic_write, atomic_write_bytes, remove_temporaries
from pyramid.cameras import LAYOUT_WORDS, CameraView, layouts_in_words, reordered_t_layout
from pyramid.episode import Episode
from pyramid.errors import EpisodeError
from pyramid.locks import exclusive
from pyramid.paths import output_child, overlap_problem, resolves_inside
from pyramid.stats import RunningStats

DEFAULT_BATCH_SIZE = 64
RECORD_FILE = "labelled_with.json"
# label and eval-latents take one lock, as each removes the temporaries it finds in its output (killed runs' leftovers)
LOCK_FILE = ".latents.lock"
OUTPUT_BUSY = "another label or eval-latents run is writing here"
SUMMARY_FILES = ("latent_stats.json", "label_report.json")  # written once every episode is labelled
LATENT_FOLDERS = {"latent_actions": ".npy", "latent_action_dim14": ".pt"}  # ours, and Motus's layout


@torch.no_grad()
def encode_flow_rgb(vae: LatentActionVAE, flow_rgb: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """mu for each flow-RGB image (uint8 [N, H, W, 3], any size): float32 [N, action_dim]."""
    device = next(vae.parameters()).device
    config = vae.config
    means = [vae.encode(to_model_input(flow_rgb[start : start + batch_size], config.image_size, config.input_encoding).to(device))[0]
             for start in range(0, len(flow_rgb), batch_size)]
    if not means:
        return np.zeros((0, vae.config.action_dim), np.float32)
    return torch.cat(means).float().cpu().numpy()


def label_episode(vae: LatentActionVAE, episode: Episode, batch_size: int = DEFAULT_BATCH_SIZE, estimator=None,
                  view: CameraView | None = None) -> np.ndarray:
    """float32 [P, 14]: row t is the latent action of the stored-frame pair (t, t + stride).

    Flow is made exactly as for training (`FlowSettings.of_vae`): frames at the VAE's stored rate and
    size, fitted as it was, its flow backend and options, its stride and flow-RGB scale; from the primary
    camera or `view` (see `view_for`).
    """
    settings = FlowSettings.of_vae(vae.config)
    chunks = [encode_flow_rgb(vae, flow_to_rgb(flows, settings.max_magnitude), batch_size)
              for flows in episode_flows(episode, settings, estimator, view or view_for(vae.config))]
    return np.concatenate(chunks) if chunks else np.zeros((0, vae.config.action_dim), np.float32)


def view_for(vae_config, cameras: str | None = None) -> CameraView:
    """The cameras to make a VAE's input from, as `--cameras` names them (default: the primary camera), fitted as its
    training frames were; a ValueError where the VAE was not trained on that layout."""
    settings = FlowSettings.of_vae(vae_config)
    view = CameraView.of_option(cameras or "primary", settings.fit)
    if view.layout not in settings.layouts:
        hint = "; pass --cameras t:HEAD,LEFT_WRIST,RIGHT_WRIST with the dataset's camera names" if "t" in settings.layouts else ""
        raise ValueError(f"the VAE was trained on {layouts_in_words(settings.layouts)}, not {LAYOUT_WORDS[view.layout]} (--cameras {cameras or 'primary'}){hint}")
    if problem := reordered_t_layout(view, settings.t_names):
        raise ValueError(f"--cameras: {problem}")
    return view


class LatentActionLabeller:
    """Construct once per worker (a Ray Data actor: `map(LatentActionLabeller, fn_constructor_args=(ckpt,))`)."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", batch_size: int = DEFAULT_BATCH_SIZE,
                 cameras: str | None = None):
        from latent_action.checkpoint import load_trained
        from latent_action.train import resolve_device

        self.vae, _, _ = load_trained(checkpoint, resolve_device(device))
        self.batch_size = batch_size
        self.cameras = cameras
        # Made on first use: a build labels the flow it made from its recipe's cameras, and needs neither.
        self.estimator, self.view = None, None

    def __call__(self, episode: Episode) -> np.ndarray:
        if self.estimator is None:
            self.view = view_for(self.vae.config, self.cameras)
            self.estimator = FlowSettings.of_vae(self.vae.config).estimator()
        return label_episode(self.vae, episode, self.batch_size, self.estimator, self.view)


def label_source(
    checkpoint: str | Path,
    root: str | Path,
    out_dir: str | Path,
    kind: str | None = None,
    motus_layout: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    echo: Callable[[str], None] = print,
    cameras: str | None = None,
) -> dict:
    """Label every episode under `root` from its `cameras` (`view_for`); episodes the same checkpoint already labelled
    from the same cameras in `out_dir` are reused unless `overwrite`. An `out_dir` holding latents of another checkpoint
    or other cameras is refused unless `overwrite`."""
    from latent_action.checkpoint import checkpoint_fingerprint, read_vae_config, resolve_checkpoint
    from latent_action.train import resolve_device

    checkpoint = resolve_checkpoint(checkpoint)
    resolve_device(device)  # a bad device fails now, even when every episode is reused
    vae_config = read_vae_config(checkpoint)
    pairs_at = _pair_rate(vae_config)
    view_for(vae_config, cameras)  # a layout the VAE never saw fails now, before any episode
    if motus_layout and pairs_at["stride"] != 1:
        raise ValueError(f"--motus-layout: {checkpoint} pairs frames {pairs_at['stride']} apart (flow stride); Motus's "
                         "latent_action_dim14 holds the latent action of each pair of consecutive frames: use a VAE trained with stride 1")
    out_dir = Path(out_dir)
    if problem := overlap_problem(out_dir, [root, checkpoint], "the output"):
        raise ValueError(problem)
    # loaded before anything is written, so that a damaged checkpoint leaves no output recording it
    labeller = LatentActionLabeller(checkpoint, device, cameras=cameras)
    record = {"checkpoint": str(checkpoint), "fingerprint": checkpoint_fingerprint(checkpoint), "cameras": cameras or "primary",
              "data": str(Path(root).resolve())}  # episode ids name the root's folder, not where it is: another one may match
    with exclusive(out_dir, LOCK_FILE, OUTPUT_BUSY):  # two would trust each other's latents
        return _label_episodes(labeller, root, kind, out_dir, record, overwrite, motus_layout, pairs_at, echo)


def _label_episodes(labeller: "LatentActionLabeller", root: str | Path, kind: str | None, out_dir: Path, record: dict,
                    overwrite: bool, motus_layout: bool, pairs_at: dict, echo: Callable[[str], None]) -> dict:
    checkpoint = record["checkpoint"]
    for folder in LATENT_FOLDERS:  # this run removes latents there that it did not write
        if not resolves_inside(out_dir / folder, out_dir):
            raise EpisodeError(out_dir / folder, f"links outside the output (to {os.path.realpath(out_dir / folder)}), where "
                                                 "label writes and removes latent files; make it a folder of the output")
    for folder in (out_dir, *(out_dir / name for name in LATENT_FOLDERS)):
        remove_temporaries(folder)  # what a killed run left: this run holds the lock
    reuse = prepare_output(out_dir, record, overwrite)
    for name in SUMMARY_FILES:  # an earlier run's, which a killed run would leave beside its own latents
        (out_dir / name).unlink(missing_ok=True)
    stats = RunningStats(14)
    report = {"episodes": 0, "pairs": 0, "reused": 0, "errors": SkippedEpisodes(echo)}
    resampled = 0  # episodes whose source video holds more frames than their rows pair
    kept: set[Path] = set()  # this run's latent files
    for episode in read_episodes(root, kind):
        if isinstance(episode, UnreadableEpisode):
            report["errors"].add(episode)
            continue
        target = output_child(out_dir, "latent_actions", f"{episode.episode_id}.npy")
        latents = reusable_latents(target, echo) if reuse else None
        if latents is not None:
            report["reused"] += 1
        else:
            try:
                latents = labeller(episode)
            except EPISODE_FAILURES as exc:  # its video, as the first read of it shows
                report["errors"].add(episode, exc)
                continue
            _write_atomically(target, lambda path: np.save(path, latents))
        kept.add(target)
        if motus_layout:
            tensor = torch.from_numpy(np.ascontiguousarray(latents, np.float32))
            motus_file = output_child(out_dir, "latent_action_dim14", f"{episode.episode_id}.pt")
            _write_atomically(motus_file, lambda path: torch.save(tensor, path))
            kept.add(motus_file)
            resampled += int(pairs_at["fps"] is not None and episode.fps > pairs_at["fps"])
        stats.update(latents)
        report["episodes"] += 1
        report["pairs"] += len(latents)
    if not report["episodes"] and report["errors"]:
        reason = next(iter(report["errors"].values()))
        raise ValueError(f"{root}: no episode labelled, all {len(report['errors'])} skipped (the first: {reason})")
    summary = {"latent_action": stats.summary(), "episodes": report["episodes"], "pairs": report["pairs"], "checkpoint": str(checkpoint),
               "pairs_at": pairs_at}
    remove_other_latents(out_dir, kept)
    for name, content in zip(SUMMARY_FILES, (summary, report)):
        atomic_write_bytes(out_dir / name, json.dumps(content, indent=2).encode())
    _write_record(out_dir, record)
    if motus_layout:
        echo(motus_layout_note(pairs_at["fps"], resampled, report["episodes"]))
    return report


def remove_other_latents(out_dir: Path, kept: set[Path]) -> None:
    """Remove latent files in `out_dir` this run did not write or reuse (another checkpoint's, relabelled with
    --overwrite; an episode gone from the data, or unreadable now): the record names the checkpoint of every one."""
    for folder, suffix in LATENT_FOLDERS.items():
        for path in (out_dir / folder).glob(f"*{suffix}"):
            if path not in kept:
                path.unlink()


def motus_layout_note(fps: float | None, resampled: int, episodes: int) -> str:
    """What `latent_action_dim14/` is and what Motus needs beside it: its loader takes rows + 1 as the frame count of
    videos/<id>.mp4 and indexes that video with it, so a video at another rate pairs frames with the wrong rows."""
    rate = "each episode's source rate" if fps is None else f"{fps:g} fps (an episode's own rate when lower)"
    note = (f"note: latent_action_dim14/<id>.pt row t is the pair of frames (t, t + 1) at {rate}; Motus also needs "
            "videos/<id>.mp4 of exactly rows + 1 such frames, umt5_wan/ and metas/ (`pyramid build` with this VAE, then "
            "`pyramid export-motus`, writes all four)")
    if resampled:
        note += f"; {resampled} of {episodes} episodes are faster than that, so their source videos do not pair with their rows"
    return note


def prepare_output(out_dir: Path, record: dict, overwrite: bool) -> bool:
    """Whether latents already in `out_dir` may be reused: only those the checkpoint of `record` made.

    Latents of another checkpoint (or of one `out_dir` did not record) are refused rather than relabelled:
    they may be hours of labelling that a trainer reads, and a different --vae is as likely a slip as a
    wish; --overwrite says it is a wish, as --resume does for train-vae.
    """
    recorded = _read_record(out_dir)
    if recorded is not None and _same_maker(recorded, record):
        return not overwrite
    if overwrite:  # until this run ends, out_dir holds latents of two checkpoints: a rerun must not reuse them
        (out_dir / RECORD_FILE).unlink(missing_ok=True)
        return False
    if any((out_dir / "latent_actions").glob("*.npy")):
        raise EpisodeError(out_dir, f"its latent actions were made by {_maker(recorded, record)}: pass --overwrite to "
                                    "relabel them, or choose another output directory")
    _write_record(out_dir, record)  # before the first latent, so that an interrupted run resumes
    return True


def _same_maker(recorded: dict, record: dict) -> bool:
    """The same checkpoint, cameras and data (records written before they named the data are taken at their word)."""
    return (recorded.get("fingerprint") == record["fingerprint"] and recorded.get("cameras", "primary") == record["cameras"]
            and recorded.get("data", record["data"]) == record["data"])


def _maker(recorded: dict | None, record: dict) -> str:
    if recorded is None:
        return (f"a checkpoint it does not record (no {RECORD_FILE}: labelled before labels recorded their checkpoint, "
                "or by an interrupted --overwrite run)")
    if recorded.get("fingerprint") == record["fingerprint"] and recorded.get("cameras", "primary") != record["cameras"]:
        return f"the same checkpoint from --cameras {recorded.get('cameras', 'primary')}, not {record['cameras']}"
    if recorded.get("fingerprint") == record["fingerprint"]:
        return f"the same checkpoint from the dataset at {recorded.get('data')}, not {record['data']}"
    return f"{recorded.get('checkpoint')}, whose weights or config.json differ from those of {record['checkpoint']}"


def reusable_latents(path: Path, echo: Callable[[str], None]) -> np.ndarray | None:
    """The latents at `path`, or None (to relabel) when there are none, they are unreadable, or `path` is a link: what
    it points at, maybe outside the output, is no file a label run wrote."""
    if path.is_symlink():
        echo(f"relabelling {path}: a link (to {os.path.realpath(path)}), not latents label wrote")
        return None
    if not path.is_file():
        return None
    try:
        latents = np.load(path)
    except (OSError, ValueError, EOFError) as exc:
        echo(f"relabelling {path}: unreadable ({exc})")
        return None
    if latents.ndim != 2 or latents.shape[1] != LATENT_ACTION_DIM:
        echo(f"relabelling {path}: shape {list(latents.shape)}, not [pairs, {LATENT_ACTION_DIM}]")
        return None
    return latents


def _read_record(out_dir: Path) -> dict | None:
    try:
        record = json.loads((out_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):  # none, or torn: as good as none, the latents' origin is unknown
        return None
    return record if isinstance(record, dict) else None


def _write_record(out_dir: Path, record: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / RECORD_FILE, json.dumps(record, indent=1).encode())


def _pair_rate(vae_config: dict) -> dict:
    """The stored rate and stride the latents are at, from the checkpoint's config (fps None: every source frame)."""
    settings = FlowSettings.of_vae(vae_config)
    return {"fps": settings.fps, "stride": settings.stride}


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
