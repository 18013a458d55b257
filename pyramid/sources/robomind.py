"""RoboMIND v1 (X-Humanoid / BAAI): one `trajectory.hdf5` per episode under `h5_<embodiment>/<task>/success_episodes/`.

All eleven embodiment folders share one HDF5 convention (JPEG frames as vlen uint8, follower `puppet/`
and leader `master/` arrays); `SCHEMAS` holds what differs: keys, widths, action target, JPEG channel order.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pyramid.episode import Episode, EpisodeRef, ImageSequenceCamera
from pyramid.errors import EpisodeError, one_line
from pyramid.paths import symlink_problem
from pyramid.sources.base import Source, register
from pyramid.sources.json_file import read_json
from pyramid.sources.hdf5_file import check_finite, open_hdf5, read_numeric

SUCCESS, FAILED = "success_episodes", "failed_episodes"
RGB_GROUP = "observations/rgb_images"
PRIMARY_CAMERAS = ("camera_top", "camera_front", "camera_front_external", "camera_head")
RAW_RGB_SHAPES = ((720, 1280, 3), (480, 640, 3))  # flat buffers of files written with compress=False
DEFAULT_FPS = 30.0  # not stored in the files; every public converter labels RoboMIND 30 Hz
ANNOTATION_FOLDER = "language_description_annotation_json"
INSTRUCTION_CSV = "RoboMIND_v1_2_instr.csv"
DETECT_FOLDER_LIMIT = 16
V2_KEYS = ("puppet/arm_joint_position", "camera_observations")  # RoboMIND 2.0 keeps the layout but renames keys


def _names(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(count))


def _hand(side: str) -> tuple[str, ...]:
    fingers = ("little_finger", "ring_finger", "middle_finger", "index_finger", "thumb_bend", "thumb_rotation")
    return tuple(f"{side}_{finger}" for finger in fingers)


def _sim_hand(side: str) -> tuple[str, ...]:
    joints = ("thumb_bend", "thumb_rotation", "thumb_bend_passive", "thumb_rotation_passive", "index", "index_passive",
              "middle", "middle_passive", "ring", "ring_passive", "little", "little_passive")
    return tuple(f"{side}_hand_{joint}" for joint in joints)


@dataclass(frozen=True)
class Schema:
    """Where one embodiment keeps state and action, and how its JPEGs decode.

    State and action use the same datasets, read under `state_root` and `action_root` respectively
    (the action root is RoboMIND's own training convention: the leader arm for AgileX and TienKung Gello).
    """

    state_root: str
    action_root: str
    columns: tuple[tuple[str, tuple[str, ...]], ...]  # (dataset under the root, one name per column)
    standard_jpeg: bool = False  # franka/UR: a normal JPEG, so cv2.imdecode gives BGR
    simulated: bool = False  # arrays sampled at their own rate (about 4x the camera), not one row per frame

    @property
    def names(self) -> list[str]:
        return [name for _, names in self.columns for name in names]


_FRANKA = (("joint_position", (*_names("joint_", 7), "gripper")),)
_TIENKUNG_GELLO = (
    ("joint_position", (*_names("left_arm_", 7), "left_hand_closure", *_names("right_arm_", 7), "right_hand_closure")),
)
_SIM_FRANKA = Schema("franka", "franka", _FRANKA, simulated=True)

SCHEMAS: dict[str, Schema] = {
    "franka_3rgb": Schema("puppet", "puppet", _FRANKA, standard_jpeg=True),
    "franka_1rgb": Schema("puppet", "puppet", _FRANKA, standard_jpeg=True),
    "ur_1rgb": Schema("puppet", "puppet", (("joint_position", (*_names("joint_", 6), "gripper")),), standard_jpeg=True),
    "franka_fr3_dual": Schema(
        "puppet", "puppet",
        (("joint_position", (*_names("left_joint_", 7), "left_gripper", *_names("right_joint_", 7), "right_gripper")),),
        standard_jpeg=True,
    ),
    "agilex_3rgb": Schema(
        "puppet", "master",
        (("joint_position_left", (*_names("left_joint_", 6), "left_gripper")),
         ("joint_position_right", (*_names("right_joint_", 6), "right_gripper"))),
    ),
    "tienkung_gello_1rgb": Schema("puppet", "master", _TIENKUNG_GELLO),
    "tienkung_prod1_gello_1rgb": Schema("puppet", "master", _TIENKUNG_GELLO),
    "tienkung_xsens_1rgb": Schema(
        "puppet", "puppet",
        (("joint_position", (*_names("left_arm_", 7), *_names("right_arm_", 7))),
         ("end_effector", (*_hand("left"), *_hand("right")))),  # xsens "end_effector" is the two hands' joints
    ),
    "simulation": _SIM_FRANKA,
    "sim_franka_3rgb": _SIM_FRANKA,
    "sim_tienkung_1rgb": Schema(
        "tiangong", "tiangong",
        (("left_arm_joint_pos_seq", _names("left_arm_", 7)), ("left_hand_joint_pos_seq", _sim_hand("left")),
         ("right_arm_joint_pos_seq", _names("right_arm_", 7)), ("right_hand_joint_pos_seq", _sim_hand("right"))),
        simulated=True,
    ),
}


@dataclass(frozen=True)
class Place:
    """What an episode's path says about it (RoboMIND's own tools parse paths around the same anchor)."""

    embodiment_folder: Path | None
    task: str
    outcome: str  # "success" or "failed"
    split: str | None
    episode: str

    @property
    def embodiment(self) -> str | None:
        return self.embodiment_folder.name[len("h5_"):] if self.embodiment_folder else None


def place_of(path: Path) -> Place:
    parts = path.absolute().parts
    anchors = [i for i, part in enumerate(parts) if part in (SUCCESS, FAILED)]
    if not anchors or anchors[-1] == 0:
        raise EpisodeError(path, f"not under a '{SUCCESS}' or '{FAILED}' folder")
    anchor = anchors[-1]
    episode_at = len(parts) - 3 if parts[-2] == "data" else len(parts) - 2
    h5 = next((i for i in range(anchor - 1, -1, -1) if parts[i].startswith("h5_")), None)
    return Place(
        embodiment_folder=Path(*parts[: h5 + 1]) if h5 is not None else None,
        task=parts[anchor - 1],
        outcome=parts[anchor].split("_")[0],
        split=parts[anchor + 1] if anchor + 1 < episode_at else None,
        episode=parts[episode_at],
    )


@register
class RoboMindSource(Source):
    """Options: `include_failed` (also read `failed_episodes/`), `fps` (30 by default, not stored in the files)."""

    name = "robomind"
    default_level = 5

    def __init__(self, root, level=None, embodiment=None, *, include_failed: bool = False, fps: float = DEFAULT_FPS,
                 **options: Any):
        super().__init__(root, level, embodiment, **options)
        self.include_failed = include_failed
        self.fps = float(fps)
        # Each side file is parsed once per reader, on first need: its content, None when absent, or the
        # EpisodeError it raised (so a broken side file fails every episode that needs it without re-parsing).
        self._side_files: dict[Path, Any] = {}

    @classmethod
    def detect(cls, root: Path) -> bool:
        if (root / SUCCESS).is_dir():
            return True
        return any(_holds_tasks(folder, root) for folder in _embodiment_folders(root, root, depth=2))

    def discover(self) -> Iterator[EpisodeRef]:
        anchors = {SUCCESS, FAILED} if self.include_failed else {SUCCESS}

        def prune(name: str) -> bool:
            return name.startswith(".") or (name == FAILED and not self.include_failed)

        for item in self.walk(self.root, lambda name: name == "trajectory.hdf5", prune):
            if isinstance(item, EpisodeRef):
                yield item  # a symlink not followed (a loop, or out of the root): unreadable, discovery goes on
            elif anchors & set(item.absolute().parts):
                yield self.ref(item.relative_to(self.root))

    def read(self, ref: EpisodeRef) -> Episode:
        path = self.resolve(ref.relpath)
        place = place_of(path)
        embodiment = place.embodiment or self.embodiment_override
        with open_hdf5(path) as file:
            # before the schema, which 2.0 folders (`Single_Arm_UR_5e`, no `h5_` prefix) would fail with a misleading line
            if any(key in file for key in V2_KEYS):
                raise EpisodeError(path, "RoboMIND 2.0 schema (arm_joint_position, camera_observations/); this reader reads v1")
            schema = _schema(path, embodiment)
            cameras = _cameras(file, path, schema)
            num_frames = next(iter(cameras.values())).num_frames
            state, actions, alignment = _state_and_actions(file, path, schema, num_frames)
            instruction = _language_raw(file)
            attrs = {key: _plain(file.attrs[key]) for key in ("compress", "sim") if key in file.attrs}
        metadata = {"relpath": ref.relpath, "robomind_embodiment": embodiment, "task_folder": place.task,
                    "outcome": place.outcome, "split": place.split, "episode_folder": place.episode,
                    "attrs": attrs, "action_root": schema.action_root}
        if alignment:
            metadata["alignment"] = alignment
        instructions = [instruction]
        if not instruction:
            instructions, annotation = self._side_instructions(place)
            if annotation is not None:
                metadata["annotation"] = annotation
        return Episode(
            episode_id=ref.episode_id,
            source=self.name,
            embodiment=self.embodiment(embodiment),
            level=self.level,
            instructions=instructions,
            fps=self.fps,
            num_frames=num_frames,
            cameras=cameras,
            state=state,
            state_names=schema.names,
            actions=actions,
            action_names=schema.names,
            metadata=metadata,
            path=str(path),
        )

    def _side_instructions(self, place: Place) -> tuple[list[str], Any]:
        """For files without `language_raw`: the task's instruction from the CSV, then the episode's
        annotated summary; and the episode's annotation record, if any."""
        instructions = []
        by_task = self._side_file(place, INSTRUCTION_CSV, _read_instruction_csv) or {}
        instruction = by_task.get(place.task)
        if isinstance(instruction, EpisodeError):  # this task's row of the table is malformed
            raise EpisodeError(instruction.path, instruction.problem)
        if instruction:
            instructions.append(instruction)
        annotation = None
        if place.embodiment_folder is not None:
            relpath = f"{ANNOTATION_FOLDER}/{place.embodiment_folder.name}.json"
            annotation = _annotation_for(self._side_file(place, relpath, _read_annotations) or {}, place)
            summary = annotation.get("task_summary") if isinstance(annotation, dict) else None
            if summary and summary not in instructions:
                instructions.append(str(summary))
        return instructions, annotation

    def _side_file(self, place: Place, relpath: str, parse) -> Any:
        """The first side file `relpath` found in `_side_file_folders`, parsed; None when there is none."""
        for folder in _side_file_folders(self.root, place):
            path = folder / relpath
            if path not in self._side_files:
                self._side_files[path] = self._parse_side_file(folder, relpath, parse)
            found = self._side_files[path]
            if isinstance(found, EpisodeError):
                raise EpisodeError(found.path, found.problem)
            if found is not None:
                return found
        return None

    def _parse_side_file(self, folder: Path, relpath: str, parse) -> Any:
        """`parse(path)` of the side file `folder/relpath`; None when absent, the EpisodeError when unusable."""
        path = folder / relpath
        if not path.is_file():
            return None
        try:
            return parse(self._side_file_path(folder, relpath))
        except EpisodeError as error:
            return error
        except (OSError, ValueError) as error:  # unreadable, or not UTF-8 text
            return EpisodeError(path, f"unreadable ({one_line(error)})")

    def _side_file_path(self, folder: Path, relpath: str) -> Path:
        """The side file to open, under the reader's symlink policy.

        Inside the root it is confined like an episode. Above the root (the release's side files sit beside the
        benchmark folders, and a root may be a benchmark, embodiment or task folder) is the one place a reader
        goes outside its dataset root: only for the two side-file names, at most two levels above `h5_*`, and
        with no symlink below `folder` unless the source follows symlinks.
        """
        root = _normalized(self.root)
        if folder == root or root in folder.parents:
            return self.resolve(folder.relative_to(root) / relpath)
        path = folder / relpath
        for part in (path, *path.parents):
            if part == folder:
                break
            if part.is_symlink() and not self.follow_symlinks:
                raise EpisodeError(path, "reached through a symlink above the dataset root; "
                                         "set the source option follow_symlinks: true to read it")
        return path


def _schema(path: Path, embodiment: str | None) -> Schema:
    if embodiment is None:
        raise EpisodeError(path, "no h5_<embodiment> folder above it; pass embodiment= (e.g. ur_1rgb)")
    if embodiment not in SCHEMAS:
        raise EpisodeError(path, f"unknown RoboMIND embodiment '{embodiment}' (known: {', '.join(sorted(SCHEMAS))})")
    return SCHEMAS[embodiment]



def _cameras(file, path: Path, schema: Schema) -> dict[str, ImageSequenceCamera]:
    """Every RGB camera that holds frames, the primary one first; empty placeholder entries are skipped."""
    import h5py

    group = file.get(RGB_GROUP)
    if not isinstance(group, h5py.Group):
        raise EpisodeError(path, f"missing group '{RGB_GROUP}'")
    found = {}
    for name, data in group.items():
        if isinstance(data, h5py.Dataset) and data.ndim == 1 and data.shape[0] > 0 and np.asarray(data[0]).size > 0:
            found[name] = ImageSequenceCamera(name, str(path), f"{RGB_GROUP}/{name}", int(data.shape[0]),
                                              imdecode_gives_rgb=not schema.standard_jpeg, raw_shapes=RAW_RGB_SHAPES)
    if not found:
        raise EpisodeError(path, f"no camera with frames under '{RGB_GROUP}'")
    primary = next((name for name in PRIMARY_CAMERAS if name in found), next(iter(found)))
    return {primary: found.pop(primary), **found}


def _state_and_actions(file, path: Path, schema: Schema, num_frames: int):
    """State and action arrays with one row per camera frame, and how they were aligned (None if they already were)."""
    columns = {}
    for root in dict.fromkeys((schema.state_root, schema.action_root)):
        for key, names in schema.columns:
            columns[f"{root}/{key}"] = _read_matrix(file, path, f"{root}/{key}", len(names))
    lengths = {key: len(rows) for key, rows in columns.items()}
    alignment = None
    if any(length != num_frames for length in lengths.values()):
        if not schema.simulated:
            key, length = next((k, n) for k, n in lengths.items() if n != num_frames)
            raise EpisodeError(path, f"'{key}' has {length} rows but the cameras have {num_frames} frames")
        # Simulation samples joints about 4x as often as it renders, with no shared clock in the file:
        # pick the nearest row on a uniform grid spanning each array, one per rendered frame.
        columns = {key: rows[_uniform_indices(len(rows), num_frames)] for key, rows in columns.items()}
        alignment = {"method": "nearest row on a uniform grid over each array", "frames": num_frames, "rows": lengths}

    def stack(root: str) -> np.ndarray:
        return np.concatenate([columns[f"{root}/{key}"] for key, _ in schema.columns], axis=1)

    return stack(schema.state_root), stack(schema.action_root), alignment


def _read_matrix(file, path: Path, key: str, width: int) -> np.ndarray:
    rows = read_numeric(file, path, key)
    if rows.ndim != 2 or rows.shape[1] != width or rows.shape[0] == 0:
        raise EpisodeError(path, f"'{key}' has shape {rows.shape}, expected (T, {width})")
    # Checked here, not only in check_episode: simulation resampling drops rows, and with them a bad value.
    check_finite(path, key, rows)
    return rows


def _uniform_indices(length: int, count: int) -> np.ndarray:
    return np.rint(np.linspace(0, length - 1, count)).astype(np.int64)


def _language_raw(file) -> str:
    """`language_raw` is a (1,) vlen string in released files; absent in early ones."""
    if "language_raw" not in file:
        return ""
    value = file["language_raw"][()]
    if isinstance(value, np.ndarray):
        if value.size == 0:
            return ""
        value = value.ravel()[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip()


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value



def _side_file_folders(root: Path, place: Place) -> list[Path]:
    """Where side files may sit, in order: the release root (above the benchmark folder), the benchmark folder,
    then the reader's root; the first two even when they are above the reader's root."""
    above = []
    if place.embodiment_folder is not None:
        embodiment_folder = _normalized(place.embodiment_folder)
        above = [embodiment_folder.parent.parent, embodiment_folder.parent]
    return list(dict.fromkeys([*above, _normalized(root)]))


def _normalized(path: Path) -> Path:
    """Absolute, with `..` folded lexically (symlinks kept), so folders compare by their names."""
    return Path(os.path.abspath(path))


def _read_instruction_csv(path: Path) -> dict[str, str | EpisodeError]:
    """task -> instruction, or -> the EpisodeError of its malformed row.

    The table covers every task of the release, so one bad row must not make the others unusable: the episodes
    of the task a malformed row names fail with the file and line (their instruction is unknown, and training
    them unlabelled would hide the damage). A row whose task cell is missing names no task and is ignored.
    """
    rows = None
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = csv.DictReader(handle)
            header = rows.fieldnames or ()
            if not {"task", "instruction"} <= set(header):
                raise EpisodeError(path, "line 1: instruction table needs 'task' and 'instruction' columns")
            by_task: dict[str, str | EpisodeError] = {}
            for row in rows:
                task = (row.get("task") or "").strip()
                if None in row or None in row.values():
                    problem = f"line {rows.line_num}: malformed row (not the {len(header)} fields of the header)"
                    if task:
                        by_task.setdefault(task, EpisodeError(path, problem))
                elif task not in by_task or isinstance(by_task[task], EpisodeError):
                    by_task[task] = row["instruction"].strip()
    except UnicodeDecodeError as error:
        raise EpisodeError(path, f"not UTF-8 text ({one_line(error)})") from None
    except csv.Error as error:
        raise EpisodeError(path, f"line {rows.line_num if rows else 1}: {one_line(error)}") from None
    return by_task


def _read_annotations(path: Path) -> dict[str, list[tuple[tuple[str, ...], Any]]]:
    """Annotations indexed by episode folder: the record's id is `.../<task>/.../<split>/<episode>/<file>`.

    The file is one JSON document for a whole embodiment folder, so invalid JSON leaves no record usable:
    every episode that needs it (no `language_raw`) fails, naming the file and the line of the error.
    """
    records = read_json(path)
    index: dict[str, list[tuple[tuple[str, ...], Any]]] = {}
    for record in records if isinstance(records, list) else []:
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            record_path = Path(record["id"])
            index.setdefault(record_path.parent.name, []).append((record_path.parts, record.get("response")))
    return index


def _annotation_for(index: dict, place: Place) -> Any:
    for parts, response in index.get(place.episode, []):
        if place.task in parts and (place.split is None or place.split in parts):
            return response
    return None


def _subfolders(folder: Path, root: Path) -> list[Path]:
    """A few subfolders, sorted; a symlink that loops or leaves `root` is not one."""
    try:
        names = sorted(entry.name for entry in os.scandir(folder) if not entry.name.startswith(".") and entry.is_dir()
                       and not symlink_problem(Path(entry.path), root))
    except OSError:
        return []
    return [folder / name for name in names[:DETECT_FOLDER_LIMIT]]


def _embodiment_folders(folder: Path, root: Path, depth: int) -> Iterator[Path]:
    """`h5_*` folders at `folder`, or up to `depth` levels below it (dataset root -> benchmark -> h5_*)."""
    if folder.name.startswith("h5_"):
        yield folder
    elif depth > 0:
        for child in _subfolders(folder, root):
            yield from _embodiment_folders(child, root, depth - 1)


def _holds_tasks(embodiment_folder: Path, root: Path) -> bool:
    return any((task / SUCCESS).is_dir() or (task / FAILED).is_dir() for task in _subfolders(embodiment_folder, root))
