"""EgoDex (Apple): egocentric human video paired with ARKit hand/body tracking, one `<i>.hdf5` + `<i>.mp4` per episode.

State is the two wrists and ten fingertips in the camera frame; there are no actions (human data).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pyramid.episode import Episode, EpisodeRef, VideoCamera
from pyramid.errors import EpisodeError, one_line
from pyramid.paths import symlink_problem
from pyramid.sources.base import Source, register
from pyramid.sources.hdf5_file import open_hdf5

# The official `get_camera_intrinsics()` constant ("it is always the same"), for a 1920x1080 image.
# part1 files often store `camera/intrinsic` as an empty (0, 3) array (ml-egodex issue #10).
DEFAULT_INTRINSICS = np.array([[736.6339, 0.0, 960.0], [0.0, 736.6339, 540.0], [0.0, 0.0, 1.0]])
FINGERTIPS = ("ThumbTip", "IndexFingerTip", "MiddleFingerTip", "RingFingerTip", "LittleFingerTip")
TRACKED_JOINTS = (
    "leftHand",
    "rightHand",
    *(f"left{tip}" for tip in FINGERTIPS),
    *(f"right{tip}" for tip in FINGERTIPS),
)
STATE_NAMES = [f"{joint}.{axis}" for joint in TRACKED_JOINTS for axis in "xyz"]
EPISODE_SUFFIXES = (".hdf5", ".mp4")
FALLBACK_FPS = 30.0  # FORMATS.md: every EgoDex video is 30 fps; used only when the container states no rate
DETECT_FOLDER_LIMIT = 8


def _is_episode_file(name: str) -> bool:
    stem, dot, suffix = name.rpartition(".")
    return bool(dot) and f".{suffix}" in EPISODE_SUFFIXES and stem.isdecimal()


@register
class EgoDexSource(Source):
    name = "egodex"
    default_level = 2
    default_embodiment = "human"

    @classmethod
    def detect(cls, root: Path) -> bool:
        """A `<i>.hdf5` with a `transforms` group one to three folders below root: root is a split, the dataset
        root, or a folder of unzipped parts (`unzip part1.zip -d part1` puts episodes at `part1/part1/<task>/`)."""
        for folder in _folders_below(root, depth=3):
            hdf5 = _first_episode_hdf5(folder, root)
            if hdf5 is not None and _has_transforms(hdf5):
                return True
        return False

    def discover(self) -> Iterator[EpisodeRef]:
        # Natural sorting puts `<i>.hdf5` right before `<i>.mp4`, so one pair yields one reference.
        previous = None
        for item in self.walk(self.root, _is_episode_file):
            relpath = self._episode_relpath(item)
            if relpath == previous:
                continue
            previous = relpath
            if isinstance(item, EpisodeRef):  # a refused symlink: a task folder, or one file of a pair
                yield self.unreadable(relpath, item.error or "unreadable")
            else:
                yield self.ref(relpath)

    def _episode_relpath(self, item: Path | EpisodeRef) -> Path:
        """The `<i>.hdf5` path an episode file stands for (a refused folder keeps its own path)."""
        relpath = Path(item.relpath) if isinstance(item, EpisodeRef) else item.relative_to(self.root)
        return relpath.with_suffix(".hdf5") if _is_episode_file(relpath.name) else relpath

    def read(self, ref: EpisodeRef) -> Episode:
        hdf5_path = self.resolve(ref.relpath)
        video_path = self.resolve(Path(ref.relpath).with_suffix(".mp4"))
        if not hdf5_path.is_file():
            raise EpisodeError(hdf5_path, f"missing: the video {video_path.name} has no HDF5 beside it")
        if not video_path.is_file():
            raise EpisodeError(video_path, f"missing: {hdf5_path.name} has no video beside it")
        tracking = _read_tracking(hdf5_path)
        camera = VideoCamera.open("ego", video_path)
        if camera.num_frames != len(tracking["state"]):
            raise EpisodeError(
                video_path, f"video has {camera.num_frames} frames but {hdf5_path.name} has {len(tracking['state'])}"
            )
        return Episode(
            episode_id=ref.episode_id,
            source=self.name,
            embodiment=self.embodiment(),
            level=self.level,
            instructions=[tracking["instruction"]] if tracking["instruction"] else [],
            fps=_container_fps(camera),
            num_frames=camera.num_frames,
            cameras={"ego": camera},
            state=tracking["state"],
            state_names=list(STATE_NAMES),
            metadata={"relpath": ref.relpath, **tracking["metadata"]},
            path=str(hdf5_path),
        )


def _container_fps(camera: VideoCamera) -> float:
    """The video's own rate; only a missing (0) rate falls back to the documented 30 fps.

    Any other value, however absurd (1e6, 0.001, NaN), is kept so `check_episode` reports it.
    """
    return camera.fps if camera.fps else FALLBACK_FPS


def _read_tracking(path: Path) -> dict[str, Any]:
    try:
        with open_hdf5(path) as file:
            camera_pose, joint_poses = _read_transforms(file, path)
            attrs = {key: _plain(value) for key, value in file.attrs.items()}
            intrinsics, intrinsics_source = _intrinsics(file, path)
            confidences = _mean_confidences(file, path)
    except OSError as exc:  # a dataset whose bytes are cut off or corrupt
        raise EpisodeError(path, f"cannot read HDF5 ({one_line(exc)})") from exc
    metadata = {
        "intrinsics": intrinsics.tolist(),
        "intrinsics_source": intrinsics_source,
        "confidences": "unknown" if confidences is None else "present",
        "mean_confidence": confidences,
        "attrs": attrs,
    }
    state = _positions_in_camera_frame(camera_pose, joint_poses, path)  # NaN stays NaN: check_episode names the frame
    instruction, why_none = _instruction(attrs)
    if why_none:
        metadata["instruction_missing"] = why_none
    return {"state": state, "instruction": instruction, "metadata": metadata}


def _read_transforms(file: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Camera pose [N, 4, 4] and tracked joint poses [J, N, 4, 4], all in the ARKit world frame, float64."""
    camera_pose = _read_pose(file, "camera", path, num_frames=None)
    joints = [_read_pose(file, joint, path, num_frames=len(camera_pose)) for joint in TRACKED_JOINTS]
    return camera_pose, np.stack(joints)


def _read_pose(file: Any, joint: str, path: Path, num_frames: int | None) -> np.ndarray:
    key = f"transforms/{joint}"
    data = _dataset(file, key, path)
    if data is None:
        raise EpisodeError(path, f"missing dataset '{key}'")
    if data.ndim != 3 or data.shape[1:] != (4, 4) or (num_frames is not None and data.shape[0] != num_frames):
        expected = "(N, 4, 4)" if num_frames is None else f"({num_frames}, 4, 4) like transforms/camera"
        raise EpisodeError(path, f"'{key}' has shape {data.shape}, expected {expected}")
    if data.dtype.kind != "f":
        raise EpisodeError(path, f"'{key}' has dtype {data.dtype}, expected float")
    return np.asarray(data, dtype=np.float64)


def _positions_in_camera_frame(camera_pose: np.ndarray, joint_poses: np.ndarray, path: Path) -> np.ndarray:
    """xyz of each joint in the camera frame, inv(T_camera[t]) @ T_joint[t], as float32 [N, 3 * J]."""
    try:
        world_to_camera = np.linalg.inv(camera_pose)
    except np.linalg.LinAlgError as exc:
        raise EpisodeError(path, "'transforms/camera' holds a singular matrix") from exc
    positions = (world_to_camera[None] @ joint_poses)[..., :3, 3]  # [J, N, 3]
    state = positions.transpose(1, 0, 2).reshape(len(camera_pose), -1)
    return state.astype(np.float32)


def _intrinsics(file: Any, path: Path) -> tuple[np.ndarray, str]:
    """The stored K, or the official constant when it is missing or empty (part1's (0, 3) quirk).

    A stored K with non-finite values is returned as is, so `check_episode` quarantines the episode.
    """
    key = "camera/intrinsic"
    data = _dataset(file, key, path)
    if data is None:
        return DEFAULT_INTRINSICS.copy(), f"default (no {key})"
    if data.size == 0:
        return DEFAULT_INTRINSICS.copy(), f"default ({key} has shape {data.shape})"
    if data.shape != (3, 3) or data.dtype.kind not in "fiu":
        raise EpisodeError(path, f"'{key}' has shape {data.shape} and dtype {data.dtype}, expected (3, 3) numbers")
    stored = np.asarray(data, dtype=np.float64)
    if np.isfinite(stored).all() and not (stored[0, 0] > 0 and stored[1, 1] > 0):
        raise EpisodeError(path, f"'{key}' has a focal length that is not positive ({stored[0, 0]:g}, {stored[1, 1]:g})")
    return stored, "file"


def _mean_confidences(file: Any, path: Path) -> dict[str, float | None] | None:
    """Mean tracking confidence per state joint over its finite values (None where it has none), or None when the
    file has no `confidences` group."""
    if "confidences" not in file:
        return None
    means = {}
    for joint in TRACKED_JOINTS:
        data = _dataset(file, f"confidences/{joint}", path)
        if data is not None and data.size:
            if data.dtype.kind not in "fiu":
                raise EpisodeError(path, f"'confidences/{joint}' has dtype {data.dtype}, expected float")
            values = np.asarray(data, np.float64)
            finite = values[np.isfinite(values)]  # a NaN confidence is a frame of unknown confidence
            means[joint] = float(finite.mean()) if finite.size else None
    return means


def _dataset(file: Any, key: str, path: Path) -> Any:
    """The HDF5 dataset at `key`, None when absent; a group (or other object) there is an error."""
    import h5py

    if key not in file:
        return None
    item = file[key]
    if not isinstance(item, h5py.Dataset):
        raise EpisodeError(path, f"'{key}' is a {type(item).__name__}, expected a dataset")
    return item


def _instruction(attrs: dict[str, Any]) -> tuple[str, str | None]:
    """The task sentence, chosen as the official loader does (reversible tasks pick by `which_llm_description`), and
    why there is none where the file names the sentence it lacks. A reversible task's other sentence describes the
    reverse motion, so it never stands in for the one chosen."""
    first = _text(attrs.get("llm_description"))
    if attrs.get("llm_type") != "reversible" or str(attrs.get("which_llm_description", "1")).strip() == "1":
        return first, None
    second = _text(attrs.get("llm_description2"))
    if not second:
        return "", "which_llm_description is '2' but llm_description2 is missing or empty (llm_description is the reverse task)"
    return second, None


def _text(value: Any) -> str:
    """An attribute holding one sentence as text: a string, or a one-element array of one (as `_plain` gives it);
    anything else (None, an empty attribute, a list of several) is no sentence."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value.strip() if isinstance(value, str) else ""


def _plain(value: Any) -> Any:
    """An HDF5 attribute as str / number / bool / list, whether h5py gave bytes, str or numpy values; None for an
    empty attribute and for a non-finite number (metadata is JSON, and the value says nothing)."""
    import h5py

    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value.tolist()] if value.ndim else _plain(value.item())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _folders_below(folder: Path, depth: int, root: Path | None = None) -> Iterator[Path]:
    """folder, then up to DETECT_FOLDER_LIMIT sub-folders per level, `depth` levels down (a bounded look).

    Symlinks that loop or leave `root` (the folder first given) are not entered.
    """
    root = root or folder
    yield folder
    if depth == 0:
        return
    try:
        children = sorted(p for p in folder.iterdir()
                          if not p.name.startswith(".") and p.is_dir() and symlink_problem(p, root) is None)
    except OSError:
        return
    for child in children[:DETECT_FOLDER_LIMIT]:
        yield from _folders_below(child, depth - 1, root)


def _first_episode_hdf5(folder: Path, root: Path) -> Path | None:
    candidates = (p for p in sorted(folder.glob("*.hdf5")) if p.stem.isdecimal() and symlink_problem(p, root) is None)
    return next(candidates, None)


def _has_transforms(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as file:
            return isinstance(file.get("transforms"), h5py.Group)
    except OSError:
        return False
