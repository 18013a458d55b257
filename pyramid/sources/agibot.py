"""AgiBot World (Alpha/Beta) unpacked release: `observations/<task>/<episode>/videos/*_color.mp4`
with `proprio_stats/<task>/<episode>/proprio_stats.h5` and `task_info/task_<task>.json`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pyramid.episode import Episode, EpisodeRef, VideoCamera
from pyramid.errors import EpisodeError, one_line
from pyramid.paths import symlink_problem
from pyramid.sources.base import Source, register
from pyramid.sources.json_file import read_json
from pyramid.sources.hdf5_file import open_hdf5, read_numeric

FALLBACK_FPS = 30.0  # FORMATS.md: the release is 30 Hz; used only when the head video states no rate
PRIMARY_CAMERA = "head"
VIDEO_SUFFIX = "_color.mp4"
TASKS_KEPT = 3  # task_info files kept parsed per reader (`_task_entries`)
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
        # A task's entries by episode id, of the last few tasks read: a worker reads a task's episodes one after
        # another, but a window can end inside a task, and parsing a task's JSON again costs as much as reading tens
        # of its episodes.
        self._task_entries = functools.lru_cache(maxsize=TASKS_KEPT)(self._read_task_entries)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "observations").is_dir() and ((root / "proprio_stats").is_dir() or (root / "task_info").is_dir())

    def discover(self) -> Iterator[EpisodeRef]:
        """Every `observations/<task>/<episode>` folder; a task whose task_info JSON is unreadable
        yields each of its episodes as an unreadable ref, and an entry without an id one of its own."""
        for task, refused in self._subfolders("observations"):
            if refused:
                yield self.unreadable(f"observations/{task}", refused)
                continue
            info_problem, bad_entries = self._task_info_problems(task)
            for episode, refused in self._subfolders(f"observations/{task}"):
                relpath = f"observations/{task}/{episode}"
                problem = refused or info_problem
                yield self.unreadable(relpath, problem) if problem else self.ref(relpath)
            for index, problem in bad_entries:
                yield self.unreadable(f"{_task_info_relpath(task)}#{index}", problem)

    def _subfolders(self, relative: str) -> Iterator[tuple[str, str | None]]:
        """(name, why it is refused or None) of each visible sub-folder, numeric ids in numeric order.

        A symlink that loops, or leaves the root without `follow_symlinks`, is listed with its problem
        instead of being entered.
        """
        folder = self.root / relative
        try:
            with os.scandir(folder) as entries:
                names = [entry.name for entry in entries
                         if not entry.name.startswith(".") and (entry.is_symlink() or entry.is_dir())]
        except OSError:
            return
        for name in sorted(names, key=_id_order):
            problem = symlink_problem(folder / name, self.root, self.follow_symlinks)
            if problem or (folder / name).is_dir():
                yield name, problem

    def _task_info_problems(self, task: str) -> tuple[str | None, list[tuple[int, str]]]:
        """Why the task's JSON is unusable as a whole (or None), and (index, problem) of each entry without an id."""
        relpath = _task_info_relpath(task)
        try:
            path = self.resolve(relpath)
            entries = _task_info_list(path)
        except EpisodeError as error:
            return f"{error.path}: {error.problem}", []
        return None, [(index, problem) for index, entry in enumerate(entries) if (problem := _entry_problem(index, entry))]

    def read(self, ref: EpisodeRef) -> Episode:
        task, episode_id = Path(ref.relpath).parts[-2:]
        proprio = _read_proprio(self.resolve(f"proprio_stats/{task}/{episode_id}/proprio_stats.h5"))
        num_frames = len(proprio["state"])
        cameras = self._open_cameras(f"{ref.relpath}/videos", num_frames)
        instructions, info = self._instructions(task, episode_id)
        dexhand = proprio["effector_dim"] == 12
        return Episode(
            episode_id=ref.episode_id,
            source=self.name,
            embodiment=self.embodiment("agibot_g1_dexhand" if dexhand else None),
            level=self.level,
            instructions=instructions,
            fps=_container_fps(next(iter(cameras.values()))),
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
                "depth_images": _count_depth_images(self.resolve(f"{ref.relpath}/depth")),
                **info,
            },
            path=str(ref.path),
        )

    def _open_cameras(self, videos: str, num_frames: int) -> dict[str, VideoCamera]:
        """Every `<camera>_color.mp4`, head first; each must have exactly one frame per proprio row."""
        folder = self.resolve(videos)
        names = sorted(path.name for path in folder.glob(f"*{VIDEO_SUFFIX}")) if folder.is_dir() else []
        if not names:
            raise EpisodeError(folder, f"no *{VIDEO_SUFFIX} videos")
        names.sort(key=lambda name: name != f"{PRIMARY_CAMERA}{VIDEO_SUFFIX}")
        cameras = {}
        for name in names:
            path = self.resolve(f"{videos}/{name}")
            camera = VideoCamera.open(name[: -len(VIDEO_SUFFIX)], path)
            if camera.num_frames != num_frames:
                raise EpisodeError(path, f"video has {camera.num_frames} frames but proprio_stats.h5 has {num_frames}")
            cameras[camera.name] = camera
        return cameras

    def _instructions(self, task: str, episode_id: str) -> tuple[list[str], dict[str, Any]]:
        """The task string (official converter: `task_name.init_scene_text`), then each segment's text."""
        entry = self._task_entries(task).get(episode_id)
        if entry is None:
            return [], {"task_info": "episode not listed"}
        name = _english_or(entry, "task_name")
        scene = _english_or(entry, "init_scene_text")
        task_info = self.root / _task_info_relpath(task)
        segments = [_segment(item, task_info) for item in _action_config(entry, task_info)]
        task_text = f"{name}.{scene}" if scene else name
        instructions = [text for text in [task_text, *(segment["text"] for segment in segments)] if text]
        return instructions, {"task_name": name, "init_scene_text": scene, "segments": segments}

    def _read_task_entries(self, task: str) -> dict[str, dict[str, Any]]:
        return _load_task_info(self.resolve(_task_info_relpath(task)))


def _container_fps(camera: VideoCamera) -> float:
    """The head video's own rate; only a missing (0) rate falls back to the documented 30 Hz.

    Any other value, however absurd (1e6, 0.001, NaN), is kept so `check_episode` reports it.
    """
    return camera.fps if camera.fps else FALLBACK_FPS


def _task_info_relpath(task: str) -> str:
    return f"task_info/task_{task}.json"


def _entry_problem(index: int, entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"task_info entry {index} is a {type(entry).__name__}, expected an object"
    if not _has_id(entry):
        return f"task_info entry {index} has no episode_id"
    return None


def _has_id(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("episode_id") not in (None, "")


def _task_info_list(path: Path) -> list[Any]:
    """The parsed task_info JSON list; [] when the file is absent (not every task is listed)."""
    if not path.is_file():
        return []
    entries = read_json(path)
    if not isinstance(entries, list):
        raise EpisodeError(path, f"task_info must be a JSON list, got {type(entries).__name__}")
    return entries


def _load_task_info(path: Path) -> dict[str, dict[str, Any]]:
    """task_info entries keyed by episode id as text; {} when the file is absent."""
    entries = _task_info_list(path)
    return {str(entry["episode_id"]): entry for entry in entries if _has_id(entry)}


def _action_config(entry: dict[str, Any], path: Path) -> list:
    """The entry's `label_info.action_config` list ([] when absent); anything else in their place is an error."""
    label_info = entry.get("label_info") or {}
    config = (label_info.get("action_config") or []) if isinstance(label_info, dict) else None
    if not isinstance(config, list):
        raise EpisodeError(path, f"episode {entry.get('episode_id')}: label_info must be an object holding an "
                                 f"action_config list, got {json.dumps(entry.get('label_info'))[:80]}")
    return config


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
    if not path.is_file():
        raise EpisodeError(path, "missing proprio_stats.h5")
    try:
        with open_hdf5(path) as file:
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
    except OSError as exc:  # a dataset whose bytes are cut off or corrupt
        raise EpisodeError(path, f"cannot read HDF5 ({one_line(exc)})") from exc
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
    values = read_numeric(file, path, key)
    widths = (2, 12) if part == "effector" else (len(STATE_PARTS[part]),)
    if values.ndim != 2 or values.shape[1] not in widths:
        raise EpisodeError(path, f"'{key}' has shape {values.shape}, expected (N, {' or '.join(map(str, widths))})")
    return values


def _reject_long_actions(file: Any, num_frames: int, path: Path) -> None:
    """Some released episodes carry more action rows than frames; they cannot be aligned, so they are corrupt."""
    import h5py

    action = file.get("action")
    for part, group in (action.items() if isinstance(action, h5py.Group) else []):
        for key, dataset in (group.items() if isinstance(group, h5py.Group) else []):
            if key != "index" and isinstance(dataset, h5py.Dataset) and dataset.ndim and dataset.shape[0] > num_frames:
                raise EpisodeError(path, f"'action/{part}/{key}' is longer ({dataset.shape[0]} rows) than {num_frames} frames")


def _full_action(file: Any, part: str, base: np.ndarray, path: Path, key: str = "position") -> tuple[np.ndarray, str]:
    """The action of one part over all N frames, and how it was completed ('' when stored in full).

    A short action (M < N rows) holds only the frames where that control source sent commands:
    it is scattered into a copy of `base` (the matching state; zeros for the base velocity) at
    `action/<part>/index`. An absent or empty action is `base` itself. The two-finger gripper is the exception:
    its command (0 open, 1 closed) and its state (opening in mm) differ in unit, so each command is held until
    the next, and an absent command is zeros.
    """
    name = f"action/{part}/{key}"
    values = read_numeric(file, path, name) if name in file else None
    gripper = part == "effector" and base.shape[1] == 2
    if values is None or values.size == 0:
        if gripper:  # the state is an opening in mm, the command 0 (open) .. 1 (closed): no unit to copy across
            return np.zeros_like(base), "missing: no gripper command, zeros (open)"
        return base.copy(), "missing: filled from state" if part != "robot" else "missing: zeros"
    if values.ndim != 2 or values.shape[1] != base.shape[1]:
        raise EpisodeError(path, f"'{name}' has shape {values.shape}, expected (N, {base.shape[1]}) like the state")
    if len(values) == len(base):
        return values, ""
    index, index_name = _action_index(file, part, path)
    if len(index) != len(values):
        raise EpisodeError(path, f"'{name}' has {len(values)} rows but '{index_name}' has {len(index)} entries")
    if index.size and (index.min() < 0 or index.max() >= len(base)):
        raise EpisodeError(path, f"'{index_name}' points outside the {len(base)} frames")
    if gripper:
        return _held_commands(values, index, len(base)), f"held {len(values)} commands over {len(base)} rows at {index_name}"
    full = base.copy()
    full[index] = values
    return full, f"scattered {len(values)} of {len(base)} rows at {index_name}"


def _held_commands(values: np.ndarray, index: np.ndarray, num_frames: int) -> np.ndarray:
    """Gripper commands at the frames they were sent, held until the next one (the first also covers the frames
    before it): a gripper keeps its last command, and its state (mm) is in another unit than the command (0..1)."""
    order = np.argsort(index, kind="stable")
    index, values = index[order], values[order]
    latest = np.searchsorted(index, np.arange(num_frames), side="right") - 1
    return values[np.maximum(latest, 0)]


def _action_index(file: Any, part: str, path: Path) -> tuple[np.ndarray, str]:
    """The part's own frame index. The release's empty `action/end/index`, which FORMATS.md and any4lerobot
    replace by `action/joint/index` (the arm controller commands both), concerns `end`, which is not read here;
    the gripper, head, waist and base have controllers of their own, so the joints' frames are no stand-in."""
    name = f"action/{part}/index"
    if name in file and (index := read_numeric(file, path, name)).size:
        return index.astype(np.int64).ravel(), name
    raise EpisodeError(path, f"'action/{part}' is shorter than the episode and has no frame index")


def _count_depth_images(depth: Path) -> int:
    """Head depth PNGs are optional (and reportedly sparse in Beta), so they are counted, not required."""
    if not depth.is_dir():
        return 0
    with os.scandir(depth) as entries:
        return sum(1 for entry in entries if entry.name.startswith("head_depth") and entry.name.endswith(".png"))


def _id_order(name: str) -> tuple:
    """Numeric ids in numeric order, then other names (isdecimal: '5²' is a digit string that int() refuses)."""
    return (0, int(name), "") if name.isdecimal() else (1, 0, name)
