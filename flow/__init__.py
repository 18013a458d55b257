"""Optical flow between video frames, as float vectors and as Middlebury-wheel RGB images.

`estimate(frames)` gives one flow per consecutive pair with OpenCV's DIS; `get_backend(...)` builds
a reusable backend ("dis", "farneback", "ptlflow:dpflow") for workers that process many batches.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from flow.backend import FlowBackend, backend_names, get_backend, resolved_options
from flow.colorwheel import DEFAULT_MAX_MAGNITUDE, from_rgb, to_rgb
from flow.stats import MotionStats, motion_stats

__all__ = [
    "DEFAULT_MAX_MAGNITUDE",
    "FlowBackend",
    "MotionStats",
    "backend_names",
    "estimate",
    "estimate_pairs",
    "from_rgb",
    "get_backend",
    "motion_stats",
    "resolved_options",
    "to_rgb",
]


def estimate(frames: np.ndarray, backend: str | FlowBackend = "dis", stride: int = 1, **options) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] -> float32 [N - stride, H, W, 2]: flow from frame t to t + stride, in px."""
    return _resolve(backend, options).sequence(frames, stride)


def estimate_pairs(
    pairs: np.ndarray | Sequence[tuple[np.ndarray, np.ndarray]], backend: str | FlowBackend = "dis", **options
) -> np.ndarray:
    """Flow for many independent pairs ([P, 2, H, W, 3] or a list of (a, b)) -> float32 [P, H, W, 2]."""
    frames_a, frames_b = _split_pairs(pairs)
    return _resolve(backend, options)(frames_a, frames_b)


def _resolve(backend: str | FlowBackend, options: dict) -> FlowBackend:
    # Building a learned backend loads a model: callers with many batches build it once with get_backend.
    if isinstance(backend, FlowBackend):
        if options:
            raise ValueError(f"options {sorted(options)} must go to get_backend, not to an already built backend")
        return backend
    return get_backend(backend, **options)


def _split_pairs(pairs) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(pairs, np.ndarray):
        if pairs.ndim != 5 or pairs.shape[1] != 2:
            raise ValueError(f"pairs must be [P, 2, H, W, 3], got {pairs.shape}")
        return pairs[:, 0], pairs[:, 1]
    if len(pairs) == 0:
        raise ValueError("no pairs given")
    return np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs])
