"""What every episode must satisfy, whatever reader made it: plausible metadata and finite numbers.

`check_episode` runs after a reader's `read` (see `Source.load`), so one bad episode is quarantined
with a reason naming the array and the first bad frame, and statistics never see NaN or inf.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pyramid.episode import FPS_RANGE, Episode
from pyramid.errors import EpisodeError


def check_episode(episode: Episode) -> Episode:
    """The episode itself, or an EpisodeError naming its file and the first problem found."""
    path = episode.path or episode.episode_id
    low, high = FPS_RANGE
    if not (np.isfinite(episode.fps) and low <= episode.fps <= high):
        raise EpisodeError(path, f"fps {episode.fps:g} is implausible (expected {low:g}-{high:g})")
    if episode.num_frames < 1:
        raise EpisodeError(path, "episode has no frames")
    for name, array in (("state", episode.state), ("actions", episode.actions)):
        if array is not None:
            _check_rows(path, name, array, episode.num_frames)
    for name, camera in episode.cameras.items():
        if camera.num_frames < episode.num_frames:
            raise EpisodeError(path, f"camera '{name}' has {camera.num_frames} frames, the episode {episode.num_frames}")
    _check_metadata(path, episode.metadata, "metadata")
    return episode


def _check_rows(path: str, name: str, array: np.ndarray, num_frames: int) -> None:
    if len(array) != num_frames:
        raise EpisodeError(path, f"{name} has {len(array)} rows, the episode {num_frames} frames")
    bad = ~np.isfinite(array)
    if bad.any():
        frame, dim = (int(i) for i in np.argwhere(bad)[0])
        raise EpisodeError(path, f"{name} holds a non-finite value ({array[frame, dim]}) at frame {frame}, dim {dim}")


def _check_metadata(path: str, value: Any, where: str) -> None:
    """Numbers anywhere in the metadata (intrinsics, confidences, poses) must be finite."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_metadata(path, item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)) and value and not isinstance(value[0], (str, bytes, dict)):
        _check_array(path, value, where)
    elif isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        _check_array(path, value, where)
    elif isinstance(value, float) and not np.isfinite(value):
        raise EpisodeError(path, f"{where} is {value}")


def _check_array(path: str, value: Any, where: str) -> None:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return  # not a numeric array (mixed or ragged lists)
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise EpisodeError(path, f"{where} holds a non-finite value at {list(index)}")
