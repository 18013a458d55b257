"""Write a LeRobotDataset v3.0 (lerobot >= 0.4): episodes back to back in one parquet file and one mp4 per camera.

The layout, column names and metadata follow huggingface/lerobot (`dataset_writer.py`,
`dataset_metadata.py`); see pyramid/sources/FORMATS.md section 5. Everything streams: an episode's
frames are encoded chunk by chunk as they are decoded, each episode into a file of its own that is then appended to
the dataset's mp4 without re-encoding (as LeRobot concatenates its per-episode videos). A video that fails to decode
halfway through thus leaves the dataset as it was: `write_lerobot_v3(on_unreadable=)` leaves that episode out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pyramid.atomic import atomic_directory
from pyramid.errors import EpisodeError
from pyramid.paths import absent_or_empty
from pyramid.video_io import Frames, chunks_of, drain_encoder, encoder_options

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
# LeRobot's defaults: AV1 with a GOP of 2 so that random access decodes at most one extra frame.
VIDEO_CRF = {"libsvtav1": 30, "libx264": 23}
VIDEO_GOP = 2
CODEC_NAMES = {"libsvtav1": "av1", "libx264": "h264"}
INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


class NoEpisodes(ValueError):
    """Not one episode was written (none given, or every one unreadable)."""


@dataclass
class RecordedEpisode:
    """One episode to write: a task, state/actions [T, D] and uint8 RGB frames [T, H, W, 3] per video key.

    `extras`: further float features [T, D] (e.g. `latent_action`), named in `write_lerobot_v3(extra_features=)`.
    A dataset written with no state names has no `observation.state` (then `state` is None).
    """

    task: str
    state: np.ndarray | None
    actions: np.ndarray | None
    videos: dict[str, Frames]  # an array, or `FrameChunks` decoded while they are encoded
    extras: dict[str, np.ndarray] = field(default_factory=dict)


def write_lerobot_v3(
    root: str | os.PathLike,
    episodes: Iterable[RecordedEpisode],
    *,
    fps: int,
    robot_type: str,
    state_names: Sequence[str],
    action_names: Sequence[str] | None = None,
    codec: str = "libsvtav1",
    overwrite: bool = False,
    extra_features: dict[str, Sequence[str]] | None = None,
    on_unreadable: Callable[[EpisodeError], None] | None = None,
) -> Path:
    """Write `episodes` as a LeRobot v3.0 dataset at `root` (built under a temporary name, then renamed).

    An episode whose frames fail to decode (`EpisodeError`) while it is written is left out, with nothing of it
    written, and passed to `on_unreadable`; without one, the error ends the write."""
    root = Path(root)
    if not overwrite and not absent_or_empty(root):
        raise FileExistsError(f"{root}: already exists")
    with atomic_directory(root, create=False) as tmp:
        writer = _DatasetWriter(tmp, fps, robot_type, list(state_names), list(action_names or []), codec,
                                {key: list(names) for key, names in (extra_features or {}).items()})
        try:
            for episode in episodes:
                try:
                    writer.add(episode)
                except EpisodeError as exc:
                    if on_unreadable is None:
                        raise
                    on_unreadable(exc)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
    return root


class _DatasetWriter:
    def __init__(self, root: Path, fps: int, robot_type: str, state_names: list[str], action_names: list[str], codec: str,
                 extra_names: dict[str, list[str]] | None = None):
        if codec not in VIDEO_CRF:
            raise ValueError(f"codec must be one of {sorted(VIDEO_CRF)}, got {codec!r}")
        self.root, self.fps, self.robot_type, self.codec = root, int(fps), robot_type, codec
        self.state_names, self.action_names, self.extra_names = state_names, action_names, extra_names or {}
        self.tasks: dict[str, int] = {}
        self.episode_rows: list[dict[str, Any]] = []
        self.episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        self.videos: dict[str, _VideoStream] = {}
        self.data: pq.ParquetWriter | None = None
        self.total_frames = 0

    def add(self, episode: RecordedEpisode) -> None:
        """Append an episode. Its videos are encoded first, each to a file of its own: if one fails to decode, the
        dataset is left as it was."""
        index = len(self.episode_rows)
        length = self._check(episode, index)
        encoded: dict[str, _EpisodeVideo] = {}
        try:
            for key, frames in episode.videos.items():
                encoded[key] = self._encode_alone(key, frames)
            task_index = self.tasks.setdefault(episode.task, len(self.tasks))
            columns = self._data_columns(episode, index, task_index, length)
            self._write_rows(columns)
            row: dict[str, Any] = {"episode_index": index, "tasks": [episode.task], "length": length,
                                   "data/chunk_index": 0, "data/file_index": 0,
                                   "dataset_from_index": self.total_frames, "dataset_to_index": self.total_frames + length}
            stats = {key: feature_stats(values) for key, values in columns.items()}
            for key, video in encoded.items():
                row.update(self._append_video(key, video))
                stats[key] = video.stats
        finally:
            for video in encoded.values():
                video.path.unlink(missing_ok=True)
        row.update(_flatten_stats(stats))
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        self.episode_rows.append(row)
        self.episode_stats.append(stats)
        self.total_frames += length

    def _encode_alone(self, key: str, frames: Frames) -> "_EpisodeVideo":
        if self.episode_rows and key not in self.videos:
            raise ValueError(f"video '{key}' appears after the first episode")
        if key in self.videos and frames.shape[1:] != (self.videos[key].height, self.videos[key].width, 3):
            stream = self.videos[key]
            raise ValueError(f"video '{key}': frames must be [T, {stream.height}, {stream.width}, 3], got {list(frames.shape)}")
        path = self.root / ".episode" / f"{key}.mp4"  # inside the dataset's temporary tree, removed once appended
        return _EpisodeVideo.encode(path, frames, self.fps, self.codec)

    def _append_video(self, key: str, video: "_EpisodeVideo") -> dict[str, Any]:
        """Copy the episode's encoded video after the previous episodes'; its place in the mp4."""
        if key not in self.videos:
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
            self.videos[key] = _VideoStream(path, self.fps, self.codec, video.height, video.width)
        stream = self.videos[key]
        start = stream.frames_written / self.fps
        stream.append(video)
        return {f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": start + video.frames / self.fps}

    def _check(self, episode: RecordedEpisode, index: int) -> int:
        arrays = {**({"state": episode.state} if self.state_names else {}),
                  **({"actions": episode.actions} if self.action_names else {}),
                  **{f"video '{key}'": frames for key, frames in episode.videos.items()},
                  **{key: episode.extras.get(key) for key in self.extra_names}}
        length = len(next(iter(arrays.values()))) if arrays else 0
        for what, array in arrays.items():
            if array is None or len(array) != length or length == 0:
                raise ValueError(f"episode {index}: {what} must have {length} > 0 frames, like the others")
        if self.state_names and np.shape(episode.state)[1:] != (len(self.state_names),):
            raise ValueError(f"episode {index}: state must be [T, {len(self.state_names)}]")
        if episode.state is not None and not self.state_names:
            raise ValueError(f"episode {index}: has a state but no state_names were given")
        for key, names in self.extra_names.items():
            if np.shape(episode.extras[key])[1:] != (len(names),):
                raise ValueError(f"episode {index}: {key} must be [T, {len(names)}]")
        if episode.actions is not None and not self.action_names:
            raise ValueError(f"episode {index}: has actions but no action_names were given")
        if self.action_names and np.shape(episode.actions)[1:] != (len(self.action_names),):
            raise ValueError(f"episode {index}: actions must be [T, {len(self.action_names)}]")
        if self.videos and set(episode.videos) != set(self.videos):
            raise ValueError(f"episode {index}: video keys {sorted(episode.videos)} differ from {sorted(self.videos)}")
        return length

    def _data_columns(self, episode: RecordedEpisode, index: int, task_index: int, length: int) -> dict[str, np.ndarray]:
        frame_index = np.arange(length, dtype=np.int64)
        columns = {"observation.state": np.asarray(episode.state, np.float32)} if self.state_names else {}
        if self.action_names:
            columns["action"] = np.asarray(episode.actions, np.float32)
        columns.update({key: np.asarray(episode.extras[key], np.float32) for key in self.extra_names})
        columns.update({
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(length, index, np.int64),
            "index": self.total_frames + frame_index,
            "task_index": np.full(length, task_index, np.int64),
        })
        return columns

    def _write_rows(self, columns: dict[str, np.ndarray]) -> None:
        table = pa.table({key: _arrow_column(values) for key, values in columns.items()})
        if self.data is None:
            path = self.root / DATA_PATH.format(chunk_index=0, file_index=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.data = pq.ParquetWriter(path, table.schema)
        self.data.write_table(table)  # one row group per episode, so readers can skip the others

    def finish(self) -> None:
        if not self.episode_rows:
            raise NoEpisodes("no episodes to write")
        self._close()
        meta = self.root / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        tasks = pd.DataFrame({"task_index": list(self.tasks.values())}, index=pd.Index(list(self.tasks), name="task"))
        tasks.to_parquet(meta / "tasks.parquet")
        episodes_path = self.root / EPISODES_PATH
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episode_rows), episodes_path)
        _write_json(meta / "stats.json", _jsonable(aggregate_stats(self.episode_stats)))
        _write_json(meta / "info.json", self._info())

    def abort(self) -> None:
        try:
            self._close()
        except Exception:  # already failing; the temporary tree is deleted next
            pass

    def _close(self) -> None:
        if self.data is not None:
            self.data.close()
            self.data = None
        for stream in self.videos.values():
            stream.close()
        if (self.root / ".episode").is_dir():
            (self.root / ".episode").rmdir()

    def _info(self) -> dict[str, Any]:
        features: dict[str, Any] = {}
        if self.state_names:
            features["observation.state"] = {"dtype": "float32", "shape": [len(self.state_names)], "names": self.state_names}
        if self.action_names:
            features["action"] = {"dtype": "float32", "shape": [len(self.action_names)], "names": self.action_names}
        for key, names in self.extra_names.items():
            features[key] = {"dtype": "float32", "shape": [len(names)], "names": names}
        for key, stream in self.videos.items():
            features[key] = stream.feature()
        features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        features.update({key: {"dtype": "int64", "shape": [1], "names": None} for key in INDEX_COLUMNS[1:]})
        episodes = len(self.episode_rows)
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": episodes,
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            "fps": self.fps,
            "splits": {"train": f"0:{episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.videos else None,
            "features": features,
        }


@dataclass
class _EpisodeVideo:
    """One episode's frames of one video key, encoded alone with the dataset's options."""

    path: Path
    frames: int
    height: int
    width: int
    stats: dict[str, np.ndarray]  # image statistics, from every `image_sample_step`-th frame

    @classmethod
    def encode(cls, path: Path, frames: Frames, fps: int, codec: str) -> "_EpisodeVideo":
        """Encode chunk by chunk as the frames are made; the file is removed if making them fails."""
        height, width = frames.shape[1:3]
        if height % 2 or width % 2:
            raise ValueError(f"{path}: yuv420p needs an even frame size, got {height}x{width}")
        path.parent.mkdir(parents=True, exist_ok=True)
        # SVT-AV1 prints a dozen info lines per encoder to stderr; keep errors only unless the user chose otherwise.
        os.environ.setdefault("SVT_LOG", "1")
        step, sampled, written = image_sample_step(len(frames)), [], 0
        try:
            with av.open(str(path), mode="w") as container:
                stream = container.add_stream(codec, rate=Fraction(fps))
                try:
                    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                    stream.options = encoder_options(codec, VIDEO_CRF[codec], VIDEO_GOP)  # x264's without mbtree: see there
                    for chunk in chunks_of(frames):
                        _check_frames(path, chunk, height, width)
                        sampled += [chunk[i].copy() for i in range(-written % step, len(chunk), step)]  # a view would keep its chunk
                        for frame in chunk:
                            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                            video_frame.pts, video_frame.time_base = written, Fraction(1, fps)
                            container.mux(stream.encode(video_frame))
                            written += 1
                    container.mux(stream.encode())
                except BaseException:
                    drain_encoder(stream)
                    raise
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return cls(path, written, height, width, image_stats(np.stack(sampled)))


def _check_frames(path: Path, frames: np.ndarray, height: int, width: int) -> None:
    if frames.dtype != np.uint8 or frames.shape[1:] != (height, width, 3):
        raise ValueError(f"{path}: frames must be uint8 [T, {height}, {width}, 3], got {frames.dtype} {list(frames.shape)}")


class _VideoStream:
    """One mp4 of the dataset. Episodes, each encoded alone, are appended by copying their packets (no re-encode),
    with timestamps shifted to run on after the episodes before them."""

    def __init__(self, path: Path, fps: int, codec: str, height: int, width: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.codec, self.height, self.width = path, fps, codec, height, width
        self.container = av.open(str(path), mode="w")
        self.stream = None
        self.time_base: Fraction | None = None
        self.last_dts = -(2**62)
        self.frames_written = 0
        self.closed = False

    def append(self, video: _EpisodeVideo) -> None:
        with av.open(str(video.path)) as source:
            episode_stream = source.streams.video[0]
            if self.stream is None:
                self.stream = self.container.add_stream_from_template(episode_stream, opaque=True)
                self.time_base = episode_stream.time_base
            shift = Fraction(self.frames_written, self.fps) / episode_stream.time_base
            if episode_stream.time_base != self.time_base or shift.denominator != 1:
                raise ValueError(f"{video.path}: time base {episode_stream.time_base} cannot follow {self.time_base} at {self.fps} fps")
            for packet in source.demux(episode_stream):
                if packet.dts is None:  # the demuxer's empty packet at the end
                    continue
                packet.pts += int(shift)
                # x264 decodes a frame ahead (its first decode time is before its first frame) except in a one-frame
                # episode: decode times must still increase across the join.
                packet.dts = max(packet.dts + int(shift), self.last_dts + 1)
                self.last_dts = packet.dts
                packet.stream = self.stream
                self.container.mux(packet)
        self.frames_written += video.frames

    def close(self) -> None:
        if not self.closed:
            self.container.close()
            self.closed = True

    def feature(self) -> dict[str, Any]:
        return {
            "dtype": "video",
            "shape": [self.height, self.width, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": self.height, "video.width": self.width,
                "video.codec": CODEC_NAMES[self.codec], "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False, "video.fps": self.fps, "video.channels": 3, "has_audio": False,
            },
        }


def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot's per-episode stats of one feature: per-dimension min/max/mean/std/quantiles and the count."""
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    stats = {"min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0),
             "count": np.array([len(values)])}
    stats.update({name: np.quantile(values, q, axis=0) for name, q in QUANTILES.items()})
    return stats


def image_sample_step(length: int, max_frames: int = 16) -> int:
    """Every how many frames an episode's video is sampled for its image statistics: about 16 frames
    (lerobot 0.4's own writer spaces about 100 evenly, at a lower size; both estimate the same per-channel figures)."""
    return max(1, length // max_frames)


def image_stats(sample: np.ndarray, stride: int = 4) -> dict[str, np.ndarray]:
    """Per-channel stats on the [0, 1] scale, shaped (3, 1, 1), from the frames `image_sample_step` picks."""
    stats = feature_stats(sample[:, ::stride, ::stride].reshape(-1, 3) / 255.0)
    stats = {name: value.reshape(3, 1, 1) for name, value in stats.items() if name != "count"}
    stats["count"] = np.array([len(sample)])
    return stats


def aggregate_stats(episode_stats: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Combine per-episode stats: exact min/max/mean/std, count-weighted quantiles (LeRobot's approximation)."""
    combined = {}
    for key in episode_stats[0]:
        parts = [stats[key] for stats in episode_stats]
        counts = np.array([float(part["count"][0]) for part in parts])
        weights = (counts / counts.sum()).reshape(-1, *[1] * parts[0]["mean"].ndim)
        means = np.stack([part["mean"] for part in parts])
        mean = (weights * means).sum(0)
        variance = (weights * (np.stack([part["std"] for part in parts]) ** 2 + (means - mean) ** 2)).sum(0)
        result = {"min": np.min([part["min"] for part in parts], 0), "max": np.max([part["max"] for part in parts], 0),
                  "mean": mean, "std": np.sqrt(variance), "count": np.array([int(counts.sum())])}
        result.update({name: (weights * np.stack([part[name] for part in parts])).sum(0) for name in QUANTILES})
        combined[key] = result
    return combined


def _flatten_stats(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, list]:
    return {f"stats/{key}/{name}": value.tolist() for key, feature in stats.items() for name, value in feature.items()}


def _jsonable(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    return {key: {name: value.tolist() for name, value in feature.items()} for key, feature in stats.items()}


def _arrow_column(values: np.ndarray) -> pa.Array:
    """Vectors become fixed-size lists (HF `Sequence(length=n)`), scalars plain columns. A feature of shape [1] is a
    scalar too: LeRobot reads it as a `Value`, and fails to cast a list of one."""
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim == 1:
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _write_json(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=4) + "\n")
