"""Cutting an episode into clips at the stored frame rate and size.

Frames are resampled by nearest source frame (never upsampled: an episode recorded slower than the
stored rate keeps its own rate), fitted to the stored size keeping their aspect ratio (padded or
centre-cropped), and split into non-overlapping clips.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pyramid.cameras import CameraView
from pyramid.errors import BuildError
from pyramid.resize import resize_frames

DECODE_CHUNK = 64  # frames decoded at source resolution at a time, before resizing
PART_FRAMES_ENV = "PYRAMID_PART_FRAMES"


def _part_frames() -> int:
    """Stored frames a build worker holds at once, with their flow (~1.3 MB a frame at 384x320): a longer episode is
    processed in parts of whole clips, so that a worker's memory does not grow with the episode's length. 256, or
    $PYRAMID_PART_FRAMES (fewer for large stored frames); a build's outputs are the same whatever it is."""
    value = os.environ.get(PART_FRAMES_ENV, "256")
    if not value.isdigit() or int(value) < 1:
        raise BuildError(f"{PART_FRAMES_ENV}={value!r}: must be a whole number of stored frames, at least 1")
    return int(value)


PART_FRAMES = _part_frames()


@dataclass(frozen=True)
class ClipSpan:
    index: int
    first: int  # first stored frame of the clip (index into the stored-frame sequence)
    stop: int  # one past the last stored frame
    start_frame: int  # source frame of `first`
    end_frame: int  # source frame of the next clip's first frame (the episode's length for the last)

    @property
    def num_frames(self) -> int:
        return self.stop - self.first


def stored_rate(source_fps: float, wanted_fps: float) -> float:
    """The rate clips of this episode are stored at: the wanted rate, or the source rate if lower."""
    return min(float(source_fps), float(wanted_fps)) if source_fps > 0 else float(wanted_fps)


def stored_frames_of(num_source_frames: int, source_fps: float, fps: float) -> tuple[float, np.ndarray]:
    """(stored rate, source frame index of each stored frame) of an episode, as every build and the VAE take them."""
    rate = stored_rate(source_fps, fps)
    return rate, stored_frame_indices(num_source_frames, source_fps, rate)


def decode_stored(episode, source_indices: np.ndarray, size: tuple[int, int], chunk: int = DECODE_CHUNK,
                  view=None, fit: str = "pad") -> np.ndarray:
    """The episode's frames at `source_indices` (its primary camera, or a `CameraView`), fitted to `size`: one
    decoding pass, resized `chunk` frames at a time into the result, so that memory holds at most `chunk` frames
    at source resolution."""
    return next(decode_stored_parts(episode, source_indices, [(0, len(source_indices))], size, chunk, view, fit))


def decode_stored_parts(episode, source_indices: np.ndarray, bounds: list[tuple[int, int]], size: tuple[int, int],
                        chunk: int = DECODE_CHUNK, view=None, fit: str = "pad") -> Iterator[np.ndarray]:
    """`decode_stored` of each stored-frame range [lo, hi) in `bounds`, in one decoding pass; a part is decoded only
    when it is asked for. The ranges run from 0 in order, each starting within the one before and ending past it
    (consecutive parts may overlap)."""
    chunks = (resize_frames(part, size, fit) for part in (view or CameraView()).frame_chunks(
        episode, [int(i) for i in source_indices[: max((hi for _, hi in bounds), default=0)]], chunk, at_least=size))
    ahead = np.zeros((0, *size, 3), np.uint8)  # frames decoded past the end of the part before
    previous, previous_lo = ahead, 0
    for lo, hi in bounds:
        if not previous_lo <= lo <= previous_lo + len(previous) <= hi:
            raise ValueError(f"stored-frame part [{lo}, {hi}) does not follow on from the part before")
        stored = np.empty((hi - lo, *size, 3), np.uint8)
        overlap = previous[lo - previous_lo : lo - previous_lo + hi - lo]
        stored[: len(overlap)] = overlap
        done = len(overlap)
        while done < hi - lo:
            if not len(ahead):
                ahead = next(chunks, None)
                if ahead is None:
                    raise ValueError(f"{episode.path}: its video ended before stored frame {lo + done}")
            take = min(len(ahead), hi - lo - done)
            stored[done : done + take], ahead = ahead[:take], ahead[take:]
            done += take
        previous, previous_lo = stored, lo
        yield stored


def stored_frame_indices(num_source_frames: int, source_fps: float, fps: float) -> np.ndarray:
    """Source frame index of each stored frame, nearest in time (np.rint: ties go to the even frame)."""
    if num_source_frames <= 0:
        return np.zeros(0, np.int64)
    duration = (num_source_frames - 1) / source_fps
    count = int(np.floor(duration * fps + 1e-6)) + 1
    indices = np.rint(np.arange(count) * source_fps / fps).astype(np.int64)
    return np.minimum(indices, num_source_frames - 1)


def clip_source_frames(meta: dict, count: int | None = None) -> np.ndarray:
    """Source frame of each stored frame of a clip (the first `count` from the clip's first; all of the clip's by
    default), counted from its `start_frame` as the rows of its `actions.npy` and `state.npy` are, from the clip's
    json alone. At a stored rate that does not divide the source rate, stored frame k is not at k / fps seconds:
    it is the nearest source frame, up to half a source frame away."""
    first = int(meta["flow"]["pair_range"][0])  # the clip's first stored frame in its episode
    count = int(meta["num_frames"]) if count is None else count
    indices = stored_frame_indices(int(meta["num_source_frames"]), float(meta["source_fps"]), float(meta["fps"]))
    return indices[first : first + count] - int(meta["start_frame"])


def pair_actions(actions: np.ndarray, source_indices: np.ndarray, stride: int = 1) -> np.ndarray:
    """The action of each stored-frame pair (t, t + stride): the mean of the source-rate actions it spans.

    A pair from source frame i to source frame j spans actions[i:j] (action k moves frame k to k + 1),
    so at the source rate with stride 1 this is actions[i]; at a lower stored rate it averages the
    commands executed between the two frames, which is what the flow between them shows.
    """
    starts = np.asarray(source_indices[:-stride] if stride else source_indices, np.int64)
    stops = np.asarray(source_indices[stride:], np.int64)
    actions = np.asarray(actions, np.float64)
    sums = np.concatenate([np.zeros((1, actions.shape[1])), np.cumsum(actions, axis=0)])
    stops = np.minimum(np.maximum(stops, starts + 1), len(actions))
    starts = np.minimum(starts, stops - 1)
    return ((sums[stops] - sums[starts]) / (stops - starts)[:, None]).astype(np.float32)


def clip_spans(source_indices: np.ndarray, clip_frames: int, min_frames: int, num_source_frames: int) -> list[ClipSpan]:
    """Non-overlapping clips of `clip_frames` stored frames; a shorter tail is kept if it has `min_frames`.

    A clip's source span runs up to the next clip's first source frame (or the episode's end), so the
    source-rate arrays of consecutive clips tile the episode with no rows left out.
    """
    spans = []
    for index, first in enumerate(range(0, len(source_indices), clip_frames)):
        stop = min(first + clip_frames, len(source_indices))
        if stop - first < max(2, min_frames):
            break
        end = int(source_indices[stop]) if stop < len(source_indices) else num_source_frames
        spans.append(ClipSpan(index, first, stop, int(source_indices[first]), end))
    return spans


def clip_parts(spans: list[ClipSpan], stride: int, part_frames: int | None = PART_FRAMES) -> list[tuple[list[ClipSpan], int, int]]:
    """(clips, lo, hi) of each part of an episode: consecutive whole clips of at most `part_frames` stored frames
    together (a longer clip alone; None: every clip in one part), and the stored frames [lo, hi) the part needs.
    Parts overlap by `stride` frames, so the flow pairs of the parts, [lo, hi - stride) each, tile those of the
    whole episode (the pairs from one clip into the next included)."""
    groups: list[list[ClipSpan]] = []
    for span in spans:
        if groups and (part_frames is None or span.stop - groups[-1][0].first <= part_frames):
            groups[-1].append(span)
        else:
            groups.append([span])
    end = spans[-1].stop if spans else 0
    return [(group, group[0].first, min(group[-1].stop + stride, end)) for group in groups]
