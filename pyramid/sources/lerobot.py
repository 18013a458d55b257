"""LeRobotDataset v2.0, v2.1 and v3.0 (huggingface/lerobot): parquet rows plus an mp4 per episode (v2) or per file (v3).

`observation.state` and `action` become state and actions, or, in a dataset that keeps each part of them as a
feature of its own (any4lerobot's `observation.states.<part>`, `actions.<part>`), its parts (lerobot_parts.py);
the options `state_features` and `action_features` choose others. Every `video` feature is a camera, and so is
every `image` feature (PNG bytes embedded in the parquet). Other float vectors (for example
`observation.environment_state`) are not loaded: their dimension names are listed in
`metadata["other_features"]`. Layouts: FORMATS.md section 5.

Real dumps are hostile: a bad line in `meta/episodes.jsonl`, a null column or a corrupt file under
`meta/episodes/` becomes one unreadable ref and discovery goes on; every path named by the metadata
goes through `resolve` (it must stay inside the root); a declared feature missing from the parquet,
or stored with another dtype or width, is an `EpisodeError` naming the file and the column.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pyramid.episode import FPS_RANGE, EncodedImages, Episode, EpisodeRef, VideoCamera, decode_image_bytes
from pyramid.errors import EpisodeError, SourceError, one_line
from pyramid.sources.base import Source, register
from pyramid.sources.json_file import json_line, read_json
from pyramid.sources.lerobot_parts import DEFAULT_FEATURES, part_name, vector_features
from pyramid.sources.parquet_rows import EpisodeRows
from pyramid.video_io import probe

INFO = "meta/info.json"
EPISODES_JSONL = "meta/episodes.jsonl"
EPISODES_DIR = "meta/episodes"
TASKS_V2 = "meta/tasks.jsonl"
TASKS_V3 = "meta/tasks.parquet"
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
# What each version fills its path templates with (data_path; video_path adds video_key).
TEMPLATE_FIELDS = {"v2": {"episode_chunk": 0, "episode_index": 0}, "v3": {"chunk_index": 0, "file_index": 0}}


@register
class LeRobotSource(Source):
    name = "lerobot"
    default_level = 5

    def __init__(self, root, level=None, embodiment=None, *, state_features: list[str] | None = None,
                 action_features: list[str] | None = None, **options: Any):
        super().__init__(root, level, embodiment, **options)
        self.chosen_features = {"state": state_features, "action": action_features}
        self._rows = EpisodeRows()  # a v3 data file's footer and row groups, read once for its many episodes

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / INFO).is_file()

    @cached_property
    def info(self) -> dict[str, Any]:
        """meta/info.json, checked once: whatever is wrong here is wrong for every episode (a SourceError)."""
        path = self._dataset_file(INFO)
        info = _read_json(path)
        version = str(info.get("codebase_version", ""))
        if not version.startswith(("v2.", "v3.")):
            raise SourceError(f"{path}: codebase_version {version!r} is not supported (v2.0, v2.1, v3.0 are)")
        if "fps" not in info or not isinstance(info.get("features"), dict):
            raise SourceError(f"{path}: needs 'fps' and 'features'")
        if not _is_number(info["fps"]):
            raise SourceError(f"{path}: 'fps' must be a number, got {info['fps']!r}")
        for key, feature in info["features"].items():
            if not isinstance(feature, dict):
                raise SourceError(f"{path}: feature {key!r} is not an object")
        chunks_size = info.get("chunks_size")
        if chunks_size is not None and not (_is_int(chunks_size) and chunks_size > 0):
            raise SourceError(f"{path}: 'chunks_size' must be a positive integer, got {chunks_size!r}")
        _refuse_shared_camera_names(path, info["features"])
        fields = TEMPLATE_FIELDS[version[:2]]
        _check_template(path, "data_path", info.get("data_path"), fields)
        _check_template(path, "video_path", info.get("video_path"), {**fields, "video_key": "key"})
        return info

    def _dataset_file(self, relative: str) -> Path:
        """A dataset-wide metadata path, under the source's symlink policy like every other path it reads."""
        try:
            return self.resolve(relative)
        except EpisodeError as exc:
            raise SourceError(str(exc)) from exc

    @cached_property
    def vector_features(self) -> dict[str, tuple[str, ...]]:
        """"state" and "action" -> the features joined into each (lerobot_parts.py)."""
        return vector_features(self.info["features"], self.info.get("robot_type"), self.chosen_features,
                               self.root / INFO)

    @property
    def is_v3(self) -> bool:
        return self.info["codebase_version"].startswith("v3.")

    def features_of(self, dtype: str) -> list[str]:
        return [key for key, feature in self.info["features"].items() if feature.get("dtype") == dtype]

    def camera_features(self, dtype: str) -> list[str]:
        """The colour cameras among the `video` or `image` features: a depth map (newer v3 writers flag it
        `is_depth_map`; converters store depth as a one-channel image) is not a view to compute flow on."""
        return [key for key in self.features_of(dtype) if not _is_depth(self.info["features"][key])]

    def discover(self) -> Iterator[EpisodeRef]:
        self.vector_features  # a feature option the dataset does not have fails here, before any episode
        indices, unparsed = set(), 0  # distinct: a duplicated entry must not stand in for a missing one
        for ref in self._discover_v3() if self.is_v3 else self._discover_v2():
            if "episode_index" in ref.locator:
                indices.add(ref.locator["episode_index"])
            else:
                unparsed += 1
            yield ref
        if (unlisted := self._unlisted(len(indices) + unparsed)) is not None:
            yield unlisted

    def _unlisted(self, listed: int) -> EpisodeRef | None:
        """An unreadable ref when the episode metadata lists fewer entries than meta/info.json's `total_episodes`
        (a download cut short, a missing meta shard): a build would otherwise succeed on part of the dataset and say
        nothing of the rest."""
        total = self.info.get("total_episodes")
        if not _is_int(total) or listed >= total:
            return None
        where = EPISODES_DIR if self.is_v3 else EPISODES_JSONL
        return self.unreadable(f"{where}:unlisted", f"{INFO} counts {total} episodes (total_episodes) but {where} lists "
                                                    f"{listed}: {total - listed} missing (a download cut short?)")

    # -- v2: one JSON line per episode -------------------------------------------------------------

    def _discover_v2(self) -> Iterator[EpisodeRef]:
        path = self._dataset_file(EPISODES_JSONL)
        if not path.is_file():
            raise SourceError(f"{path}: missing (LeRobot v2 lists its episodes there)")
        with path.open(encoding="utf-8-sig", errors="replace") as lines:  # streamed: 10^5 episodes are listed here
            for number, line in enumerate(lines, 1):
                if line.strip():
                    yield self._entry_v2(number, line)

    def _entry_v2(self, number: int, line: str) -> EpisodeRef:
        where = f"{EPISODES_JSONL}:line{number}"
        entry, problem = json_line(line, number)
        if problem:
            return self.unreadable(where, problem)
        index = entry.get("episode_index") if isinstance(entry, dict) else None
        if not _is_int(index):
            return self.unreadable(where, f"line {number} has no integer 'episode_index'")
        length = entry.get("length")
        if length is not None and not (_is_int(length) and length >= 0):
            return self.unreadable(where, f"line {number}: 'length' {length!r} is not a frame count")
        return self._ref_v2(entry, index)

    def _ref_v2(self, entry: dict[str, Any], index: int) -> EpisodeRef:
        place = {"episode_chunk": index // int(self.info.get("chunks_size") or 1000), "episode_index": index}
        data = (self.info.get("data_path") or V2_DATA_PATH).format(**place)
        video_path = self.info.get("video_path") or V2_VIDEO_PATH
        videos = {key: {"file": video_path.format(video_key=key, **place), "from_timestamp": 0.0}
                  for key in self.camera_features("video")}
        return self.ref(data, episode_index=index, length=entry.get("length"), tasks=_task_list(entry.get("tasks")),
                        data_file=data, shared_file=False, videos=videos)

    # -- v3: rows of meta/episodes/chunk-*/file-*.parquet --------------------------------------------

    def _discover_v3(self) -> Iterator[EpisodeRef]:
        found = False
        for item in self.walk(self._dataset_file(EPISODES_DIR), lambda name: name.endswith(".parquet")):
            found = True
            if isinstance(item, EpisodeRef):  # a refused symlink
                yield item
            else:
                yield from self._entries_v3(item)
        if not found:
            raise SourceError(f"{self.root / EPISODES_DIR}: no episode metadata parquet files")

    def _entries_v3(self, path: Path) -> Iterator[EpisodeRef]:
        """One ref per row; a file that cannot be read becomes one unreadable ref named after it."""
        relpath = path.relative_to(self.root).as_posix()
        number = 0
        try:
            parquet = pq.ParquetFile(path)
            columns = [name for name in parquet.schema_arrow.names if not name.startswith("stats/")]
            for batch in parquet.iter_batches(batch_size=1024, columns=columns):
                for row in batch.to_pylist():
                    yield self._entry_v3(row, relpath, number)
                    number += 1
        except (pa.ArrowException, OSError) as exc:
            yield self.unreadable(relpath, f"cannot read episode metadata parquet ({one_line(exc)})")

    def _entry_v3(self, row: dict[str, Any], relpath: str, number: int) -> EpisodeRef:
        index = _as_int(row.get("episode_index"))
        where = f"episodes/{index:06d}" if index is not None else f"{relpath}:row{number}"
        try:
            return self._ref_v3(row, where)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            return self.unreadable(where, f"{relpath} row {number}: {one_line(exc)}")

    def _ref_v3(self, row: dict[str, Any], relpath: str) -> EpisodeRef:
        index = _required_int(row, "episode_index")
        data = (self.info.get("data_path") or V3_DATA_PATH).format(
            chunk_index=_required_int(row, "data/chunk_index"), file_index=_required_int(row, "data/file_index"))
        video_path = self.info.get("video_path") or V3_VIDEO_PATH
        videos = {key: {"file": video_path.format(video_key=key, chunk_index=_required_int(row, f"videos/{key}/chunk_index"),
                                                  file_index=_required_int(row, f"videos/{key}/file_index")),
                        "from_timestamp": _required_seconds(row, f"videos/{key}/from_timestamp"),
                        "to_timestamp": _optional_seconds(row, f"videos/{key}/to_timestamp")}
                  for key in self.camera_features("video")}
        return self.ref(relpath, episode_index=index, length=_required_int(row, "length"),
                        tasks=_task_list(row.get("tasks")), data_file=data, shared_file=True, videos=videos)

    # -- reading one episode -----------------------------------------------------------------------

    def read(self, ref: EpisodeRef) -> Episode:
        where = ref.locator
        data_path = self.resolve(where["data_file"])
        rows = self._episode_rows(data_path, where)
        length = rows.num_rows
        first_time = self._first_timestamp(rows, data_path)
        state, state_names = self._vector(rows, "state", data_path)
        actions, action_names = self._vector(rows, "action", data_path)
        cameras = {**self._video_cameras(where, length, first_time), **self._image_cameras(data_path, where, length)}
        return Episode(
            episode_id=ref.episode_id,
            source=self.name,
            embodiment=self.embodiment(self.info.get("robot_type")),
            level=self.level,
            instructions=where["tasks"] or self._tasks_of(rows, where["episode_index"]),
            fps=float(self.info["fps"]),  # implausible values are refused by check_episode, after read
            num_frames=length,
            cameras=cameras,
            state=state,
            state_names=state_names,
            actions=actions,
            action_names=action_names,
            metadata=self._metadata(ref),
            path=str(data_path),
        )

    def _episode_rows(self, data_path: Path, where: dict[str, Any]) -> pa.Table:
        """The episode's rows; a v3 file holds many episodes, found by `episode_index` (row groups are skipped)."""
        if not data_path.is_file():
            raise EpisodeError(data_path, f"missing data file of episode {where['episode_index']}")
        try:
            rows = self._shared_file_rows(data_path, where) if where["shared_file"] else self._file_rows(data_path, where)
        except (pa.ArrowException, OSError) as exc:
            raise EpisodeError(data_path, f"cannot read parquet ({one_line(exc)})") from exc
        if not where["shared_file"]:
            _refuse_other_episodes_rows(rows, where["episode_index"], data_path)
        expected = where["length"]
        if rows.num_rows == 0 or (expected is not None and rows.num_rows != expected):
            raise EpisodeError(data_path, f"episode {where['episode_index']} has {rows.num_rows} rows, "
                                          f"its metadata says length {expected}")
        return rows

    def _shared_file_rows(self, data_path: Path, where: dict[str, Any]) -> pa.Table:
        names = self._rows.schema_names(data_path)
        return self._rows.read(data_path, where["episode_index"], self._columns_to_read(data_path, where, names))

    def _file_rows(self, data_path: Path, where: dict[str, Any]) -> pa.Table:
        """A v2 episode's file: its footer parsed once, for its columns and its rows."""
        with pq.ParquetFile(data_path) as parquet:
            return parquet.read(columns=self._columns_to_read(data_path, where, parquet.schema_arrow.names))

    def _columns_to_read(self, data_path: Path, where: dict[str, Any], names: list[str]) -> list[str]:
        self._check_declared_columns(data_path, where, names)
        return [name for name in (*self.vector_keys, "episode_index", "task_index", "timestamp") if name in names]

    def _check_declared_columns(self, data_path: Path, where: dict[str, Any], names: list[str]) -> None:
        """What the reader loads and meta/info.json declares must be in the file: no silently action-less episode."""
        declared = [*self.vector_keys, *self.camera_features("image")]
        for key in declared + (["episode_index"] if where["shared_file"] else []):
            if key not in names:
                raise EpisodeError(data_path, f"declared feature '{key}' is missing from {where['data_file']}")

    @cached_property
    def vector_keys(self) -> list[str]:
        """Every feature read into the state or the action, once each."""
        return list(dict.fromkeys(key for keys in self.vector_features.values() for key in keys))

    def _vector(self, rows: pa.Table, vector: str, data_path: Path) -> tuple[np.ndarray | None, list[str]]:
        """The state or the action: its features side by side. Where they are several, each dimension's name
        starts with its part's (`joint_position_left.joint_0`)."""
        keys = self.vector_features[vector]
        if len(keys) <= 1:
            return self._feature_matrix(rows, keys[0], vector, data_path) if keys else (None, [])
        parts = [self._feature_matrix(rows, key, part_name(key), data_path, qualified=True) for key in keys]
        return np.concatenate([values for values, _ in parts], axis=1), [name for _, names in parts for name in names]

    def _feature_matrix(self, rows: pa.Table, key: str, prefix: str, data_path: Path,
                        qualified: bool = False) -> tuple[np.ndarray, list[str]]:
        feature = self.info["features"].get(key, {})
        values = column_as_matrix(rows.column(key), key, data_path, feature.get("dtype"))
        width = _declared_width(feature)
        if width is not None and values.shape[1] != width:
            raise EpisodeError(data_path, f"column '{key}' has {values.shape[1]} values per row, "
                                          f"meta/info.json declares shape {feature.get('shape')}")
        return values, self.dimension_names(key, values.shape[1], prefix, qualified)

    def dimension_names(self, key: str, dim: int, prefix: str, qualified: bool = False) -> list[str]:
        """One name per dimension: the feature's own (after `prefix.` when `qualified`), else `prefix.<i>`."""
        feature = self.info["features"].get(key, {})
        names = _per_value(flatten_names(feature.get("names")), feature.get("shape"))
        if not names:
            return [f"{prefix}.{i}" for i in range(dim)]
        if len(names) != dim:
            raise EpisodeError(self.root / INFO, f"'{key}' lists {len(names)} names but its data has {dim} dims")
        return [f"{prefix}.{name}" for name in names] if qualified else names

    def _first_timestamp(self, rows: pa.Table, data_path: Path) -> float:
        """The time of the episode's first row, where its video frames start: LeRobot finds a row's frame at its
        `timestamp` (after the episode's `from_timestamp` in a v3 file). Frames are read one per row from there, so the
        rows must be one frame apart at the dataset's fps: after a jump (dropped or repeated frames), every row would
        be paired with another frame than the one LeRobot gives it."""
        if "timestamp" not in rows.column_names:
            return 0.0
        times = column_as_matrix(rows.column("timestamp"), "timestamp", data_path, dtype=np.float64)[:, 0]
        if not np.isfinite(times).all() or times[0] < 0:
            row = int(np.flatnonzero(~np.isfinite(times) | (times < 0))[0])
            raise EpisodeError(data_path, f"'timestamp' of row {row} is {times[row]:g}, not a time in seconds")
        fps = float(self.info["fps"])
        if not FPS_RANGE[0] <= fps <= FPS_RANGE[1]:
            return float(times[0])  # check_episode refuses the episode's rate, in its own words
        frames = np.rint((times - times[0]) * fps)
        if (wrong := np.flatnonzero(frames != np.arange(len(times)))).size:
            steps = np.diff(times)
            if steps[0] > 0 and np.allclose(steps, steps[0], rtol=0.01):  # every row apart alike: another rate
                raise EpisodeError(data_path, f"rows are {steps[0]:.4g} s apart ({1 / steps[0]:.4g} fps), "
                                              f"meta/info.json declares {fps:g} fps")
            row = int(wrong[0])
            raise EpisodeError(data_path, f"rows are not one frame apart at {fps:g} fps: row {row}'s timestamp "
                                          f"{times[row]:g} s is frame {int(frames[row])} of the episode (dropped or "
                                          "repeated frames?)")
        return float(times[0])

    def _video_cameras(self, where: dict[str, Any], length: int, first_time: float) -> dict[str, VideoCamera]:
        cameras = {}
        for key, video in where["videos"].items():
            path = self.resolve(video["file"])
            if not path.is_file():
                raise EpisodeError(path, f"missing video of '{key}' for episode {where['episode_index']}")
            cameras[camera_name(key)] = self._video_segment(key, path, video["from_timestamp"] + first_time, length,
                                                            video.get("to_timestamp"))
        return cameras

    def _video_segment(self, key: str, path: Path, from_timestamp: float, length: int,
                       to_timestamp: float | None = None) -> VideoCamera:
        """The episode's frames of `path`, from `from_timestamp` (a v3 mp4 holds episodes back to back; the episode's
        first row may start after its segment does) to `to_timestamp`. A segment shorter than the episode's rows is
        refused: reading on would take the next episode's frames, and nothing else would notice."""
        info = probe(path)
        declared = self._segment_rate(key)
        if declared and math.isfinite(info.fps) and info.fps > 0 and abs(info.fps - declared) > 0.01 * declared:
            raise EpisodeError(path, f"video runs at {info.fps:g} fps, meta/info.json declares {declared:g} fps for '{key}': "
                                     "its frames would be paired with the wrong rows")
        rate = declared or info.fps
        known_rate = math.isfinite(rate) and rate > 0  # else check_episode refuses the episode's rate
        offset = 0
        if from_timestamp:
            if not known_rate:
                raise EpisodeError(path, f"no frame rate to find the episode starting at {from_timestamp}s")
            offset = int(round(from_timestamp * rate))
        if to_timestamp is not None and known_rate and (held := int(round((to_timestamp - from_timestamp) * rate))) < length:
            raise EpisodeError(path, f"the episode's segment {from_timestamp:g}-{to_timestamp:g} s holds {held} frames at "
                                     f"{rate:g} fps, fewer than its {length} rows")
        if info.num_frames - offset < length:
            starting = f" (its rows start at {from_timestamp:g} s)" if offset else ""
            raise EpisodeError(path, f"video has {info.num_frames} frames, episode needs {offset + length}{starting}")
        return VideoCamera(camera_name(key), str(path), length, info.height, info.width, info.fps, offset, info.codec,
                           info.decord)

    def _segment_rate(self, key: str) -> float | None:
        """The declared frame rate of `key`'s video, when plausible (else the container's own is used)."""
        video_info = self.info["features"][key].get("info")
        declared = video_info.get("video.fps") if isinstance(video_info, dict) else None
        for rate in (declared, self.info["fps"]):
            if _is_number(rate) and FPS_RANGE[0] <= rate <= FPS_RANGE[1]:
                return float(rate)
        return None

    def _image_cameras(self, data_path: Path, where: dict[str, Any], length: int) -> dict[str, "ParquetImageCamera"]:
        return {camera_name(key): ParquetImageCamera(camera_name(key), str(data_path), key, where["episode_index"],
                                                     where["shared_file"], length, self._rows)
                for key in self.camera_features("image")}

    def _tasks_of(self, rows: pa.Table, episode_index: int) -> list[str]:
        """The texts of the rows' task_index, for an episode whose metadata lists no task. An index the tasks table
        does not give is refused: the episode would be built without its instruction, and nothing would say so."""
        if "task_index" not in rows.column_names:
            return []
        indices = dict.fromkeys(i for i in rows.column("task_index").to_pylist() if _is_int(i))
        tasks, bad_lines = (self.tasks, []) if self.is_v3 else self._tasks_v2
        if unknown := [i for i in indices if i not in tasks]:
            if bad_lines:
                path, why = bad_lines[0]
                raise EpisodeError(path, f"{why}, and no other line gives the episode's task_index {unknown[0]}")
            path = self.resolve(TASKS_V3 if self.is_v3 else TASKS_V2)
            state = "gives no task" if path.is_file() else "is missing, so there is no task"
            raise EpisodeError(path, f"{state} for task_index {unknown[0]} of episode {episode_index}'s rows, and its "
                                     "metadata lists none")
        return [tasks[i] for i in indices]

    @cached_property
    def tasks(self) -> dict[int, str]:
        """task_index -> task text, from meta/tasks.jsonl (v2) or meta/tasks.parquet (v3; the task is the index)."""
        return self._tasks_v3() if self.is_v3 else self._tasks_v2[0]

    @cached_property
    def _tasks_v2(self) -> tuple[dict[int, str], list[tuple[Path, str]]]:
        """meta/tasks.jsonl's tasks, and its lines that give none (the file, why): read once, as a bad line fails only
        the episodes whose task it would give."""
        path = self.resolve(TASKS_V2)
        lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines() if path.is_file() else []
        tasks, bad_lines = {}, []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            entry, problem = json_line(line, number)
            if problem:
                bad_lines.append((path, problem))
            elif isinstance(entry, dict) and _is_int(entry.get("task_index")) and isinstance(entry.get("task"), str):
                tasks[entry["task_index"]] = entry["task"]
            else:
                bad_lines.append((path, f"line {number} has no integer 'task_index' and text 'task'"))
        return tasks, bad_lines

    def _tasks_v3(self) -> dict[int, str]:
        path = self.resolve(TASKS_V3)
        if not path.is_file():
            return {}
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise EpisodeError(path, f"cannot read parquet ({one_line(exc)})") from exc
        text = next((name for name in ("task", "__index_level_0__") if name in table.column_names), None)
        if text is None or "task_index" not in table.column_names:
            raise EpisodeError(path, f"expected columns 'task' and 'task_index', found {table.column_names}")
        return dict(zip(table.column("task_index").to_pylist(), table.column(text).to_pylist()))

    def _metadata(self, ref: EpisodeRef) -> dict[str, Any]:
        features = self.info["features"]
        others = {key: _per_value(flatten_names(feature.get("names")), feature.get("shape"))
                  or [f"{key}.{i}" for i in range(_declared_width(feature) or 1)]
                  for key, feature in features.items()
                  if key not in self.vector_keys and key not in DEFAULT_FEATURES
                  and str(feature.get("dtype", "")).startswith("float")}
        return {"relpath": ref.relpath, "codebase_version": self.info["codebase_version"],
                "episode_index": ref.locator["episode_index"], "robot_type": self.info.get("robot_type"),
                "state_features": list(self.vector_features["state"]),
                "action_features": list(self.vector_features["action"]), "other_features": others}


@dataclass
class ParquetImageCamera(EncodedImages):
    """Frames stored as PNG bytes in a parquet column (a LeRobot `image` feature: struct {bytes, path}).

    A file that holds many episodes (v3.0) is read through the reader's `EpisodeRows`, which parses its footer once
    and keeps a decoded row group for the episodes after it; the episode's images are read once for all its chunks.
    """

    name: str
    path: str
    column: str
    episode_index: int
    shared_file: bool
    num_frames: int
    rows: EpisodeRows = field(repr=False, compare=False)  # the reader's: where a shared file's rows are read

    @contextmanager
    def _opened(self) -> Iterator[Callable[[int], np.ndarray]]:
        cells = self._cells()
        yield lambda index: self._decode(cells[index], index)

    def _image_name(self, index: int) -> str:
        return f"'{self.column}' row {index} of episode {self.episode_index}"

    def _cells(self) -> list[Any]:
        try:
            if self.shared_file:
                table = self.rows.read(Path(self.path), self.episode_index, [self.column, "episode_index"])
            else:
                table = pq.read_table(self.path, columns=[self.column])
            cells = table.column(self.column).to_pylist()
        except (pa.ArrowException, OSError, KeyError) as exc:
            raise EpisodeError(self.path, f"cannot read image column '{self.column}' ({one_line(exc)})") from exc
        if len(cells) != self.num_frames:
            raise EpisodeError(self.path, f"'{self.column}' has {len(cells)} images, episode has {self.num_frames} frames")
        return cells

    def _decode(self, cell: Any, index: int) -> np.ndarray:
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        image = decode_image_bytes(data, imdecode_gives_rgb=False) if isinstance(data, bytes) and data else None
        if image is None:
            raise EpisodeError(self.path, f"'{self.column}' row {index} of episode {self.episode_index} holds no decodable image")
        return image


def column_as_matrix(column: pa.ChunkedArray, key: str, path: Path, declared_dtype: str | None = None,
                     dtype: type = np.float32) -> np.ndarray:
    """A parquet column of numeric scalars, fixed-size lists or nested lists as a [T, D] matrix (float32 unless told)."""
    values = column.combine_chunks()
    rows = len(values)
    if isinstance(values.type, pa.ExtensionType):  # HF datasets' Array2D, read so once `datasets` (LeRobot's) is imported
        values = values.storage
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
        if values.null_count:
            raise EpisodeError(path, f"'{key}' has missing rows")
        if not pa.types.is_fixed_size_list(values.type) and len(pc.unique(pc.list_value_length(values))) > 1:
            raise EpisodeError(path, f"'{key}' rows have different lengths")  # flattened, they would slide across rows
        values = values.flatten()
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_boolean(values.type)):
        declared = f", meta/info.json declares {declared_dtype}" if declared_dtype else ""
        raise EpisodeError(path, f"column '{key}' holds {values.type} values, not numbers{declared}")
    if values.null_count:
        raise EpisodeError(path, f"'{key}' has missing values")
    flat = values.to_numpy(zero_copy_only=False).astype(dtype)
    if rows == 0 or flat.size % rows:
        raise EpisodeError(path, f"'{key}' rows have different lengths")
    return flat.reshape(rows, -1)


def flatten_names(names: Any) -> list[str]:
    """Dimension names from a feature's `names`: a list, {"motors": [...]}, a nested list, or null."""
    if names is None:
        return []
    if isinstance(names, dict):
        return [name for value in names.values() for name in flatten_names(value)]
    if isinstance(names, (list, tuple)):
        return [name for value in names for name in flatten_names(value)]
    return [str(names)]


def _per_value(names: list[str], shape: Any) -> list[str]:
    """One name per value: a 2-D feature may name its rows only (`end.position` [2, 3] names `left_xyz`, `right_xyz`),
    and each row's values become `left_xyz.0` ... `left_xyz.2`."""
    if not (isinstance(shape, list) and len(shape) > 1 and len(names) == shape[0] and all(_is_int(n) for n in shape)):
        return names
    per_row = int(np.prod(shape[1:]))
    return [f"{name}.{i}" for name in names for i in range(per_row)]


def _declared_width(feature: dict[str, Any]) -> int | None:
    """Values per row that a feature's `shape` promises, or None when it declares no usable shape."""
    shape = feature.get("shape")
    if not isinstance(shape, list) or not shape or not all(_is_int(n) and n >= 0 for n in shape):
        return None
    return int(np.prod(shape))


def _refuse_other_episodes_rows(rows: pa.Table, episode_index: int, data_path: Path) -> None:
    """A v2 file named after one episode but holding another's rows (a file copied under another name) is refused:
    its rows would be built as this episode, beside its metadata's task and length."""
    if "episode_index" not in rows.column_names:
        return
    others = sorted({_as_int(i) for i in pc.unique(rows.column("episode_index")).to_pylist()} - {episode_index, None})
    if others:
        raise EpisodeError(data_path, f"holds rows of episode {others[0]}, the metadata names this file episode "
                                      f"{episode_index}'s")


def _refuse_shared_camera_names(path: Path, features: dict[str, Any]) -> None:
    """A SourceError where two camera features would give one camera name (`observation.images.top` and
    `observation.top`): one would silently take the other's place."""
    seen: dict[str, str] = {}
    for key, feature in features.items():
        if feature.get("dtype") in ("video", "image") and not _is_depth(feature):
            if (name := camera_name(key)) in seen:
                raise SourceError(f"{path}: features {seen[name]!r} and {key!r} both name camera {name!r}")
            seen[name] = key


def camera_name(key: str) -> str:
    for prefix in ("observation.images.", "observation."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_int(value: Any) -> int | None:
    """An integer, also from a float column holding whole numbers (pandas writes int columns with nulls as float)."""
    if _is_int(value):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _required_int(row: dict[str, Any], name: str) -> int:
    value = row.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"no value in column '{name}'")
    if _as_int(value) is None:
        raise ValueError(f"column '{name}' holds {value!r}, not an integer")
    return _as_int(value)


def _required_seconds(row: dict[str, Any], name: str) -> float:
    value = row.get(name)
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"column '{name}' holds {value!r}, not a time in seconds")
    return float(value)


def _optional_seconds(row: dict[str, Any], name: str) -> float | None:
    return None if row.get(name) is None else _required_seconds(row, name)


def _task_list(tasks: Any) -> list[str]:
    if isinstance(tasks, str):
        return [tasks]
    return [task for task in tasks if isinstance(task, str)] if isinstance(tasks, list) else []


def _check_template(info_path: Path, key: str, template: Any, fields: dict[str, Any]) -> None:
    if template is None:
        return
    if not isinstance(template, str):
        raise SourceError(f"{info_path}: '{key}' must be a path template, got {template!r}")
    try:
        template.format(**fields)
    except (KeyError, ValueError, IndexError, AttributeError) as exc:
        raise SourceError(f"{info_path}: '{key}' {template!r} is not a usable path template ({one_line(exc)})") from None


def _is_depth(feature: dict[str, Any]) -> bool:
    info = feature.get("info") if isinstance(feature.get("info"), dict) else {}
    if feature.get("is_depth_map") or info.get("video.is_depth_map") or info.get("is_depth_map"):
        return True
    shape = feature.get("shape")
    return isinstance(shape, list) and len(shape) == 3 and 1 in (shape[0], shape[-1])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = read_json(path)
    except EpisodeError as exc:  # wrong for every episode
        raise SourceError(str(exc)) from None
    if not isinstance(content, dict):
        raise SourceError(f"{path}: expected a JSON object")
    return content
