"""The canonical episode: the one record every source reader produces and every later stage consumes.

An `Episode` holds metadata, low-dimensional arrays (state, actions) and *cameras*. Cameras are
lazy: they remember where their frames live (an mp4 file, or encoded images inside an HDF5
file) and decode only when `frames()` is called, so holding an episode costs almost no memory.
Everything here is picklable, so episodes and their references travel between Ray workers.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

import numpy as np

from pyramid.errors import EpisodeError
from pyramid.video_io import frame_times, frames_at_constant_rate, probe, read_frame_chunks, read_frames, repeated_timestamps

# The six levels of the Motus data pyramid, bottom (most plentiful) to top (most specific).
PYRAMID_LEVELS = {
    1: "web data (image-text, video-text)",
    2: "egocentric human video",
    3: "synthetic robot data",
    4: "task-agnostic robot data",
    5: "multi-robot task trajectories",
    6: "target-robot task trajectories",
}


FPS_RANGE = (1.0, 1000.0)  # recorded video, from 1 fps captures to high-speed cameras; outside it the metadata is wrong

READABLE_ID_CHARS = 48  # the readable part of an id: with the dataset name and the hash, ids stay near 100 characters
DATASET_ID_CHARS = 20


def make_episode_id(source: str, relative_path: str, dataset: str = "") -> str:
    """A stable id from the source name, the dataset's name (its root folder) and the episode's path under its root.

    Safe as a file name and as a WebDataset key (no dots or slashes), readable, bounded in length
    (the tail of the path, where releases keep what tells episodes apart, up to 48 characters), and
    unique: the hash of the exact dataset name and relative path disambiguates paths that sanitise to
    the same text, and two datasets of one kind (whose first episodes share a path) apart. The root's
    folder name, not its absolute path, so that a moved dataset keeps its ids.
    """
    relative_path = relative_path.replace("\\", "/").strip("/")
    readable = _sanitised(relative_path)[-READABLE_ID_CHARS:].lstrip("_-")
    parts = [_sanitised(source)[:24], _sanitised(dataset)[:DATASET_ID_CHARS].strip("_-")]
    digest = hashlib.sha1(f"{source}:{dataset}/{relative_path}".encode()).hexdigest()[:8]
    return "-".join(part for part in (*parts, readable, digest) if part)


def _sanitised(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")


@dataclass(frozen=True)
class EpisodeRef:
    """Where one episode lives: enough to read it later, on any worker. Cheap to create and pickle."""

    source: str
    root: str
    relpath: str
    locator: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    # Set when discovery could not parse this episode's entry (a bad metadata line, a refused symlink):
    # reading it raises this one-line message, so `inspect` lists it and `build` quarantines it.
    error: str | None = None

    @property
    def episode_id(self) -> str:
        return make_episode_id(self.source, self.relpath, Path(self.root).name)

    @property
    def path(self) -> Path:
        return Path(self.root) / self.relpath


@dataclass
class VideoCamera:
    """Frames stored in a video file, optionally a segment of it (LeRobot v3 packs episodes back to back)."""

    name: str
    path: str
    num_frames: int
    height: int
    width: int
    fps: float
    frame_offset: int = 0
    codec: str | None = None
    decord: bool = False  # `VideoInfo.decord`: which library reads it
    # The file's frame shown at each frame of the camera, where a variable-frame-rate file is read at a constant rate
    # (`open(by_time=True)`); None: camera frame i is file frame frame_offset + i.
    file_frames: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, name: str, path: str | Path, frame_offset: int = 0, num_frames: int | None = None,
             by_time: bool = False) -> "VideoCamera":
        """With `by_time`, a file whose frames are not evenly spaced (a phone or screen recording) is read as the
        frames shown at evenly spaced times, at the rate it mostly runs at, so that frames picked at a rate lie at
        those times. Only for a video that nothing else counts frames of: a source whose arrays have a row per file
        frame pairs them by number."""
        info = probe(path)
        available = info.num_frames - frame_offset
        if num_frames is None:
            num_frames = available
        elif num_frames > available:
            raise EpisodeError(path, f"video has {info.num_frames} frames, episode needs {frame_offset + num_frames}")
        camera = cls(name, str(path), num_frames, info.height, info.width, info.fps, frame_offset, info.codec, info.decord)
        if by_time and not info.constant_rate and not frame_offset:
            camera._read_by_time()
        return camera

    def _read_by_time(self) -> None:
        times = frame_times(self.path)
        if len(times) < 2:
            return  # no timestamps to go by: frames stay numbered in order
        low, high = FPS_RANGE
        gaps = np.diff(times)
        longest = int(np.argmax(gaps))
        if gaps[longest] > 1 / low:  # a stalled recording or a clock jump, not hours of one repeated frame
            raise EpisodeError(self.path, f"frame timestamps jump {gaps[longest]:.1f} s after frame {longest} "
                                          f"(recorded video shows a frame at least every {1 / low:g} s)")
        # a clock at an absurd header rate would tick billions of times over a long video; a frame stamped with another's
        # time has no time of its own (the times are the distinct ones), so its file is numbered by time too
        repeated = repeated_timestamps(self.path)
        if (low <= self.fps <= high and not repeated
                and np.array_equal(frames_at_constant_rate(times, self.fps), np.arange(len(times)))):
            return  # evenly spaced at the header's rate, give or take the rounding of timestamps
        # The rate it mostly runs at (a phone's 30 fps, not the average its slow stretches pull down), so frames taken
        # at a rate that divides it lie exactly at their times where the recording kept its pace.
        rate = round(1 / float(np.median(gaps)), 6)  # 30, not 30.000000000000107 from the seconds' rounding
        if rate > high:
            raise EpisodeError(self.path, f"fps {rate:g} is implausible (expected {low:g}-{high:g}), from its frame timestamps")
        self.fps = rate
        self.file_frames = frames_at_constant_rate(times, self.fps)
        self.num_frames = len(self.file_frames)
        if repeated:
            self.decord = False  # decord numbers every packet, the repeated ones too; PyAV numbers the times

    def _file_indices(self, local: Sequence[int]) -> list[int]:
        if self.file_frames is not None:
            return [int(self.file_frames[i]) for i in local]
        return [self.frame_offset + int(i) for i in local]

    def frames(self, indices: Sequence[int] | None = None) -> np.ndarray:
        local = range(self.num_frames) if indices is None else indices
        check_frame_range(self.path, local, self.num_frames)
        return read_frames(self.path, self._file_indices(local), decord=self.decord)

    def frame_chunks(self, indices: Sequence[int], chunk: int,
                     at_least: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
        check_frame_range(self.path, indices, self.num_frames)
        return read_frame_chunks(self.path, self._file_indices(indices), chunk, decord=self.decord, at_least=at_least)


class EncodedImages:
    """A camera whose frames are encoded images in one file, read chunk by chunk from one opening of it. A subclass
    has `path` and `num_frames`, opens its file in `_opened` (a context yielding index -> decoded RGB image) and names
    an image in `_image_name`."""

    path: str
    num_frames: int

    def frames(self, indices: Sequence[int] | None = None) -> np.ndarray:
        local = list(range(self.num_frames)) if indices is None else [int(i) for i in indices]
        return next(self.frame_chunks(local, max(len(local), 1)), np.zeros((0, 0, 0, 3), np.uint8))

    def frame_chunks(self, indices: Sequence[int], chunk: int,
                     at_least: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
        """`frames(indices)` in arrays of at most `chunk` frames, the file read once for all (images are decoded at
        their own size: `at_least` is for video)."""
        local = [int(i) for i in indices]
        check_frame_range(self.path, local, self.num_frames)
        return self._chunks(local, chunk)

    def _chunks(self, local: list[int], chunk: int) -> Iterator[np.ndarray]:
        with self._opened() as image:
            shape = None
            for start in range(0, len(local), chunk):
                part = local[start : start + chunk]
                images = stacked_images([image(i) for i in part], self.path, [self._image_name(i) for i in part], shape)
                shape = images.shape[1:]
                yield images

    def _opened(self) -> ContextManager[Callable[[int], np.ndarray]]:
        raise NotImplementedError

    def _image_name(self, index: int) -> str:
        raise NotImplementedError


@dataclass
class ImageSequenceCamera(EncodedImages):
    """Frames stored as encoded images (JPEG/PNG bytes) in an HDF5 dataset, one element per frame.

    `imdecode_gives_rgb`: whether `cv2.imdecode` already returns RGB. True for images that were
    written by `cv2.imencode` from an RGB array (RoboTwin, RoboMIND AgileX/TienKung); False for
    standard JPEGs, which OpenCV decodes to BGR.
    """

    name: str
    path: str
    dataset: str
    num_frames: int
    imdecode_gives_rgb: bool
    raw_shapes: tuple[tuple[int, ...], ...] = ()

    @contextmanager
    def _opened(self) -> Iterator[Callable[[int], np.ndarray]]:
        import h5py

        with h5py.File(self.path, "r") as file:
            if self.dataset not in file:
                raise EpisodeError(self.path, f"missing image dataset '{self.dataset}'")
            data = file[self.dataset]
            yield lambda index: self._decode(data[index], index)

    def _image_name(self, index: int) -> str:
        return f"'{self.dataset}'[{index}]"

    def _decode(self, element: Any, index: int) -> np.ndarray:
        image = decode_image_bytes(element, self.imdecode_gives_rgb, self.raw_shapes)
        if image is None:
            raise EpisodeError(self.path, f"'{self.dataset}'[{index}] is not a decodable image")
        return image


def decode_image_bytes(element: Any, imdecode_gives_rgb: bool, raw_shapes: Sequence[tuple[int, ...]] = ()) -> np.ndarray | None:
    """Decode one stored image (bytes, numpy bytes or a uint8 vlen array) to RGB uint8 [H, W, 3]."""
    import cv2

    buffer = np.frombuffer(bytes(element), np.uint8) if isinstance(element, (bytes, np.bytes_)) else np.asarray(element, np.uint8).ravel()
    # OpenCV logs its own line for a broken image on stderr; the caller reports it as one line naming the file
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    finally:
        cv2.utils.logging.setLogLevel(level)
    if image is None:
        return _reshape_raw(buffer, raw_shapes)
    return image if imdecode_gives_rgb else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _reshape_raw(buffer: np.ndarray, raw_shapes: Sequence[tuple[int, ...]]) -> np.ndarray | None:
    for shape in raw_shapes:
        if buffer.size == int(np.prod(shape)):
            return buffer.reshape(shape)
    return None


def stacked_images(images: list[np.ndarray], path: str, names: list[str], shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Decoded images of one camera as one array; one of another size than the first (or than `shape`, the camera's
    earlier images) is an EpisodeError naming it, as a camera's frames share one size."""
    if not images:
        return np.zeros((0, 0, 0, 3), np.uint8)
    shape = images[0].shape if shape is None else tuple(shape)
    for image, name in zip(images, names):
        if image.shape != shape:
            raise EpisodeError(path, f"{name} is {image.shape[1]}x{image.shape[0]}, the camera's other images {shape[1]}x{shape[0]}")
    return np.stack(images)


def check_frame_range(path: str, indices: Sequence[int], total: int) -> None:
    for i in indices:
        if not 0 <= int(i) < total:
            raise EpisodeError(path, f"frame {i} out of range (camera has {total} frames)")


Camera = VideoCamera | ImageSequenceCamera


@dataclass
class Episode:
    """One recorded episode in canonical form.

    `state` and `actions` are float32 [T, D] with one name per dimension (`actions` is None for
    video-only data such as human video). `num_frames` counts the frames of the primary camera
    (the first in `cameras`); arrays are aligned with it frame by frame.
    """

    episode_id: str
    source: str
    embodiment: str
    level: int
    instructions: list[str]
    fps: float
    num_frames: int
    cameras: dict[str, Camera]
    state: np.ndarray | None = None
    state_names: list[str] = field(default_factory=list)
    actions: np.ndarray | None = None
    action_names: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def __post_init__(self) -> None:
        if self.level not in PYRAMID_LEVELS:
            raise ValueError(f"{self.path}: pyramid level must be 1-6, got {self.level}")
        self.state = _as_float32_2d(self.state, self.path, "state")
        self.actions = _as_float32_2d(self.actions, self.path, "actions")
        for names, array, what in ((self.state_names, self.state, "state"), (self.action_names, self.actions, "actions")):
            if array is not None and names and len(names) != array.shape[1]:
                raise EpisodeError(self.path, f"{what} has {array.shape[1]} dims but {len(names)} names")

    @property
    def task(self) -> str:
        return self.instructions[0] if self.instructions else ""

    @property
    def primary_camera(self) -> str:
        return next(iter(self.cameras))

    @property
    def state_dim(self) -> int:
        return 0 if self.state is None else int(self.state.shape[1])

    @property
    def action_dim(self) -> int:
        return 0 if self.actions is None else int(self.actions.shape[1])

    def frames(self, camera: str | None = None, indices: Sequence[int] | None = None) -> np.ndarray:
        """Decode frames of one camera (the primary camera by default) as uint8 RGB [N, H, W, 3]."""
        name = camera or self.primary_camera
        if name not in self.cameras:
            raise KeyError(f"{self.episode_id}: no camera '{name}' (has {sorted(self.cameras)})")
        return self.cameras[name].frames(indices)

    def frame_chunks(self, camera: str | None, indices: Sequence[int], chunk: int,
                     at_least: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
        """`frames(camera, indices)` as consecutive arrays of at most `chunk` frames, to bound memory: a video is
        opened and decoded once for all of them, other cameras read chunk by chunk. A video may give frames smaller
        than its own size, down to covering `at_least` (height, width), for a caller that resizes them
        (`read_frame_chunks`)."""
        name = camera or self.primary_camera
        if name not in self.cameras:
            raise KeyError(f"{self.episode_id}: no camera '{name}' (has {sorted(self.cameras)})")
        source = self.cameras[name]
        if hasattr(source, "frame_chunks"):
            return source.frame_chunks(indices, chunk, at_least)
        return (source.frames(indices[start : start + chunk]) for start in range(0, len(indices), chunk))

    def summary(self) -> dict[str, Any]:
        """The fields `pyramid inspect --json` prints, in that order."""
        return {
            "episode_id": self.episode_id,
            "source": self.source,
            "embodiment": self.embodiment,
            "level": self.level,
            "task": self.task,
            "fps": round(float(self.fps), 6),
            "num_frames": int(self.num_frames),
            "cameras": list(self.cameras),
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            # as a player shows them (rotation and non-square pixels applied); None where only decoding tells (images)
            "camera_sizes": {name: _shown_size(camera) for name, camera in self.cameras.items()},
        }


def _shown_size(camera: Any) -> list[int] | None:
    height, width = getattr(camera, "height", None), getattr(camera, "width", None)
    return [int(height), int(width)] if height and width else None


def _as_float32_2d(array: np.ndarray | None, path: str, what: str) -> np.ndarray | None:
    if array is None:
        return None
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise EpisodeError(path, f"{what} must be [T, D], got shape {array.shape}")
    return array
