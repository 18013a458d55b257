"""LeRobotDataset v2.0, v2.1 and v3.0 (huggingface/lerobot): parquet rows plus an mp4 per episode (v2) or per file (v3).

`observation.state` and `action` become state and actions. Every `video` feature is a camera, and
so is every `image` feature (PNG bytes embedded in the parquet). Other float vectors (for example
`observation.environment_state`) are not loaded: their dimension names are listed in
`metadata["other_features"]`. Layouts: /work/shared/formats.md section 5.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pyramid.episode import Episode, EpisodeRef, VideoCamera, decode_image_bytes
from pyramid.errors import EpisodeError, SourceError
from pyramid.sources.base import Source, register, walk_files

INFO = "meta/info.json"
STATE, ACTION = "observation.state", "action"
DEFAULT_FEATURES = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


@register
class LeRobotSource(Source):
    name = "lerobot"
    default_level = 5

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / INFO).is_file()

    @cached_property
    def info(self) -> dict[str, Any]:
        info = _read_json(self.root / INFO)
        version = str(info.get("codebase_version", ""))
        if not version.startswith(("v2.", "v3.")):
            raise SourceError(f"{self.root / INFO}: codebase_version {version!r} is not supported (v2.0, v2.1, v3.0 are)")
        if "fps" not in info or not isinstance(info.get("features"), dict):
            raise SourceError(f"{self.root / INFO}: needs 'fps' and 'features'")
        return info

    @property
    def is_v3(self) -> bool:
        return self.info["codebase_version"].startswith("v3.")

    def features_of(self, dtype: str) -> list[str]:
        return [key for key, feature in self.info["features"].items() if feature.get("dtype") == dtype]

    def discover(self) -> Iterator[EpisodeRef]:
        yield from self._discover_v3() if self.is_v3 else self._discover_v2()

    def _discover_v2(self) -> Iterator[EpisodeRef]:
        path = self.root / "meta/episodes.jsonl"
        if not path.is_file():
            raise SourceError(f"{path}: missing (LeRobot v2 lists its episodes there)")
        chunks_size = int(self.info.get("chunks_size", 1000))
        with path.open() as lines:  # streamed: a large dataset lists 10^5 episodes here
            for number, line in enumerate(lines, 1):
                if line.strip():
                    entry = _parse_line(path, number, line)
                    if not isinstance(entry.get("episode_index"), int):
                        raise EpisodeError(path, f"line {number} has no integer 'episode_index'")
                    yield self._ref_v2(entry, int(entry["episode_index"]), chunks_size)

    def _ref_v2(self, entry: dict[str, Any], index: int, chunks_size: int) -> EpisodeRef:
        place = {"episode_chunk": index // chunks_size, "episode_index": index}
        data = (self.info.get("data_path") or V2_DATA_PATH).format(**place)
        video_path = self.info.get("video_path") or V2_VIDEO_PATH
        videos = {key: {"file": video_path.format(video_key=key, **place), "from_timestamp": 0.0}
                  for key in self.features_of("video")}
        return self.ref(data, episode_index=index, length=entry.get("length"), tasks=list(entry.get("tasks") or []),
                        data_file=data, shared_file=False, videos=videos)

    def _discover_v3(self) -> Iterator[EpisodeRef]:
        files = walk_files(self.root / "meta/episodes", lambda name: name.endswith(".parquet"))
        found = False
        for path in files:
            found = True
            parquet = pq.ParquetFile(path)
            columns = [name for name in parquet.schema_arrow.names if not name.startswith("stats/")]
            for batch in parquet.iter_batches(batch_size=1024, columns=columns):
                for row in batch.to_pylist():
                    yield self._ref_v3(row, path)
        if not found:
            raise SourceError(f"{self.root / 'meta/episodes'}: no episode metadata parquet files")

    def _ref_v3(self, row: dict[str, Any], meta_path: Path) -> EpisodeRef:
        def column(name: str) -> Any:
            if row.get(name) is None:
                raise EpisodeError(meta_path, f"episode {row.get('episode_index')}: no value in column '{name}'")
            return row[name]

        index = int(column("episode_index"))
        data = (self.info.get("data_path") or V3_DATA_PATH).format(
            chunk_index=column("data/chunk_index"), file_index=column("data/file_index"))
        video_path = self.info.get("video_path") or V3_VIDEO_PATH
        videos = {key: {"file": video_path.format(video_key=key, chunk_index=column(f"videos/{key}/chunk_index"),
                                                  file_index=column(f"videos/{key}/file_index")),
                        "from_timestamp": float(column(f"videos/{key}/from_timestamp"))}
                  for key in self.features_of("video")}
        return self.ref(f"episodes/{index:06d}", episode_index=index, length=int(column("length")),
                        tasks=list(row.get("tasks") or []), data_file=data, shared_file=True, videos=videos)

    def read(self, ref: EpisodeRef) -> Episode:
        where = ref.locator
        data_path = self.root / where["data_file"]
        rows = self._episode_rows(data_path, where)
        length = rows.num_rows
        state, state_names = self._vector(rows, STATE, "state", data_path)
        actions, action_names = self._vector(rows, ACTION, "action", data_path)
        cameras = {**self._video_cameras(where, length), **self._image_cameras(data_path, where, length)}
        return Episode(
            episode_id=ref.episode_id,
            source=self.name,
            embodiment=self.embodiment(self.info.get("robot_type")),
            level=self.level,
            instructions=where["tasks"] or self._tasks_of(rows),
            fps=float(self.info["fps"]),
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
        wanted = [STATE, ACTION, "episode_index", "task_index"]
        try:
            schema = pq.read_schema(data_path)
            columns = [name for name in wanted if name in schema.names]
            episode_filter = [("episode_index", "=", where["episode_index"])] if where["shared_file"] else None
            rows = pq.read_table(data_path, columns=columns, filters=episode_filter)
        except (pa.ArrowException, OSError) as exc:
            raise EpisodeError(data_path, f"cannot read parquet ({exc})") from exc
        expected = where["length"]
        if rows.num_rows == 0 or (expected is not None and rows.num_rows != expected):
            raise EpisodeError(data_path, f"episode {where['episode_index']} has {rows.num_rows} rows, "
                                          f"its metadata says length {expected}")
        return rows

    def _vector(self, rows: pa.Table, key: str, prefix: str, data_path: Path) -> tuple[np.ndarray | None, list[str]]:
        if key not in rows.column_names:
            return None, []
        values = column_as_matrix(rows.column(key), key, data_path)
        return values, self.dimension_names(key, values.shape[1], prefix)

    def dimension_names(self, key: str, dim: int, prefix: str) -> list[str]:
        names = flatten_names(self.info["features"].get(key, {}).get("names"))
        if not names:
            return [f"{prefix}.{i}" for i in range(dim)]
        if len(names) != dim:
            raise EpisodeError(self.root / INFO, f"'{key}' lists {len(names)} names but its data has {dim} dims")
        return names

    def _video_cameras(self, where: dict[str, Any], length: int) -> dict[str, VideoCamera]:
        cameras = {}
        for key, video in where["videos"].items():
            path = self.root / video["file"]
            if not path.is_file():
                raise EpisodeError(path, f"missing video of '{key}' for episode {where['episode_index']}")
            fps = float(self.info["features"][key].get("info", {}).get("video.fps") or self.info["fps"])
            offset = int(round(video["from_timestamp"] * fps))
            cameras[camera_name(key)] = VideoCamera.open(camera_name(key), path, frame_offset=offset, num_frames=length)
        return cameras

    def _image_cameras(self, data_path: Path, where: dict[str, Any], length: int) -> dict[str, "ParquetImageCamera"]:
        return {camera_name(key): ParquetImageCamera(camera_name(key), str(data_path), key, where["episode_index"],
                                                     where["shared_file"], length)
                for key in self.features_of("image")}

    def _tasks_of(self, rows: pa.Table) -> list[str]:
        if "task_index" not in rows.column_names:
            return []
        indices = dict.fromkeys(int(i) for i in rows.column("task_index").to_pylist() if i is not None)
        return [self.tasks[i] for i in indices if i in self.tasks]

    @cached_property
    def tasks(self) -> dict[int, str]:
        """task_index -> task text, from meta/tasks.jsonl (v2) or meta/tasks.parquet (v3; the task is the index)."""
        if not self.is_v3:
            path = self.root / "meta/tasks.jsonl"
            lines = path.read_text().splitlines() if path.is_file() else []
            entries = [_parse_line(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
            return {int(entry["task_index"]): str(entry["task"]) for entry in entries}
        path = self.root / "meta/tasks.parquet"
        if not path.is_file():
            return {}
        table = pq.read_table(path)
        text = next((name for name in ("task", "__index_level_0__") if name in table.column_names), None)
        if text is None or "task_index" not in table.column_names:
            raise EpisodeError(path, f"expected columns 'task' and 'task_index', found {table.column_names}")
        return dict(zip(table.column("task_index").to_pylist(), table.column(text).to_pylist()))

    def _metadata(self, ref: EpisodeRef) -> dict[str, Any]:
        features = self.info["features"]
        others = {key: flatten_names(feature.get("names")) or [f"{key}.{i}" for i in range(_size(feature))]
                  for key, feature in features.items()
                  if key not in (STATE, ACTION) and key not in DEFAULT_FEATURES
                  and str(feature.get("dtype", "")).startswith("float")}
        return {"relpath": ref.relpath, "codebase_version": self.info["codebase_version"],
                "episode_index": ref.locator["episode_index"], "robot_type": self.info.get("robot_type"),
                "other_features": others}


@dataclass
class ParquetImageCamera:
    """Frames stored as PNG bytes in a parquet column (a LeRobot `image` feature: struct {bytes, path})."""

    name: str
    path: str
    column: str
    episode_index: int
    shared_file: bool
    num_frames: int

    def frames(self, indices: Sequence[int] | None = None) -> np.ndarray:
        local = list(range(self.num_frames)) if indices is None else [int(i) for i in indices]
        outside = [i for i in local if not 0 <= i < self.num_frames]
        if outside:
            raise EpisodeError(self.path, f"frame {outside[0]} out of range (camera has {self.num_frames} frames)")
        cells = self._cells()
        images = [self._decode(cells[i], i) for i in local]
        return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)

    def _cells(self) -> list[Any]:
        episode_filter = [("episode_index", "=", self.episode_index)] if self.shared_file else None
        try:
            cells = pq.read_table(self.path, columns=[self.column], filters=episode_filter).column(self.column).to_pylist()
        except (pa.ArrowException, OSError, KeyError) as exc:
            raise EpisodeError(self.path, f"cannot read image column '{self.column}' ({exc})") from exc
        if len(cells) != self.num_frames:
            raise EpisodeError(self.path, f"'{self.column}' has {len(cells)} images, episode has {self.num_frames} frames")
        return cells

    def _decode(self, cell: Any, index: int) -> np.ndarray:
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        image = decode_image_bytes(data, imdecode_gives_rgb=False) if data else None
        if image is None:
            raise EpisodeError(self.path, f"'{self.column}' row {index} of episode {self.episode_index} holds no decodable image")
        return image


def column_as_matrix(column: pa.ChunkedArray, key: str, path: Path) -> np.ndarray:
    """A parquet column of scalars, fixed-size lists or nested lists as float32 [T, D]."""
    values = column.combine_chunks()
    rows = len(values)
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
        if values.null_count:
            raise EpisodeError(path, f"'{key}' has missing rows")
        values = values.flatten()
    if values.null_count:
        raise EpisodeError(path, f"'{key}' has missing values")
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32)
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


def _size(feature: dict[str, Any]) -> int:
    return int(np.prod(feature.get("shape") or [1]))


def camera_name(key: str) -> str:
    for prefix in ("observation.images.", "observation."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: cannot read JSON ({exc})") from exc


def _parse_line(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise EpisodeError(path, f"line {number} is not JSON ({exc.msg})") from exc
