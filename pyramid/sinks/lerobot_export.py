"""`pyramid export-lerobot`: a build or a source dataset as a LeRobot v3.0 dataset (pyramid/lerobot_writer.py).

From a source: every camera (`observation.images.<camera>`) at the source rate, state and actions as
recorded. From a build: one episode per run of consecutive kept clips (per clip, in a labelled build that stored
no flow: the latent action across two clips is only in flow.lance), at the stored rate and size, the
stored view (`observation.images.<camera>`, or `observation.images.cam_concatenated` for a T-layout,
Motus's name); state at each stored frame, the action as the mean of the source actions a frame pair
spans; in a labelled build `latent_action` [14] per frame (the pair to the next frame, so each
episode's last stored frame, which starts no pair, is left out; a build with flow stride > 1 is exported without).

LeRobot holds one frame rate, robot and set of features per dataset: episodes that differ from the first
one written (another embodiment, frame rate, cameras, frame size, state or action names) are left out and counted by
what differs; `--embodiment` picks which robot to export, and `--size` fits every camera to one frame size. Frames
are decoded while they are encoded, `DECODE_CHUNK` at a time (a long episode at the source's size is never held
whole); an episode whose video breaks halfway is left out and named, and nothing of it is written.
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pyramid.build_reader import (build_recipe, build_samples, build_shards, episodes_of, is_build, pair_latents,
                                  run_frames, run_video, runs_with_latents)
from pyramid.clips import DECODE_CHUNK, clip_source_frames, pair_actions
from pyramid.errors import EpisodeError, ExportError, SourceError
from pyramid.lerobot_writer import NoEpisodes, RecordedEpisode, write_lerobot_v3
from pyramid.paths import check_export_target
from pyramid.resize import resize_frames
from pyramid.sinks.left_out import LeftOut
from pyramid.video_io import FrameChunks

LATENT_NAMES = [f"latent_{i}" for i in range(14)]
RATE_ROUNDING = 0.05  # the most a stored whole frame rate may differ from the recorded one, as a share of it


@dataclass
class Candidate:
    """An episode ready to write, with what must match across a LeRobot dataset."""

    episode: RecordedEpisode
    fps: int
    embodiment: str
    state_names: list[str]
    action_names: list[str]
    extras: dict[str, list[str]]

    def frame_sizes(self) -> dict[str, tuple[int, ...]]:
        return {key: tuple(frames.shape[1:]) for key, frames in self.episode.videos.items()}

    def mismatch(self, first: "Candidate") -> str | None:
        """What keeps this episode out of a LeRobot dataset that `first` started (a reason to count), or None."""
        differences = [
            ("other_embodiment", self.embodiment, first.embodiment),
            ("other_frame_rate", self.fps, first.fps),
            ("other_cameras", sorted(self.episode.videos), sorted(first.episode.videos)),
            ("other_frame_size", self.frame_sizes(), first.frame_sizes()),
            ("other_state_or_action", (self.state_names, self.action_names), (first.state_names, first.action_names)),
            ("other_features", self.extras, first.extras),
        ]
        return next((reason for reason, mine, theirs in differences if mine != theirs), None)


@dataclass
class LeRobotExport:
    episodes: int = 0
    frames: int = 0
    skipped: LeftOut = field(default_factory=LeftOut)
    notes: list[str] = field(default_factory=list)  # what the whole export left out, and why


def export_lerobot(input_path: Path, out_dir: Path, *, source: str | None = None, embodiment: str | None = None,
                   codec: str = "libsvtav1", overwrite: bool = False, size: tuple[int, int] | None = None,
                   fit: str = "pad") -> LeRobotExport:
    """`size` (height, width), when given, fits every camera of every episode to it (`pyramid.resize`'s `fit`)."""
    input_path, out_dir = Path(input_path), Path(out_dir)
    check_export_target(input_path, out_dir, overwrite, "meta/info.json")
    summary = LeRobotExport()
    if is_build(input_path):
        candidates = build_candidates(input_path, summary, size, fit)
    else:
        candidates = source_candidates(input_path, source, summary, size, fit)
    if embodiment is not None:
        candidates = _of_embodiment(candidates, embodiment, summary)
    first = next(candidates, None)
    if first is None:
        raise ExportError(f"{input_path}: no episode to export" + (f" of embodiment '{embodiment}'" if embodiment else ""))

    def matching() -> Iterator[RecordedEpisode]:
        for candidate in itertools.chain([first], candidates):
            if reason := candidate.mismatch(first):
                summary.skipped.add(reason)
                continue
            yield candidate.episode

    try:
        write_lerobot_v3(out_dir, matching(), fps=first.fps, robot_type=first.embodiment, state_names=first.state_names,
                         action_names=first.action_names, codec=codec, overwrite=overwrite, extra_features=first.extras,
                         on_unreadable=lambda exc: _left_out(exc, summary, "unreadable"))
    except NoEpisodes:
        raise ExportError(f"{input_path}: no episode to export: each one failed to decode") from None
    info = json.loads((out_dir / "meta" / "info.json").read_text())
    summary.episodes, summary.frames = info["total_episodes"], info["total_frames"]
    if "other_cameras" in summary.skipped:
        cameras = ", ".join(key.removeprefix("observation.images.") for key in sorted(first.episode.videos))
        summary.notes.append(f"a LeRobot dataset holds one set of cameras: the first episode's ({cameras}); export the "
                             "episodes with other cameras from a build or dataset of their own")
    if "other_frame_size" in summary.skipped:
        sizes = ", ".join(f"{key.removeprefix('observation.images.')} {'x'.join(map(str, shape[:2]))}"
                          for key, shape in sorted(first.frame_sizes().items()))
        summary.notes.append(f"a LeRobot dataset holds one frame size per camera: the first episode's ({sizes}); "
                             f"--size HEIGHTxWIDTH fits every episode to one")
    return summary


def _left_out(exc: EpisodeError, summary: LeRobotExport, reason: str) -> None:
    print(f"warning: episode left out: {exc}", file=sys.stderr)
    summary.skipped.add(reason)


def _of_embodiment(candidates: Iterator[Candidate], embodiment: str, summary: LeRobotExport) -> Iterator[Candidate]:
    for candidate in candidates:
        if candidate.embodiment == embodiment:
            yield candidate
        else:
            summary.skipped.add("other_embodiment")


def source_candidates(root: Path, kind: str | None, summary: LeRobotExport, size: tuple[int, int] | None = None,
                      fit: str = "pad") -> Iterator[Candidate]:
    """Every readable episode of a source dataset, every camera, at the source rate."""
    from pyramid.sources import open_source
    from pyramid.sources.base import DuplicateIds

    try:
        reader = open_source(root, kind)
    except SourceError as exc:
        raise ExportError(str(exc)) from exc
    duplicates = DuplicateIds()
    for ref in reader.discover():
        if problem := duplicates.problem(ref.episode_id, str(ref.path)):  # the same episode listed twice: once is enough
            _left_out(EpisodeError(ref.path, problem), summary, "duplicate")
            continue
        try:
            episode = reader.load(ref)
            videos = {f"observation.images.{name}": camera_frames(episode, name, size, fit) for name in episode.cameras}
        except EpisodeError as exc:
            _left_out(exc, summary, "unreadable")
            continue
        if (rate := whole_rate(episode.fps, summary)) is None:
            summary.skipped.add("non_integer_fps")
            continue
        state = None if episode.state is None else episode.state.astype(np.float32)
        recorded = RecordedEpisode(episode.task, state, episode.actions, videos)
        yield Candidate(recorded, rate, episode.embodiment, list(episode.state_names) if state is not None else [],
                        list(episode.action_names) if episode.actions is not None else [], {})


def camera_frames(episode, name: str, size: tuple[int, int] | None = None, fit: str = "pad") -> FrameChunks:
    """Every frame of one camera, even-sized or fitted to `size`, decoded `DECODE_CHUNK` at a time while the export
    encodes them (a frame that fails to decode then leaves the episode out: `write_lerobot_v3(on_unreadable=)`)."""
    indices = range(episode.cameras[name].num_frames)
    if size is not None:  # read for that size: HDR frames are tone-mapped at about it (`read_frame_chunks`)
        return fitted(len(indices), lambda: episode.frame_chunks(name, indices, DECODE_CHUNK, size), size, fit)
    height, width = episode.frames(name, [0]).shape[1:3]

    def chunks() -> Iterator[np.ndarray]:
        return (even_sized(chunk) for chunk in episode.frame_chunks(name, indices, DECODE_CHUNK))

    return FrameChunks(len(indices), (height - height % 2, width - width % 2, 3), chunks)


def fitted(length: int, chunks: Callable[[], Iterator[np.ndarray]], size: tuple[int, int], fit: str) -> FrameChunks:
    """`length` frames fitted to `size` (height, width) chunk by chunk as `chunks()` makes them."""
    return FrameChunks(length, (*size, 3), lambda: (resize_frames(chunk, size, fit) for chunk in chunks()))


def even_sized(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: an odd one loses its last row or column."""
    height, width = frames.shape[1:3]
    return frames[:, : height - height % 2, : width - width % 2]


def build_candidates(build_dir: Path, summary: LeRobotExport, size: tuple[int, int] | None = None,
                     fit: str = "pad") -> Iterator[Candidate]:
    recipe = build_recipe(build_dir)
    latents = pair_latents(build_dir, recipe)
    labelled = latents != {}
    if labelled and int(recipe["flow"]["stride"]) != 1:
        summary.notes.append(f"latent actions left out: the build's flow stride is {recipe['flow']['stride']}, and "
                             f"LeRobot's latent_action is one per pair of consecutive frames")
        labelled, latents = False, {}
    for episode_id, clips in episodes_of(build_samples(build_shards(build_dir))):
        for run, values in runs_with_latents(episode_id, clips, latents):
            if labelled and values is None:
                summary.skipped.add("missing_latent_actions")
                continue
            if (rate := whole_rate(float(run[0]["meta"]["fps"]), summary)) is None:
                summary.skipped.add("non_integer_fps")
            else:
                yield _run_candidate(run, values, rate, size, fit)


def whole_rate(fps: float, summary: LeRobotExport) -> int | None:
    """The whole frame rate LeRobot stores an episode at: its own, or the nearest within `RATE_ROUNDING` (RoboTwin's
    250/15 Hz becomes 17, as LeRobot's RoboTwin conversions store it), noted once per rate; None when none is near."""
    rate = round(fps)
    if abs(fps - rate) <= 1e-3:
        return int(rate)
    if rate < 1 or abs(fps - rate) > RATE_ROUNDING * fps:
        return None
    note = (f"episodes recorded at {fps:.4g} fps are stored at {rate} fps (LeRobot keeps a whole frame rate): their "
            f"timestamps are {abs(rate / fps - 1):.1%} off the recording's clock")
    if note not in summary.notes:
        summary.notes.append(note)
    return int(rate)


def _run_candidate(run: list[dict], latents: np.ndarray | None, rate: int, size: tuple[int, int] | None,
                   fit: str) -> Candidate:
    meta = run[0]["meta"]
    num_frames = run_frames(run)
    local = clip_source_frames(meta, num_frames)  # the run's source-rate arrays start at its first clip's start_frame
    end = run[-1]["meta"]["end_frame"] - meta["start_frame"]
    state = _joined(run, "state.npy")
    actions = _joined(run, "actions.npy")
    extras = {}
    if latents is not None:
        extras = {"latent_action": latents}
        num_frames -= 1  # the last frame starts no pair
    recorded = RecordedEpisode(
        meta["task"], None if state is None else state[local[:num_frames]],
        None if actions is None else pair_actions(actions, np.append(local, end))[:num_frames],
        {_video_key(meta): _fitted_video(run_video(run, num_frames), size, fit)}, extras)
    return Candidate(recorded, rate, meta["embodiment"], list(meta["state_names"]) if state is not None else [],
                     list(meta["action_names"]) if actions is not None else [], {k: LATENT_NAMES for k in extras})


def _fitted_video(frames: FrameChunks, size: tuple[int, int] | None, fit: str) -> FrameChunks:
    return frames if size is None else fitted(frames.length, frames.chunks, size, fit)


def _joined(run: list[dict], field_name: str) -> np.ndarray | None:
    from pyramid.schema import npy_array

    if field_name not in run[0]:
        return None
    return np.concatenate([npy_array(clip[field_name]) for clip in run]).astype(np.float32)


def _video_key(meta: dict) -> str:
    if meta.get("layout") == "t":
        return "observation.images.cam_concatenated"
    return f"observation.images.{(meta.get('cameras') or ['video'])[0]}"
