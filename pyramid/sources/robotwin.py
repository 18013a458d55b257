"""RoboTwin 2.0 (SAPIEN simulation): one HDF5 per episode, either the legacy 2025 `data/episode<N>.hdf5`
or the 2026 XPolicyLab `data/episode_0000000.hdf5`; the format is told apart per file.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pyramid.episode import Episode, EpisodeRef, ImageSequenceCamera
from pyramid.errors import EpisodeError, one_line
from pyramid.paths import symlink_problem
from pyramid.sources.base import Source, register
from pyramid.sources.json_file import JSON_FAILURES, read_json
from pyramid.sources.hdf5_file import open_hdf5, read_numeric

EPISODE_FILE = re.compile(r"episode_?(\d+)\.hdf5")
PHYSICS_HZ = 250  # SAPIEN steps of 1/250 s; a frame is saved every `save_freq` steps (spacing not uniform)
NOMINAL_FPS = PHYSICS_HZ / 15  # the task configs' save_freq
LEGACY_CAMERAS = ("head_camera", "left_camera", "right_camera", "front_camera")
XPOLICYLAB_CAMERAS = ("cam_head", "cam_left_wrist", "cam_right_wrist", "cam_third_view")
XPOLICYLAB_JOINTS = ("left_arm_joint_states", "left_ee_joint_states", "right_arm_joint_states", "right_ee_joint_states")
# Folder-name prefixes (HF sets `<embodiment>_clean_50`, XPolicyLab `aloha_agilex/`) -> RoboTwin embodiment names.
EMBODIMENT_PREFIXES = {"aloha-agilex": "aloha-agilex", "arx-x5": "arx-x5", "franka-panda": "franka-panda",
                       "franka": "franka-panda", "piper": "piper", "ur5-wsg": "ur5-wsg", "ur5": "ur5-wsg"}
SIXTEEN_DOF_EMBODIMENT = "franka-panda"  # the one 7+1-per-arm robot; the others are 6+1 per arm
NOT_EPISODE_FOLDERS = {"_traj_data", "video", "instructions"}
CONFIG_FILES_KEPT = 8  # parsed side files per reader: seed.txt and scene_info.json of 4 config folders
DETECT_DEPTH, DETECT_BREADTH = 5, 3


def _prune(name: str) -> bool:
    return name.startswith(".") or name in NOT_EPISODE_FOLDERS


@register
class RoboTwinSource(Source):
    """Option `fps`: overrides the rate (legacy files store none: 250/15 Hz nominal; XPolicyLab files store
    `additional_info/frequency`, which RoboTwin's writers fill with `save_freq`, physics steps per saved frame)."""

    name = "robotwin"
    default_level = 3
    default_embodiment = "aloha-agilex"

    def __init__(self, root, level=None, embodiment=None, *, fps: float | None = None, **options: Any):
        super().__init__(root, level, embodiment, **options)
        self.fps = None if fps is None else float(fps)
        # scene_info.json / seed.txt of the last few config folders read (a worker reads a folder's episodes one after
        # another; a release has hundreds of folders, each scene_info.json megabytes parsed): the content, None when
        # absent, or the EpisodeError it raised
        self._config_files = functools.lru_cache(maxsize=CONFIG_FILES_KEPT)(self._parse_side_file)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return _finds_episode_folder(root, root, DETECT_DEPTH)

    def discover(self) -> Iterator[EpisodeRef]:
        for item in self.walk(self.root, lambda name: EPISODE_FILE.fullmatch(name) is not None, _prune):
            if isinstance(item, EpisodeRef):
                yield item  # a symlink not followed (a loop, or out of the root): unreadable, discovery goes on
            elif item.parent.name == "data":
                yield self.ref(item.relative_to(self.root))

    def read(self, ref: EpisodeRef) -> Episode:
        path = self.resolve(ref.relpath)
        with open_hdf5(path) as file:
            if "data_format_version" in file or "vision" in file:
                fields = _read_xpolicylab(file, path)
            elif "joint_action" in file or "observation" in file:
                fields = _read_legacy(file, path)
                fields["instructions"] = self._legacy_instructions(ref)
                fields["metadata"].update(self._legacy_context(ref))
            else:
                raise EpisodeError(path, "neither legacy RoboTwin (observation/, joint_action/) nor XPolicyLab (vision/, state/)")
        embodiment, embodiment_from = _embodiment_of(path, fields["state"].shape[1])
        metadata = {"relpath": ref.relpath, "embodiment_from": embodiment_from, **fields["metadata"]}
        if self.fps is not None:  # an fps of 0 is kept, for check_episode to refuse as implausible
            metadata["fps_from"] = "option"
        return Episode(
            episode_id=ref.episode_id,
            source=self.name,
            embodiment=self.embodiment(embodiment),
            level=self.level,
            instructions=fields["instructions"],
            fps=fields["fps"] if self.fps is None else self.fps,
            num_frames=len(fields["state"]),
            cameras=fields["cameras"],
            state=fields["state"],
            state_names=fields["names"],
            actions=fields["actions"],
            action_names=fields["names"],
            metadata=metadata,
            path=str(path),
        )

    def _legacy_context(self, ref: EpisodeRef) -> dict[str, Any]:
        """Seed, scene description and video of a legacy episode, from the files beside `data/`."""
        path, number = ref.path, _episode_number(ref.path)
        config_folder = path.parent.parent
        context: dict[str, Any] = {"task_folder": config_folder.parent.name, "config_folder": config_folder.name,
                                   "episode_index": number}
        beside = _config_folder(ref)
        if beside is None:
            return context  # the root is the data/ folder itself: its side files lie outside the root
        seeds = self._config_file(beside / "seed.txt", _read_seeds)
        if seeds and number < len(seeds):
            seed = seeds[number]
            if isinstance(seed, EpisodeError):
                raise EpisodeError(seed.path, seed.problem)
            context["seed"] = seed
        # One JSON document for the whole config folder: invalid JSON fails each of its episodes, naming the file and line.
        scenes = self._config_file(beside / "scene_info.json", read_json)
        if isinstance(scenes, dict) and f"episode_{number}" in scenes:
            context["scene_info"] = scenes[f"episode_{number}"]
        video = self.root / beside / "video" / f"episode{number}.mp4"
        if video.is_file():
            # head camera only, re-encoded at 30 fps whatever the real rate: the HDF5 frames stay the source
            context["video"] = (beside / "video" / video.name).as_posix()
        return context

    def _config_file(self, relative: Path, parse) -> Any:
        found = self._config_files(relative, parse)
        if isinstance(found, EpisodeError):
            raise EpisodeError(found.path, found.problem)
        return found

    def _parse_side_file(self, relative: Path, parse) -> Any:
        """`parse(path)` of a side file inside the root; None when absent, the EpisodeError when unusable."""
        if not (self.root / relative).is_file():
            return None
        try:
            return parse(self.resolve(relative))  # a side file linked out of the root is refused like an episode
        except EpisodeError as error:
            return error
        except (OSError, ValueError) as error:  # unreadable, or not UTF-8 text
            return EpisodeError(self.root / relative, f"unreadable ({one_line(error)})")

    def _legacy_instructions(self, ref: EpisodeRef) -> list[str]:
        """`instructions/episode<N>.json` beside `data/`: {"seen": [...], "unseen": [...]}, written after collection.

        One file per episode, so a broken one fails only its own episode, naming the file and line.
        """
        beside = _config_folder(ref)
        if beside is None:
            return []
        found = self._parse_side_file(beside / "instructions" / f"episode{_episode_number(ref.path)}.json", _read_instructions)
        if isinstance(found, EpisodeError):
            raise found
        return found or []


def _read_legacy(file, path: Path) -> dict[str, Any]:
    """RoboTwin's policy convention, as its XPolicyLab writers store it: the state at t is the commanded
    `joint_action/vector` at t and the action the vector at t+1. The last frame, with no next target, is left out
    (no made-up action), so a legacy file and its XPolicyLab conversion read alike."""
    vector = read_numeric(file, path, "joint_action/vector")
    if vector.ndim != 2 or vector.shape[0] < 2 or vector.shape[1] < 4 or vector.shape[1] % 2:
        raise EpisodeError(path, f"'joint_action/vector' has shape {vector.shape}, expected (T >= 2, 2 * (arm joints + 1))")
    cameras = _legacy_cameras(file, path, len(vector))
    arm_joints = vector.shape[1] // 2 - 1
    names = [f"{side}_{part}" for side in ("left", "right") for part in (*(f"arm_{i}" for i in range(arm_joints)), "gripper")]
    metadata = {"format": "robotwin-legacy", "fps_from": "nominal 250/15 Hz",
                "action_convention": "joint_action/vector[t+1]; the last frame, with no next target, left out"}
    return {"state": vector[:-1], "actions": vector[1:], "names": names, "cameras": cameras, "fps": NOMINAL_FPS,
            "metadata": metadata}


def _legacy_cameras(file, path: Path, num_frames: int) -> dict[str, ImageSequenceCamera]:
    import h5py

    group = file.get("observation")
    stored = {}
    if isinstance(group, h5py.Group):
        stored = {name: f"observation/{name}/rgb" for name in group if f"observation/{name}/rgb" in file}
    if "third_view_rgb" in file:
        stored["third_view"] = "third_view_rgb"
    return _cameras(file, path, stored, LEGACY_CAMERAS, num_frames, kept=num_frames - 1)


def _read_xpolicylab(file, path: Path) -> dict[str, Any]:
    """State and action are stored already paired (frames [:-1] and [1:]), T-1 rows each, like the frames."""
    present = [key for key in XPOLICYLAB_JOINTS if f"state/{key}" in file]
    if not present:
        raise EpisodeError(path, f"no joint states under 'state/' (expected some of {', '.join(XPOLICYLAB_JOINTS)})")
    state = np.concatenate([_matrix(file, path, f"state/{key}") for key in present], axis=1)
    actions = np.concatenate([_matrix(file, path, f"action/{key}") for key in present], axis=1)
    if actions.shape != state.shape:
        raise EpisodeError(path, f"action has shape {actions.shape} but state has {state.shape}")
    names = [name for key in present for name in _xpolicylab_names(key, file[f"state/{key}"])]
    stored = {name: f"vision/{name}/colors" for name in file.get("vision", {}) if f"vision/{name}/colors" in file}
    cameras = _cameras(file, path, stored, XPOLICYLAB_CAMERAS, len(state))
    fps, fps_from = _xpolicylab_rate(file, path)
    metadata = {"format": "robotwin-xpolicylab", "data_format_version": _text(file.get("data_format_version")),
                "fps_from": fps_from, "action_convention": "stored action/ (the next frame's joint targets)"}
    return {"state": state, "actions": actions, "names": names, "cameras": cameras, "fps": fps,
            "metadata": metadata, "instructions": _xpolicylab_instructions(file, path)}


def _xpolicylab_rate(file, path: Path) -> tuple[float, str]:
    """(frames per second, where it came from). RoboTwin's own writers (attribute `source_format="RoboTwin"`) store
    `save_freq` as `additional_info/frequency`: physics steps per saved frame, 15 in the task configs, so 250/15 Hz;
    another writer's value is taken as Hz. A 0 or NaN is kept for check_episode to refuse, never replaced."""
    if "additional_info/frequency" not in file:
        return NOMINAL_FPS, "nominal 250/15 Hz"
    value = read_numeric(file, path, "additional_info/frequency")
    if value.size != 1:
        raise EpisodeError(path, f"'additional_info/frequency' has shape {value.shape}, expected one number")
    frequency = float(value.ravel()[0])
    if _as_text(file.attrs.get("source_format", "")) != "RoboTwin":
        return frequency, "additional_info/frequency"
    rate = PHYSICS_HZ / frequency if frequency > 0 else frequency
    return rate, f"250 Hz physics / additional_info/frequency ({frequency:g} steps per frame, RoboTwin's save_freq)"


def _as_text(value: Any) -> str:
    """An attribute or array element as h5py gives it, bytes or str, as str (undecodable bytes replaced)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _xpolicylab_names(key: str, data) -> list[str]:
    side, part = key.split("_", 1)
    width = 1 if data.ndim == 1 else int(data.shape[1])
    if part.startswith("ee_") and width == 1:
        return [f"{side}_gripper"]
    kind = "arm" if part.startswith("arm_") else "ee"
    return [f"{side}_{kind}_{i}" for i in range(width)]


def _matrix(file, path: Path, key: str) -> np.ndarray:
    rows = read_numeric(file, path, key)
    rows = rows[:, None] if rows.ndim == 1 else rows
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise EpisodeError(path, f"'{key}' has shape {rows.shape}, expected (T, D)")
    return rows


def _cameras(file, path: Path, stored: dict[str, str], preferred: tuple[str, ...], num_frames: int,
             kept: int | None = None) -> dict[str, ImageSequenceCamera]:
    """JPEG cameras in preferred order, each holding `num_frames` of which the first `kept` (all by default) are read;
    `cv2.imencode` was given RGB arrays, so `cv2.imdecode` returns RGB."""
    import h5py

    order = [name for name in preferred if name in stored] + sorted(set(stored) - set(preferred))
    cameras = {}
    for name in order:
        data = file[stored[name]]
        if not isinstance(data, h5py.Dataset) or data.ndim != 1:
            raise EpisodeError(path, f"'{stored[name]}' is not a 1-D dataset of encoded images")
        count = int(data.shape[0])
        if count == 0:
            continue
        if count != num_frames:
            raise EpisodeError(path, f"'{stored[name]}' has {count} frames but the joint arrays have {num_frames} rows")
        cameras[name] = ImageSequenceCamera(name, str(path), stored[name], count if kept is None else kept, imdecode_gives_rgb=True)
    if not cameras:
        raise EpisodeError(path, "no RGB camera with frames")
    return cameras


def _config_folder(ref: EpisodeRef) -> Path | None:
    """The folder holding `data/` (with seed.txt, scene_info.json, instructions/), relative to the root; None above it."""
    relpath = Path(ref.relpath)
    return relpath.parent.parent if len(relpath.parts) >= 2 else None


def _read_instructions(path: Path) -> list[str]:
    content = read_json(path)
    lists = [content.get(key, []) for key in ("seen", "unseen")] if isinstance(content, dict) else None
    if lists is None or not all(isinstance(texts, list) for texts in lists):
        raise EpisodeError(path, 'expected {"seen": [...], "unseen": [...]}')
    return [str(text) for texts in lists for text in texts if str(text).strip()]


def _read_seeds(path: Path) -> list[int | EpisodeError]:
    """Seeds by episode number. They are positional, so a bad token costs only the episode at its position:
    that episode fails naming the file and the token; the others keep their seeds."""
    seeds: list[int | EpisodeError] = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        for token in line.split():
            try:
                seeds.append(int(token))
            except ValueError:
                seeds.append(EpisodeError(path, f"line {line_number}: seed {len(seeds)} is {token[:40]!r}, not an integer"))
    return seeds


def _xpolicylab_instructions(file, path: Path) -> list[str]:
    """`instructions` as RoboTwin's writers store it: one JSON-encoded list (the native writer), or an array of
    strings (its converter's default); else the converter's single `instruction`."""
    import h5py

    stored = file.get("instructions")
    if not isinstance(stored, h5py.Dataset):
        single = _text(file.get("instruction"))
        return [single] if single and single.strip() else []
    if stored.ndim == 0:
        try:
            values = json.loads(_text(stored))
        except JSON_FAILURES:
            raise EpisodeError(path, "'instructions' is not a JSON list of strings") from None
        values = values if isinstance(values, list) else [values]
    elif stored.ndim == 1 and stored.dtype.kind in "SOU":
        values = [_as_text(value) for value in stored[()]]
    else:
        raise EpisodeError(path, f"'instructions' has shape {stored.shape} and dtype {stored.dtype}, expected text")
    return [str(text) for text in values if str(text).strip()]


def _text(dataset) -> str | None:
    if dataset is None:
        return None
    value = dataset[()]
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else b""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _embodiment_of(path: Path, state_width: int) -> tuple[str | None, str]:
    """From the folder holding `data/` (`aloha-agilex_clean_50`, `aloha_agilex`) where the state width agrees (16
    values a frame are franka-panda's, 14 any other's: XPolicyLab's converter names its output `aloha_agilex/`
    whatever the robot), else from the state width; None (the default) when neither tells."""
    named = _named_embodiment(path.parent.parent.name)
    if named is not None and (named == SIXTEEN_DOF_EMBODIMENT) == (state_width == 16):
        return named, "folder name"
    contradicted = f" (the folder says {named})" if named is not None else ""
    if state_width == 16:
        return SIXTEEN_DOF_EMBODIMENT, "state width" + contradicted
    return None, "default" + contradicted


def _named_embodiment(folder: str) -> str | None:
    folder = folder.lower().replace("_", "-")
    for prefix in sorted(EMBODIMENT_PREFIXES, key=len, reverse=True):
        if folder == prefix or folder.startswith(prefix + "-"):
            return EMBODIMENT_PREFIXES[prefix]
    return None


def _episode_number(path: Path) -> int:
    match = EPISODE_FILE.fullmatch(path.name)
    if match is None:
        raise EpisodeError(path, "not named episode<N>.hdf5")
    return int(match.group(1))




def _finds_episode_folder(folder: Path, root: Path, depth: int) -> bool:
    """A `data/` folder holding `episode*.hdf5` within `depth` levels, looking into a few folders per level;
    a symlink that loops or leaves `root` is not looked into."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: (entry.name != "data", entry.name))
    except OSError:
        return False
    if folder.name == "data" and any(entry.is_file() and EPISODE_FILE.fullmatch(entry.name) for entry in entries):
        return True
    if depth == 0:
        return False
    subfolders = [entry for entry in entries if entry.is_dir() and not _prune(entry.name)
                  and not symlink_problem(Path(entry.path), root)][:DETECT_BREADTH]
    return any(_finds_episode_folder(Path(entry.path), root, depth - 1) for entry in subfolders)
