"""AgiBot World (Alpha/Beta) unpacked release: `observations/<task>/<episode>/videos/*_color.mp4`
with `proprio_stats/<task>/<episode>/proprio_stats.h5` and `task_info/task_<task>.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pyramid.episode import Episode, EpisodeRef, VideoCamera
from pyramid.errors import EpisodeError
from pyramid.sources.base import Source, register

FALLBACK_FPS = 30.0
PRIMARY_CAMERA = "head"
VIDEO_SUFFIX = "_color.mp4"
GRIPPER_NAMES = ["effector.left_gripper", "effector.right_gripper"]
DEXHAND_NAMES = [f"effector.left_hand_{i}" for i in range(6)] + [f"effector.right_hand_{i}" for i in range(6)]
# The parts of the official converter's state vector, in its order; the effector is 2 (gripper) or 12 (dexhand) wide.
STATE_PARTS = {
    "joint": [f"joint.left_arm_{i}" for i in range(7)] + [f"joint.right_arm_{i}" for i in range(7)],
    "effector": GRIPPER_NAMES,
    "head": ["head.yaw", "head.pitch"],
    "waist": ["waist.pitch", "waist.lift"],
}
# The official converter appends the base velocity command to the action vector.
ROBOT_VELOCITY_NAMES = ["robot.linear_velocity_x", "robot.yaw_rate"]


@register
class AgiBotSource(Source):
    name = "agibot"
    default_level = 5
    default_embodiment = "agibot_g1"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._task_info: dict[str, dict[str, dict[str, Any]]] = {}

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "observations").is_dir() and ((root / "proprio_stats").is_dir() or (root / "task_info").is_dir())

    def discover(self) -> Iterator[EpisodeRef]:
        observations = self.root / "observations"
        for task in _subfolders(observations):
            for episode in _subfolders(observations / task):
                yield self.ref(f"observations/{task}/{episode}")

    def read(self, ref: EpisodeRef) -> Episode:
        task, episode_id = Path(ref.relpath).parts[-2:]
        proprio = _read_proprio(self.root / "proprio_stats" / task / episode_id / "proprio_stats.h5")
        num_frames = len(proprio["state"])
        cameras = _open_cameras(ref.path / "videos", num_frames)
        instructions, info = self._instructions(task, episode_id)
        dexhand = proprio["effector_dim"] == 12
        return Episode(
            episode_id=ref.episode_id,
            source=self.name,
            embodiment=self.embodiment("agibot_g1_dexhand" if dexhand else None),
            level=self.level,
            instructions=instructions,
            fps=next(iter(cameras.values())).fps or FALLBACK_FPS,
            num_frames=num_frames,
            cameras=cameras,
            state=proprio["state"],
            state_names=proprio["state_names"],
            actions=proprio["actions"],
            action_names=proprio["action_names"],
            metadata={
                "relpath": ref.relpath,
                "task_id": task,
                "agibot_episode_id": episode_id,
                "actions_filled": proprio["actions_filled"],
                "depth_images": _count_depth_images(ref.path / "depth"),
                **info,
            },
            path=str(ref.path),
        )

    def _instructions(self, task: str, episode_id: str) -> tuple[list[str], dict[str, Any]]:
        """The task string (official converter: `task_name.init_scene_text`), then each segment's text."""
        entry = self._task_entries(task).get(episode_id)
        if entry is None:
            return [], {"task_info": "episode not listed"}
        name = _english_or(entry, "task_name")
        scene = _english_or(entry, "init_scene_text")
        task_info = self.root / "task_info" / f"task_{task}.json"
        segments = [_segment(item, task_info) for item in (entry.get("label_info") or {}).get("action_config") or []]
        task_text = f"{name}.{scene}" if scene else name
        instructions = [text for text in [task_text, *(segment["text"] for segment in segments)] if text]
        return instructions, {"task_name": name, "init_scene_text": scene, "segments": segments}

    def _task_entries(self, task: str) -> dict[str, dict[str, Any]]:
        if task not in self._task_info:
            self._task_info = {task: _load_task_info(self.root / "task_info" / f"task_{task}.json")}
        return self._task_info[task]


def _load_task_info(path: Path) -> dict[str, dict[str, Any]]:
    """task_info JSON (a list of per-episode objects) keyed by episode id as text; {} when the file is absent."""
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EpisodeError(path, f"unreadable task_info JSON ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(entries, list):
        raise EpisodeError(path, f"task_info must be a JSON list, got {type(entries).__name__}")
    return {str(entry["episode_id"]): entry for entry in entries if isinstance(entry, dict) and "episode_id" in entry}


def _segment(item: Any, path: Path) -> dict[str, Any]:
    try:
        return {"start_frame": int(item["start_frame"]), "end_frame": int(item["end_frame"]),
                "text": _english_or(item, "action_text")}
    except (KeyError, TypeError, ValueError) as exc:
        raise EpisodeError(path, f"malformed action_config entry {item!r}"[:200]) from exc


def _english_or(entry: dict[str, Any], key: str) -> str:
    """Later releases add `english_<key>` beside a possibly Chinese `<key>`; prefer the English text."""
    return str(entry.get(f"english_{key}") or entry.get(key) or "").strip()


def _read_proprio(path: Path) -> dict[str, Any]:
    import h5py

    if not path.is_file():
        raise EpisodeError(path, "missing proprio_stats.h5")
    try:
        with h5py.File(path, "r") as file:
            state_parts = {part: _state_part(file, part, path) for part in STATE_PARTS}
            num_frames = len(state_parts["joint"])
            for part, values in state_parts.items():
                if len(values) != num_frames:
                    raise EpisodeError(path, f"'state/{part}/position' has {len(values)} rows, joint has {num_frames}")
            _reject_long_actions(file, num_frames, path)
            action_parts, filled = {}, {}
            for part, values in state_parts.items():
                action_parts[part], filled[part] = _full_action(file, part, values, path)
            no_motion = np.zeros((num_frames, len(ROBOT_VELOCITY_NAMES)))
            action_parts["robot"], filled["robot"] = _full_action(file, "robot", no_motion, path, key="velocity")
    except OSError as exc:
        raise EpisodeError(path, f"cannot open HDF5 ({exc})") from exc
    effector_dim = state_parts["effector"].shape[1]
    names = [name for part, part_names in STATE_PARTS.items()
             for name in (DEXHAND_NAMES if part == "effector" and effector_dim == 12 else part_names)]
    return {
        "state": np.concatenate(list(state_parts.values()), axis=1).astype(np.float32),
        "state_names": names,
        "actions": np.concatenate(list(action_parts.values()), axis=1).astype(np.float32),
        "action_names": names + ROBOT_VELOCITY_NAMES,
        "actions_filled": {part: how for part, how in filled.items() if how},
        "effector_dim": effector_dim,
    }


def _state_part(file: Any, part: str, path: Path) -> np.ndarray:
    key = f"state/{part}/position"
    if key not in file:
        raise EpisodeError(path, f"missing dataset '{key}'")
    values = np.asarray(file[key], dtype=np.float64)
    widths = (2, 12) if part == "effector" else (len(STATE_PARTS[part]),)
    if values.ndim != 2 or values.shape[1] not in widths:
        raise EpisodeError(path, f"'{key}' has shape {values.shape}, expected (N, {' or '.join(map(str, widths))})")
    return values


def _reject_long_actions(file: Any, num_frames: int, path: Path) -> None:
    """Some released episodes carry more action rows than frames; they cannot be aligned, so they are corrupt."""
    import h5py

    for part, group in (file["action"].items() if "action" in file else []):
        for key, dataset in (group.items() if isinstance(group, h5py.Group) else []):
            if key != "index" and isinstance(dataset, h5py.Dataset) and dataset.ndim and dataset.shape[0] > num_frames:
                raise EpisodeError(path, f"'action/{part}/{key}' is longer ({dataset.shape[0]} rows) than {num_frames} frames")


def _full_action(file: Any, part: str, base: np.ndarray, path: Path, key: str = "position") -> tuple[np.ndarray, str]:
    """The action of one part over all N frames, and how it was completed ('' when stored in full).

    A short action (M < N rows) holds only the frames where that control source sent commands:
    it is scattered into a copy of `base` (the matching state; zeros for the base velocity) at
    `action/<part>/index`, falling back to `action/joint/index` when that is empty (as any4lerobot does).
    An absent or empty action is `base` itself.
    """
    name = f"action/{part}/{key}"
    if name not in file or file[name].size == 0:
        return base.copy(), "missing: filled from state" if part != "robot" else "missing: zeros"
    values = np.asarray(file[name], dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != base.shape[1]:
        raise EpisodeError(path, f"'{name}' has shape {values.shape}, expected (N, {base.shape[1]}) like the state")
    if len(values) == len(base):
        return values, ""
    index, index_name = _action_index(file, part, path)
    if len(index) != len(values):
        raise EpisodeError(path, f"'{name}' has {len(values)} rows but '{index_name}' has {len(index)} entries")
    if index.size and (index.min() < 0 or index.max() >= len(base)):
        raise EpisodeError(path, f"'{index_name}' points outside the {len(base)} frames")
    full = base.copy()
    full[index] = values
    return full, f"scattered {len(values)} of {len(base)} rows at {index_name}"


def _action_index(file: Any, part: str, path: Path) -> tuple[np.ndarray, str]:
    for name in (f"action/{part}/index", "action/joint/index"):
        if name in file and file[name].size:
            return np.asarray(file[name], dtype=np.int64).ravel(), name
    raise EpisodeError(path, f"'action/{part}' is shorter than the episode and has no frame index")


def _open_cameras(videos: Path, num_frames: int) -> dict[str, VideoCamera]:
    """Every `<camera>_color.mp4`, head first; each must have exactly one frame per proprio row."""
    paths = sorted(videos.glob(f"*{VIDEO_SUFFIX}")) if videos.is_dir() else []
    if not paths:
        raise EpisodeError(videos, f"no *{VIDEO_SUFFIX} videos")
    paths.sort(key=lambda p: p.name != f"{PRIMARY_CAMERA}{VIDEO_SUFFIX}")
    cameras = {}
    for path in paths:
        camera = VideoCamera.open(path.name[: -len(VIDEO_SUFFIX)], path)
        if camera.num_frames != num_frames:
            raise EpisodeError(path, f"video has {camera.num_frames} frames but proprio_stats.h5 has {num_frames}")
        cameras[camera.name] = camera
    return cameras


def _count_depth_images(depth: Path) -> int:
    """Head depth PNGs are optional (and reportedly sparse in Beta), so they are counted, not required."""
    if not depth.is_dir():
        return 0
    with os.scandir(depth) as entries:
        return sum(1 for entry in entries if entry.name.startswith("head_depth") and entry.name.endswith(".png"))


def _subfolders(folder: Path) -> Iterator[str]:
    """Names of the visible sub-folders, numeric ids in numeric order."""
    try:
        with os.scandir(folder) as entries:
            names = [entry.name for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    except OSError:
        return
    yield from sorted(names, key=lambda name: (0, int(name), "") if name.isdigit() else (1, 0, name))
