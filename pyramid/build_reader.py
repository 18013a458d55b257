"""Reading a finished build for export: its recipe, its clip samples grouped by episode, runs of consecutive clips,
and the latent action of every stored-frame pair (from flow.lance, or each clip's own when no flow was stored)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from pyramid.errors import ExportError


def is_build(path: Path) -> bool:
    return (Path(path) / "manifest.json").is_file() and any(Path(path).glob("webdataset/level*/shard-*.tar"))


def build_recipe(build_dir: Path) -> dict:
    path = Path(build_dir) / "manifest.json"
    if not path.exists():
        raise ExportError(f"{path}: missing (is this a finished `pyramid build` output?)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise ExportError(f"{path}: unreadable ({exc.__class__.__name__}); the build is damaged: build it again") from None
    recipe = manifest.get("recipe") if isinstance(manifest, dict) else None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("flow"), dict):
        raise ExportError(f"{path}: not a build manifest (no recipe in it); export a finished `pyramid build` output")
    return recipe


def build_shards(build_dir: Path) -> list[Path]:
    shards = sorted(Path(build_dir).glob("webdataset/level*/shard-*.tar"))
    if not shards:
        raise ExportError(f"{build_dir}: no WebDataset shards (is this a finished `pyramid build` output?)")
    return shards


def build_samples(shards: list[Path]) -> Iterator[dict]:
    import webdataset as wds

    for shard in shards:
        yield from wds.WebDataset(str(shard), shardshuffle=False, empty_check=False)


def episodes_of(samples: Iterator[dict]) -> Iterator[tuple[str, list[dict]]]:
    """(episode id, its clip samples with parsed json as `meta`), for samples grouped by episode, as shards hold them."""
    current_id, clips = None, []
    for sample in samples:
        sample = {**sample, "meta": json.loads(sample["json"])}
        episode_id = sample["meta"]["episode_id"]
        if clips and episode_id != current_id:
            yield current_id, clips
            clips = []
        current_id = episode_id
        clips.append(sample)
    if clips:
        yield current_id, clips


def consecutive_runs(clips: list[dict]) -> list[list[dict]]:
    """The episode's clips split where a static clip was left out: within a run, stored frames follow on."""
    clips = sorted(clips, key=lambda sample: sample["meta"]["clip_index"])
    runs: list[list[dict]] = []
    for clip in clips:
        if runs and clip["meta"]["clip_index"] == runs[-1][-1]["meta"]["clip_index"] + 1:
            runs[-1].append(clip)
        else:
            runs.append([clip])
    return runs


def pair_latents(build_dir: Path) -> dict[str, np.ndarray] | None:
    """episode id -> float32 [pairs, 14] latent action per stored-frame pair (NaN where a pair has none), from
    flow.lance; {} when the build is unlabelled; None when it is labelled but stored no flow (`flow.store: false`):
    then only each clip's own latent_actions.npy holds them, and the pair across two clips is known to no file."""
    import lance
    import pyarrow.compute as pc

    path = Path(build_dir) / "flow.lance"
    if not path.exists():
        recipe = build_recipe(build_dir)
        if recipe["flow"].get("store", True):
            raise ExportError(f"{path}: missing (is this a finished `pyramid build` output?)")
        return None if recipe.get("vae") else {}
    dataset = lance.dataset(str(path))
    if "latent_action" not in dataset.schema.names:
        raise ExportError(f"{path}: written before flow rows carried latent actions; build again")
    table = dataset.to_table(columns=["episode_id", "pair_index", "latent_action"], filter="latent_action IS NOT NULL")
    if not table.num_rows:
        return {}
    ids = table["episode_id"].to_numpy(zero_copy_only=False)
    pairs = table["pair_index"].to_numpy()
    values = pc.list_flatten(table["latent_action"]).to_numpy().astype(np.float32).reshape(table.num_rows, -1)
    latents = {}
    for episode_id in np.unique(ids):
        rows = ids == episode_id
        array = np.full((pairs[rows].max() + 1, values.shape[1]), np.nan, np.float32)
        array[pairs[rows]] = values[rows]
        latents[str(episode_id)] = array
    return latents


def runs_with_latents(episode_id: str, clips: list[dict],
                      latents: dict[str, np.ndarray] | None) -> Iterator[tuple[list[dict], np.ndarray | None]]:
    """(run of consecutive clips, float32 [T - 1, 14] latent action of each of its frame pairs, or None when the build
    is unlabelled or a pair lacks one). Without flow.lance (`latents` None) each clip is its own run, labelled by
    its own latent_actions.npy: the pair from one clip's last frame to the next clip's first is in no clip."""
    if latents is None:
        for clip in sorted(clips, key=lambda sample: sample["meta"]["clip_index"]):
            yield [clip], _clip_latents(clip)
        return
    for run in consecutive_runs(clips):
        yield run, run_latents(latents, episode_id, run) if latents else None


def _clip_latents(clip: dict) -> np.ndarray | None:
    from pyramid.schema import npy_array

    if "latent_actions.npy" not in clip:
        return None
    values = npy_array(clip["latent_actions.npy"]).astype(np.float32)
    return values if len(values) == clip["meta"]["num_frames"] - 1 and np.isfinite(values).all() else None


def run_latents(latents: dict[str, np.ndarray], episode_id: str, run: list[dict]) -> np.ndarray | None:
    """float32 [T - 1, 14]: the latent action of each consecutive frame pair of a run, or None if any is missing."""
    start, num_frames = int(run[0]["meta"]["flow"]["pair_range"][0]), run_frames(run)
    values = latents.get(episode_id, np.zeros((0, 14), np.float32))[start : start + num_frames - 1]
    return values if len(values) == num_frames - 1 and np.isfinite(values).all() else None


def run_frames(run: list[dict]) -> int:
    return sum(clip["meta"]["num_frames"] for clip in run)


def decode_mp4(data: bytes) -> np.ndarray:
    from pyramid.video_io import read_frames

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        path.write_bytes(data)
        return read_frames(path)


def run_video(run: list[dict], limit: int | None = None):
    """The run's frames (its first `limit`), decoded clip by clip while an encoder takes them (`FrameChunks`)."""
    from pyramid.video_io import FrameChunks

    total, meta = run_frames(run), run[0]["meta"]
    return FrameChunks(total if limit is None else min(limit, total), (int(meta["height"]), int(meta["width"]), 3),
                       lambda: (decode_mp4(clip["mp4"]) for clip in run))
