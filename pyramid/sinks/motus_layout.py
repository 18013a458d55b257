"""`pyramid export-motus`: a labelled build in the layout of the original Motus `latent_action` dataset.

    <out>/videos/<stem>.mp4                 the episode's stored frames, H.264 at the stored fps
    <out>/latent_action_dim14/<stem>.pt     float32 [T - 1, 14]: the latent action of each pair of consecutive frames
    <out>/umt5_wan/<stem>.pt                each instruction through Wan's UMT5 encoder, [tokens, dim] (a list when several)
    <out>/metas/<stem>.txt                  the instructions, one a line, in the order of the embeddings
    <out>/motus_latent_action.yaml          the config values Motus must sample these videos with
    <out>/cached_episodes.v2.pkl            Motus's scan of this folder (its first run would otherwise see no episode);
                                            absolute paths: `pyramid rescan-motus` rewrites it after the folder moves

Motus (`data/latent_action/latent_action_dataset.py`) takes a stem only when all four folders hold it,
and samples a condition frame plus `num_video_frames` frames `global_downsample_rate` frames apart,
clamping past the end. So one item is one episode's run of consecutive kept clips (stem: the episode
id, or `<id>_c<first clip>` when a static clip splits the episode), and a run shorter than
1 + num_video_frames * rate frames is left out instead of being sampled with repeated frames.
Motus's model (`models/motus.py`) takes 1 + num_video_frames // 4 latent frames of height // 32 x width // 32,
so an export refuses a frame count or video size it could not use whole.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from pyramid.build_reader import (build_recipe, build_samples, build_shards, episodes_of, pair_latents, run_frames,
                                  run_video, runs_with_latents)
from pyramid.errors import EpisodeError, ExportError, one_line
from pyramid.paths import check_export_target, output_child, safe_name
from pyramid.atomic import atomic_directory, atomic_write_bytes
from pyramid.staging import mp4_bytes
from pyramid.sinks.left_out import LeftOut

FOLDERS = ("videos", "latent_action_dim14", "umt5_wan", "metas")
CONFIG_NAME = "motus_latent_action.yaml"
MOTUS_CACHE = "cached_episodes.v2.pkl"  # Motus caches its scan here, and reads only the cache once there is one
MOTUS_FRAME_SPACING_S = 0.2  # Motus samples its 30 fps pretraining video every 6th frame
WAN_TEXT_LEN = 512
WAN_FRAMES_PER_LATENT = 4  # Wan2.2's VAE encodes the condition frame, then groups of 4 frames; it drops a remainder
WAN_PIXELS_PER_TOKEN = 32  # its VAE downsamples 16x (sides not divisible fail) and the transformer patches 2x2
ENCODER_HINT = ("pass --text-encoder PATH: a local Wan2.2 diffusers directory (text_encoder/ and tokenizer/, the UMT5 "
                "encoder) or a UMT5 directory; Motus's latent_action dataset skips every episode without umt5_wan/<stem>.pt")


@dataclass
class Sampling:
    """What Motus must be configured with to read an export: frames per sample and the spacing between them."""

    global_downsample_rate: int
    num_video_frames: int = 8

    @property
    def min_frames(self) -> int:
        return 1 + self.num_video_frames * self.global_downsample_rate

    @classmethod
    def for_fps(cls, fps: float, rate: int | None = None, num_video_frames: int = 8) -> "Sampling":
        """The given rate, else the one that spaces frames 0.2 s apart at `fps`, as Motus's own defaults do at 30 fps."""
        return cls(rate or max(1, round(fps * MOTUS_FRAME_SPACING_S)), num_video_frames)


@dataclass
class ExportCounts:
    episodes: int = 0
    clips: int = 0
    skipped: LeftOut = field(default_factory=LeftOut)


def export_motus(build_dir: Path, out_dir: Path, text_encoder: Path | None, *, downsample_rate: int | None = None,
                 num_video_frames: int = 8, device: str = "cpu", overwrite: bool = False, progress: bool = True) -> ExportCounts:
    build_dir, out_dir = Path(build_dir), Path(out_dir)
    shards = build_shards(build_dir)
    check_export_target(build_dir, out_dir, overwrite, CONFIG_NAME)
    device = _device(device)
    if text_encoder is None:
        raise ExportError(f"export-motus needs the text encoder: {ENCODER_HINT}")
    recipe = build_recipe(build_dir)
    if int(recipe["flow"]["stride"]) != 1:
        raise ExportError(f"{build_dir}: flow stride is {recipe['flow']['stride']}; Motus wants the latent action of "
                          f"each pair of consecutive frames: build with flow stride 1")
    check_model_shape(build_dir, num_video_frames, tuple(recipe["video_size"]))
    sampling = Sampling.for_fps(float(recipe["fps"]), downsample_rate, num_video_frames)
    latents = pair_latents(build_dir, recipe)
    if latents == {}:
        raise ExportError(f"{build_dir}: the build has no latent actions (its recipe names no `vae`); "
                          f"Motus's latent_action dataset needs them: build with a trained VAE")
    encoder = InstructionEncoder(Path(text_encoder), device)
    counts = ExportCounts()
    # Written whole under a temporary name, then renamed over OUT (an earlier export, which stays until then): a run
    # killed midway leaves OUT as it was, and none of an earlier export's episodes stays beside these.
    with atomic_directory(out_dir) as partial:
        for folder in FOLDERS:
            (partial / folder).mkdir()
        for episode_id, clips in tqdm(episodes_of(build_samples(shards)), desc="export", unit="episode", disable=not progress):
            for run, values in runs_with_latents(episode_id, clips, latents):
                _export_run(partial, episode_id, run, len(clips) == len(run), values, encoder, sampling, float(recipe["fps"]), counts)
        if not counts.episodes:  # Motus would train on nothing, and a script running it next would not notice
            raise ExportError(no_episode_exported(build_dir, counts.skipped, sampling))
        write_motus_scan(partial, out_dir)
        write_config(partial, sampling, tuple(recipe["video_size"]), out_dir)
    return counts


def no_episode_exported(build_dir: Path, skipped: LeftOut, sampling: Sampling) -> str:
    message = f"{build_dir}: no episode to export (left out: {skipped.describe() or 'none, the build has no clips'})"
    if skipped.get("too_short"):
        message += (f"; a sample of --num-video-frames {sampling.num_video_frames} frames {sampling.global_downsample_rate} "
                    f"apart needs runs of {sampling.min_frames} stored frames: lower --num-video-frames or --downsample-rate")
    return message


def check_model_shape(build_dir: Path, num_video_frames: int, video_size: tuple[int, int]) -> None:
    """Refuse what Motus's model cannot use whole: it sizes its latent grid as 1 + num_video_frames // 4 frames
    of height // 32 x width // 32 (models/motus.py), and its VAE fails on sides it cannot halve four times."""
    if num_video_frames <= 0 or num_video_frames % WAN_FRAMES_PER_LATENT:
        raise ExportError(f"--num-video-frames {num_video_frames}: Motus needs a positive multiple of {WAN_FRAMES_PER_LATENT} "
                          f"(its Wan2.2 VAE encodes the frames after the condition frame in groups of 4 and drops the rest)")
    if any(side % WAN_PIXELS_PER_TOKEN for side in video_size):
        raise ExportError(f"{build_dir}: the build's video_size is {video_size[0]}x{video_size[1]}; Motus's video_height and "
                          f"video_width must be multiples of {WAN_PIXELS_PER_TOKEN}: build with a video_size such as 384x320")


def write_motus_scan(out_dir: Path, lies_at: Path | None = None) -> int:
    """Motus's episode cache, as its scan of this folder writes it: its loader (QuanyiLi/Motus) caches a fresh
    scan without adding it to the episodes it returns, so without this file its first run after an export would
    train on nothing from it. Written last, over a cache of an earlier export; the files are named under `lies_at`,
    where `out_dir` will lie (default: where it lies). Returns the number of episodes."""
    import pickle

    root = Path(lies_at or out_dir).resolve()
    stems = set.intersection(*({path.stem for path in (out_dir / folder).iterdir() if path.suffix == suffix}
                               for folder, suffix in zip(FOLDERS, (".mp4", ".pt", ".pt", ".txt"))))
    episodes = [{"video_path": str(root / "videos" / f"{stem}.mp4"), "lang_path": str(root / "umt5_wan" / f"{stem}.pt"),
                 "latent_action_path": str(root / "latent_action_dim14" / f"{stem}.pt"),
                 "text_path": str(root / "metas" / f"{stem}.txt"), "root": str(root), "episode_name": stem}
                for stem in sorted(stems)]
    atomic_write_bytes(out_dir / MOTUS_CACHE, pickle.dumps(episodes))
    return len(episodes)


def rescan_export(out_dir: Path) -> int:
    """Point a moved or copied export at where it lies now: Motus trusts its cache and never scans again, so
    the cache (and the config's dataset_dir) must name this folder. Returns the number of episodes cached."""
    out_dir = Path(out_dir)
    missing = [folder for folder in FOLDERS if not (out_dir / folder).is_dir()]
    if missing:
        raise ExportError(f"{out_dir}: not a Motus export (no {', '.join(f'{folder}/' for folder in missing)})")
    if not (out_dir / CONFIG_NAME).is_file():  # written last: a folder without it is no whole export
        raise ExportError(f"{out_dir}: no {CONFIG_NAME}, so not a whole export (one killed midway, or copied in part): "
                          "export the build again")
    config = read_config(out_dir)  # unreadable: fail before writing
    count = write_motus_scan(out_dir)
    write_config(out_dir, *config)
    return count


def read_config(out_dir: Path) -> tuple[Sampling, tuple[int, int]]:
    """The sampling and video size that `write_config` wrote."""
    path = out_dir / CONFIG_NAME
    try:
        common = yaml.safe_load(path.read_text())["common"]
        return (Sampling(int(common["global_downsample_rate"]), int(common["num_video_frames"])),
                (int(common["video_height"]), int(common["video_width"])))
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{path}: unreadable ({exc.__class__.__name__}: {one_line(exc)}); export the build again") from None


def _device(name: str) -> str:
    from latent_action.train import resolve_device

    try:
        return str(resolve_device(name))
    except ValueError as exc:
        raise ExportError(f"--device: {exc}") from None


class InstructionEncoder:
    """Wan's UMT5 text encoder, each distinct instruction encoded once."""

    def __init__(self, path: Path, device: str):
        from recipes.motus.encoders import Umt5TextEmbedder

        if not path.is_dir():
            raise ExportError(f"{path}: --text-encoder is not a directory; {ENCODER_HINT}")
        try:
            self.embedder = Umt5TextEmbedder(path, WAN_TEXT_LEN, device)
        except (OSError, ValueError) as exc:
            raise ExportError(f"{path}: cannot load a UMT5 text encoder ({one_line(exc, 200)}); {ENCODER_HINT}") from exc
        self.cache: dict[str, object] = {}

    def __call__(self, texts: list[str]) -> list:
        missing = [text for text in texts if text not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.embedder.sequences(missing)))
        return [self.cache[text] for text in texts]


def _export_run(out_dir: Path, episode_id: str, run: list[dict], whole: bool, values: np.ndarray | None,
                encoder: InstructionEncoder, sampling: Sampling, fps: float, counts: ExportCounts) -> None:
    first = run[0]["meta"]
    try:
        stem = safe_name(episode_id if whole else f"{episode_id}_c{first['clip_index']:04d}", "episode id")
    except ValueError as exc:
        tqdm.write(f"warning: {run[0].get('__url__', '')}: episode skipped: {exc}", file=sys.stderr)
        return counts.skipped.add("unsafe_id")
    num_frames = run_frames(run)
    texts = instructions(first)
    if float(first["fps"]) != fps:
        return counts.skipped.add("stored_below_recipe_fps")
    if num_frames < sampling.min_frames:
        return counts.skipped.add("too_short")
    if not texts:
        return counts.skipped.add("no_instruction")
    if values is None:
        return counts.skipped.add("missing_latent_actions")
    try:
        video = mp4_bytes(run_video(run), fps)
    except EpisodeError as exc:  # a damaged clip in a shard: this run is left out, nothing of it written
        tqdm.write(f"warning: episode left out: {exc}", file=sys.stderr)  # beside the progress bar, not inside it
        return counts.skipped.add("unreadable")
    atomic_write_bytes(output_child(out_dir, "videos", f"{stem}.mp4"), video)
    atomic_write_bytes(output_child(out_dir, "latent_action_dim14", f"{stem}.pt"), torch_bytes(values))
    embeddings = encoder(texts)
    atomic_write_bytes(output_child(out_dir, "umt5_wan", f"{stem}.pt"), torch_bytes(embeddings[0] if len(texts) == 1 else embeddings))
    atomic_write_bytes(output_child(out_dir, "metas", f"{stem}.txt"), ("\n".join(texts) + "\n").encode())
    counts.episodes += 1
    counts.clips += len(run)


def instructions(meta: dict) -> list[str]:
    """The episode's instructions, one line each (Motus reads metas line by line), without repeats."""
    texts = [" ".join(str(text).split()) for text in (meta.get("instructions") or [meta.get("task") or ""])]
    return list(dict.fromkeys(text for text in texts if text))


def torch_bytes(value) -> bytes:
    """torch.save bytes of a tensor (or list of tensors) that `torch.load(weights_only=True)` reads back."""
    import torch

    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.array(value, dtype=np.float32))  # a copy: a view would save its whole base array
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def write_config(out_dir: Path, sampling: Sampling, video_size: tuple[int, int], lies_at: Path | None = None) -> Path:
    """The config snippet, its `dataset_dir` where `out_dir` will lie (`lies_at`; default: where it lies)."""
    config = {"common": {"num_video_frames": sampling.num_video_frames,
                         "global_downsample_rate": sampling.global_downsample_rate,
                         "video_height": int(video_size[0]), "video_width": int(video_size[1])},
              "dataset": {"type": "latent_action", "dataset_dir": [str(Path(lies_at or out_dir).resolve())]}}
    header = ("# Written by `pyramid export-motus`: merge into a Motus config (configs/latent_action.yaml).\n"
              f"# Every video here has at least 1 + num_video_frames * global_downsample_rate = {sampling.min_frames} "
              "frames, so this sampling never repeats a frame.\n")
    path = out_dir / CONFIG_NAME
    atomic_write_bytes(path, (header + yaml.safe_dump(config, sort_keys=False)).encode())
    return path
