"""Training examples from a build: a condition frame, the frames after it at 5 Hz, the action chunk at 30 Hz.

Pipeline per clip (see `ClipExamples.__getitem__`): choose a window that starts in the clip (and may run on into the
next clip of its episode), decode just its frames from the clips' mp4s, resample actions (or latent actions) to the
action rate over the same time span,
normalise them with the manifest's q01/q99, pad to the model's width. Every random choice comes
from a generator seeded by the sample's global position, so a resumed run sees the same examples.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from pyramid.clips import clip_source_frames
from pyramid.errors import EpisodeError
from pyramid.resize import resize_frames
from pyramid.stats import SHARED_ARRAYS
from pyramid.video_io import read_clip
from recipes.motus.config import DataConfig, FramesConfig, ModelConfig
from recipes.motus.shards import ClipRecord, open_clips


@dataclass(frozen=True)
class Window:
    # stored-frame indices from the clip's first frame: the condition frame, then the future frames (those from the
    # clip's length on are the next clip's)
    frame_indices: list[int]
    start_time: float  # the condition frame in stored-frame time (its index / fps): where its latent actions start


def example_rng(seed: int, position: int) -> random.Random:
    """The generator of every random choice for the sample at a global stream position."""
    return random.Random(seed * 1_000_003 + position)


def window_frames(fps: float, frames: FramesConfig) -> list[int]:
    """Offsets, in stored frames, of the condition frame and the future frames at `frames.video_fps`."""
    return [round(k * fps / frames.video_fps) for k in range(frames.future_frames + 1)]


def choose_window(num_frames: int, fps: float, frames: FramesConfig, rng: random.Random, frames_after: int = 0) -> Window | None:
    """A window whose condition frame is one of the clip's `num_frames`, ending within them or within the
    `frames_after` frames of the clip that continues it."""
    offsets = window_frames(fps, frames)
    last_start = min(num_frames - 1, num_frames + frames_after - 1 - offsets[-1])
    if last_start < 0:
        return None
    start = rng.randint(0, last_start)
    return Window([start + o for o in offsets], start / fps)


def following_clips(metas: list[dict]) -> dict[int, int]:
    """For each clip, the index of the clip of its episode that follows it without a gap (none where the build left a
    static clip out between them), so that a window may run from one into the next, as Motus's loaders draw a window
    anywhere in an episode; with windows inside clips, the frames of each clip's second half never start one."""
    where = {(meta["episode_id"], int(meta["clip_index"])): index for index, meta in enumerate(metas)}
    following = {}
    for index, meta in enumerate(metas):
        after = where.get((meta["episode_id"], int(meta["clip_index"]) + 1))
        if after is not None and _continues(meta, metas[after]):
            following[index] = after
    return following


def _continues(meta: dict, after: dict) -> bool:
    """Stored frames are picked from the episode's source frames by one rule, so clips whose source spans meet hold
    consecutive stored frames."""
    return after["start_frame"] == meta["end_frame"] and after["fps"] == meta["fps"]


def resample_linear(values: np.ndarray, rate: float, times: np.ndarray) -> np.ndarray:
    """Rows sampled at `rate` Hz from t = 0, linearly interpolated at `times` (held at the ends)."""
    return _interpolated(values, rate, times).astype(np.float32)


def resample_moves(values: np.ndarray, rate: float, times: np.ndarray, step: float) -> np.ndarray:
    """Per-step moves (row k moves from k / rate to (k + 1) / rate) as the moves over [t, t + step) for t in `times`,
    in units of one row's step, so that they scale as the rows do (and normalise with their statistics): the path the
    rows trace is interpolated linearly (held past its ends). A move over `step` is the value times `step * rate`;
    interpolating the moves themselves would give each step a whole row's move (at 10 Hz, 30 Hz steps that sum to
    three times the motion)."""
    path = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0, dtype=np.float64)])
    moves = _interpolated(path, rate, times + step) - _interpolated(path, rate, times)
    return (moves / (step * rate)).astype(np.float32)


def _interpolated(values: np.ndarray, rate: float, times: np.ndarray) -> np.ndarray:
    position = np.clip(times * rate, 0, len(values) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(values) - 1)
    weight = (position - low)[:, None]
    return (1 - weight) * values[low] + weight * values[high]


def resample_hold(values: np.ndarray, rate: float, times: np.ndarray) -> np.ndarray:
    """Per-interval values (latent action k covers [k, k+1) / rate) looked up at `times`: no blending."""
    index = np.clip(np.floor(times * rate + 1e-6).astype(int), 0, len(values) - 1)
    return values[index].astype(np.float32)


class Normalizer:
    """Maps each dimension's [q01, q99] of the build's manifest to [-1, 1]: actions and state per embodiment, latent
    actions (one space for every embodiment) over the whole build."""

    def __init__(self, manifest_path: str | Path):
        self.path = Path(manifest_path)
        try:
            manifest = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError and UnicodeDecodeError
            raise EpisodeError(self.path, f"cannot read the build manifest ({exc.__class__.__name__}: {exc})") from exc
        if not isinstance(manifest, dict):
            raise EpisodeError(self.path, "not a build manifest (not a JSON object)")
        self.stats, self.shared = manifest.get("normalization", {}), manifest.get("shared_normalization")
        self.flow_stride = int(((manifest.get("recipe") or {}).get("flow") or {}).get("stride", 1))

    def bounds(self, embodiment: str, name: str, dims: int) -> tuple[np.ndarray, np.ndarray]:
        """q01, q99 of the `dims`-wide `name` arrays of `embodiment`: a build keeps a second width of the same array
        under one embodiment (two datasets naming one robot differently) as `<name>@<dims>d`."""
        if name in SHARED_ARRAYS:
            if self.shared is None:
                raise EpisodeError(self.path, f"no shared_normalization (a build older than {name} normalised over "
                                              f"every embodiment): run the build again to rewrite its manifest")
            entry = self.shared.get(name)
        else:
            arrays = self.stats.get(embodiment, {})
            entry = next((e for e in (arrays.get(name), arrays.get(f"{name}@{dims}d")) if e and len(e.get("q01", [])) == dims), None)
        if entry is None or "q99" not in entry or len(entry.get("q01", [])) != dims:
            raise EpisodeError(self.path, f"no q01/q99 normalisation statistics for {embodiment} {name} with {dims} dims")
        return np.asarray(entry["q01"], np.float32), np.asarray(entry["q99"], np.float32)

    def normalize(self, values: np.ndarray, embodiment: str, name: str) -> np.ndarray:
        low, high = self.bounds(embodiment, name, values.shape[-1])
        span = np.where(high - low > 1e-8, high - low, 1.0)  # a constant dimension maps to -1, not to inf
        return (2 * (values - low) / span - 1).astype(np.float32)

    def denormalize(self, values: np.ndarray, embodiment: str, name: str) -> np.ndarray:
        """`values` holds the real dimensions only (the model's padding cut off)."""
        low, high = self.bounds(embodiment, name, values.shape[-1])
        span = np.where(high - low > 1e-8, high - low, 1.0)
        return ((values + 1) / 2 * span + low).astype(np.float32)


def model_frames(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """A build's frames at the model's size, aspect ratio kept (padded, as a build and Motus's loaders fit frames)."""
    return torch.from_numpy(np.ascontiguousarray(resize_frames(frames, (height, width), fit="pad")))


class ClipExamples(torch.utils.data.Dataset):
    """Examples from the clips of one build that have a long enough window and the targets the stage needs."""

    def __init__(self, data: DataConfig, model: ModelConfig, seed: int = 0):
        self.clips = open_clips(data.format, data.root, data.levels)
        self.frames, self.targets, self.seed = model.frames, data.targets, seed
        self.displacement_actions = set(data.displacement_actions)
        self.state_dim, self.action_dim = model.action.state_dim, model.action.action_dim
        self.normalizer = Normalizer(Path(data.root) / "manifest.json") if data.targets != "none" else None
        if data.targets == "latent_actions" and self.normalizer.flow_stride != 1:
            # row j is the pair (j, j + stride): held over [j, j + 1) it would say each pair moves one frame
            raise EpisodeError(self.normalizer.path, f"the build's flow.stride is {self.normalizer.flow_stride}: its latent "
                                                     "actions pair frames that far apart, and training takes those of "
                                                     "consecutive frames (build with flow.stride 1)")
        self.skipped: Counter[str] = Counter()
        metas = self.clips.metadata()
        held = sorted({meta["embodiment"] for meta in metas})
        if unknown := sorted(self.displacement_actions - set(held)):
            raise EpisodeError(data.root, f"data.displacement_actions names {', '.join(unknown)}, which the build does not "
                                          f"hold (its embodiments: {', '.join(held)})")
        # A latent action exists only for pairs within a clip (the pair across two clips is in flow.lance alone), so
        # latent-action windows stay inside their clip.
        self.following = following_clips(metas) if data.targets != "latent_actions" else {}
        self.usable = [i for i, meta in enumerate(metas) if self._usable(meta, data.embodiments, self._frames_after(i))]
        if not self.usable:
            raise EpisodeError(data.root, f"no usable clips ({dict(self.skipped)})")

    def _usable(self, meta: dict, embodiments: list[str] | None, frames_after: int) -> bool:
        reason = None
        if embodiments is not None and meta["embodiment"] not in embodiments:
            reason = "other embodiment"
        elif meta["fps"] < self.frames.video_fps - 1e-6:  # a window would repeat stored frames to make up the rate
            reason = f"stored below the model's {self.frames.video_fps:g} fps"
        elif window_frames(meta["fps"], self.frames)[-1] >= meta["num_frames"] + frames_after:
            reason = "shorter than one window"
        elif self.targets == "actions" and not meta.get("has_actions"):
            reason = "no actions"
        elif self.targets == "latent_actions" and not meta.get("has_latent_actions"):
            reason = "no latent actions"
        if reason:
            self.skipped[reason] += 1
        return reason is None

    def __len__(self) -> int:
        return len(self.usable)

    def _frames_after(self, clip: int) -> int:
        """How many frames of the clip that continues `clip` a window may run into (0 where none does)."""
        after = self.following.get(clip)
        return 0 if after is None else self.clips.metadata()[after]["num_frames"]

    def window(self, item: tuple[int, int]) -> tuple[Window, random.Random]:
        """The window of the example at `item` (clip index, stream position), and the generator of its other choices."""
        index, position = item
        rng = example_rng(self.seed, position)
        clip = self.usable[index]
        meta = self.clips.metadata()[clip]
        return choose_window(meta["num_frames"], meta["fps"], self.frames, rng, self._frames_after(clip)), rng

    def __getitem__(self, item: tuple[int, int]) -> dict:
        window, rng = self.window(item)
        record = self.clips[self.usable[item[0]]]
        meta = record.meta
        after = self._continuation(item[0], window)
        frames = _window_frames(record, after, window)
        example = {
            "key": record.key,
            "embodiment": meta["embodiment"],
            "instruction": rng.choice(meta.get("instructions") or [meta.get("task") or ""]),
            "frames": model_frames(frames, self.frames.height, self.frames.width),
        }
        if self.targets != "none":
            example.update(self._targets(record, after, window))
        return example

    def moves_per_step(self, actions: np.ndarray, index: int) -> np.ndarray:
        """Denormalised actions of usable clip `index` as moves per step of the model's action rate where its
        embodiment's actions are moves (they are trained in units of a source row's step: `resample_moves`)."""
        meta = self.clips.metadata()[self.usable[index]]
        if meta["embodiment"] not in self.displacement_actions:
            return actions
        return (actions * (meta["action_fps"] / self.frames.action_fps)).astype(np.float32)

    def _continuation(self, index: int, window: Window) -> ClipRecord | None:
        """The next clip of the episode where the window runs into it."""
        clip = self.usable[index]
        if window.frame_indices[-1] < self.clips.metadata()[clip]["num_frames"]:
            return None
        return self.clips[self.following[clip]]

    def _targets(self, record: ClipRecord, after: ClipRecord | None, window: Window) -> dict:
        meta, chunk = record.meta, self.frames.action_chunk
        name = self.targets
        for clip in (record, after):
            if clip is not None and name not in clip.arrays:
                raise EpisodeError(clip.origin, f"json says has_{name} but {name}.npy is missing")
        # actions run at the source rate from the condition frame's own source frame; latent actions run per
        # stored-frame pair from the condition frame
        source_start = clip_source_frames(meta)[window.frame_indices[0]] / meta["action_fps"]
        steps = np.arange(chunk) / self.frames.action_fps
        if name == "actions":
            # the next clip's rows follow on from this clip's: both are source rows of one episode, without a gap
            actions = record.arrays["actions"] if after is None else np.concatenate([record.arrays["actions"], after.arrays["actions"]])
            if meta["embodiment"] in self.displacement_actions:
                values = resample_moves(actions, meta["action_fps"], source_start + steps, 1 / self.frames.action_fps)
            else:
                values = resample_linear(actions, meta["action_fps"], source_start + steps)
        else:
            values = resample_hold(record.arrays["latent_actions"], meta["fps"], window.start_time + steps)
        values = self.normalizer.normalize(values, meta["embodiment"], name)
        actions, action_mask = _pad(values, self.action_dim, record.origin, name)
        out = {"actions": torch.from_numpy(actions), "action_mask": torch.from_numpy(action_mask)}
        if name == "actions" and "state" in record.arrays:
            state = resample_linear(record.arrays["state"], meta["action_fps"], np.array([source_start]))[0]
            state = self.normalizer.normalize(state, meta["embodiment"], "state")
            out["state"] = torch.from_numpy(_pad(state[None], self.state_dim, record.origin, "state")[0][0])
        return out


def _window_frames(record: ClipRecord, after: ClipRecord | None, window: Window) -> np.ndarray:
    """The window's frames, decoded from the clip and, past its end, from the clip that continues it."""
    length = record.meta["num_frames"]
    inside = [i for i in window.frame_indices if i < length]
    frames = read_clip(record.mp4, inside, record.origin)
    if after is None:
        return frames
    beyond = read_clip(after.mp4, [i - length for i in window.frame_indices if i >= length], after.origin)
    return np.concatenate([frames, beyond])


def _pad(values: np.ndarray, width: int, origin: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    dims = values.shape[-1]
    if dims > width:
        raise EpisodeError(origin, f"{name} has {dims} dimensions, more than the model's {width}")
    padded = np.zeros(values.shape[:-1] + (width,), np.float32)
    padded[..., :dims] = values
    return padded, np.arange(width) < dims


class ResumableSampler(Sampler):
    """An endless, seeded stream of (clip index, global position), reshuffled each epoch.

    Rank r of w takes positions r, r + w, ...; starting at `start` (samples already consumed by all
    ranks) resumes the stream exactly where a checkpoint left it.
    """

    def __init__(self, num_clips: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        self.num_clips, self.seed, self.start, self.rank, self.world_size = num_clips, seed, start, rank, world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start + self.rank
        epoch, order = -1, None
        while True:
            if position // self.num_clips != epoch:
                epoch = position // self.num_clips
                order = torch.randperm(self.num_clips, generator=torch.Generator().manual_seed(self.seed + epoch))
            yield int(order[position % self.num_clips]), position
            position += self.world_size


def collate(examples: list[dict]) -> dict:
    batch = {"key": [e["key"] for e in examples], "embodiment": [e["embodiment"] for e in examples],
             "instruction": [e["instruction"] for e in examples],
             "frames": torch.stack([e["frames"] for e in examples])}
    for name in ("actions", "action_mask"):
        if name in examples[0]:
            batch[name] = torch.stack([e[name] for e in examples])
    if all("state" in e for e in examples):
        batch["state"] = torch.stack([e["state"] for e in examples])
    return batch


def make_loader(dataset: ClipExamples, batch_size: int, seed: int, start: int = 0, rank: int = 0,
                world_size: int = 1, num_workers: int = 0) -> DataLoader:
    sampler = ResumableSampler(len(dataset), seed, start, rank, world_size)
    # Lance (and CUDA) are not fork-safe: workers start fresh and reopen the dataset.
    context = "spawn" if num_workers > 0 else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      persistent_workers=num_workers > 0, multiprocessing_context=context)
