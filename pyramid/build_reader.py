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


def pair_latents(build_dir: Path, recipe: dict) -> "PairLatents | dict | None":
    """The build's latent action of each stored-frame pair (`recipe`: its `build_recipe`): `PairLatents` (from
    flow.lance); {} when the build is unlabelled; None when it is labelled but stored no flow (`flow.store: false`):
    then only each clip's own latent_actions.npy holds them, and the pair across two clips is known to no file."""
    import lance

    path = Path(build_dir) / "flow.lance"
    if not path.exists():
        if recipe["flow"].get("store", True):
            raise ExportError(f"{path}: missing (is this a finished `pyramid build` output?)")
        return None if recipe.get("vae") else {}
    if not recipe.get("vae"):
        return {}
    if "latent_action" not in lance.dataset(str(path)).schema.names:
        raise ExportError(f"{path}: written before flow rows carried latent actions; build again")
    return PairLatents(path)


LOOKAHEAD_EPISODES = 64


class PairLatents:
    """The latent actions of a labelled build's flow.lance, one episode at a time. Exports ask for episodes in the
    shards' order (level by level, each in discovery order) and finalize wrote flow.lance in discovery order, so one
    ordered scan of each level's rows meets the episodes in turn: a build's latents are never all in memory. An
    episode the scan does not meet within `LOOKAHEAD_EPISODES` (a shard damaged or edited) has none; the episodes
    read past on the way wait for their turn."""

    def __init__(self, path: Path):
        import lance

        self.path, self.dataset = Path(path), lance.dataset(str(path))
        self.level: int | None = None
        self.scan: Iterator[tuple[str, np.ndarray]] = iter(())
        self.ahead: dict[str, np.ndarray] = {}  # read from the scan, not yet asked for

    def episode(self, episode_id: str, level: int) -> np.ndarray | None:
        """float32 [pairs, 14], NaN where a pair has no latent action; None where flow.lance has none for it."""
        if level != self.level:
            self.level, self.scan, self.ahead = level, self._episodes_of_level(level), {}
        for _ in range(LOOKAHEAD_EPISODES):
            if episode_id in self.ahead:
                break
            found = next(self.scan, None)
            if found is None:
                break
            self.ahead[found[0]] = found[1]
            if len(self.ahead) > LOOKAHEAD_EPISODES:
                self.ahead.pop(next(iter(self.ahead)))  # the longest waiting, passed over by the shards
        return self.ahead.pop(episode_id, None)

    def _episodes_of_level(self, level: int) -> Iterator[tuple[str, np.ndarray]]:
        import pyarrow.compute as pc

        current, parts = None, []
        for batch in self.dataset.to_batches(columns=["episode_id", "pair_index", "latent_action"], scan_in_order=True,
                                             filter=f"level = {int(level)} AND latent_action IS NOT NULL"):
            if not batch.num_rows:
                continue
            ids = batch.column("episode_id").to_numpy(zero_copy_only=False)
            pairs = batch.column("pair_index").to_numpy()
            values = pc.list_flatten(batch.column("latent_action")).to_numpy().astype(np.float32).reshape(batch.num_rows, -1)
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            for lo, hi in zip(starts, np.r_[starts[1:], len(ids)]):
                if ids[lo] != current:
                    if current is not None:
                        yield str(current), _by_pair(parts)
                    current, parts = ids[lo], []
                parts.append((pairs[lo:hi], values[lo:hi]))
        if current is not None:
            yield str(current), _by_pair(parts)


def _by_pair(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    pairs = np.concatenate([p for p, _ in parts])
    values = np.concatenate([v for _, v in parts])
    array = np.full((pairs.max() + 1, values.shape[1]), np.nan, np.float32)
    array[pairs] = values
    return array


def runs_with_latents(episode_id: str, clips: list[dict],
                      latents: PairLatents | dict | None) -> Iterator[tuple[list[dict], np.ndarray | None]]:
    """(run of consecutive clips, float32 [T - 1, 14] latent action of each of its frame pairs, or None when the build
    is unlabelled or a pair lacks one). Without flow.lance (`latents` None) each clip is its own run, labelled by
    its own latent_actions.npy: the pair from one clip's last frame to the next clip's first is in no clip."""
    if latents is None:
        for clip in sorted(clips, key=lambda sample: sample["meta"]["clip_index"]):
            yield [clip], _clip_latents(clip)
        return
    episode = latents.episode(episode_id, int(clips[0]["meta"]["level"])) if latents else None
    for run in consecutive_runs(clips):
        yield run, None if episode is None else run_latents(episode, run)


def _clip_latents(clip: dict) -> np.ndarray | None:
    from pyramid.schema import npy_array

    if "latent_actions.npy" not in clip:
        return None
    values = npy_array(clip["latent_actions.npy"]).astype(np.float32)
    return values if len(values) == clip["meta"]["num_frames"] - 1 and np.isfinite(values).all() else None


def run_latents(episode: np.ndarray, run: list[dict]) -> np.ndarray | None:
    """float32 [T - 1, 14]: the latent action of each consecutive frame pair of a run (from its episode's), or None if
    any is missing."""
    start, num_frames = int(run[0]["meta"]["flow"]["pair_range"][0]), run_frames(run)
    values = episode[start : start + num_frames - 1]
    return values if len(values) == num_frames - 1 and np.isfinite(values).all() else None


def run_frames(run: list[dict]) -> int:
    return sum(clip["meta"]["num_frames"] for clip in run)


def decode_mp4(data: bytes) -> np.ndarray:
    from pyramid.video_io import read_frames

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        path.write_bytes(data)
        return read_frames(path)


def decode_clip(clip: dict) -> np.ndarray:
    """A shard sample's video; a damaged one is an EpisodeError naming the shard and the clip."""
    from pyramid.errors import EpisodeError

    try:
        return decode_mp4(clip["mp4"])
    except EpisodeError as exc:
        raise EpisodeError(f"{clip.get('__url__', 'shard')}:{clip['__key__']}.mp4", exc.problem) from None


def run_video(run: list[dict], limit: int | None = None):
    """The run's frames (its first `limit`), decoded clip by clip while an encoder takes them (`FrameChunks`)."""
    from pyramid.video_io import FrameChunks

    total, meta = run_frames(run), run[0]["meta"]
    return FrameChunks(total if limit is None else min(limit, total), (int(meta["height"]), int(meta["width"]), 3),
                       lambda: (decode_clip(clip) for clip in run))
