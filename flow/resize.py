"""Flow at a lower resolution than the frames: shrink the frames, then grow the flow and its vectors back."""

from __future__ import annotations

import cv2
import numpy as np


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    height, width = size
    return max(1, round(height * scale)), max(1, round(width * scale))


def downscale_frames(frames: np.ndarray, scale: float) -> np.ndarray:
    """[N, H, W, C] -> [N, h, w, C]; area averaging, so fine texture does not alias."""
    if scale == 1:
        return frames
    height, width = scaled_size(frames.shape[1:3], scale)
    return np.stack([cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA) for frame in frames])


def upscale_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[P, h, w, 2] -> [P, H, W, 2] float32, vectors multiplied by the exact per-axis size ratio."""
    flow = np.asarray(flow, dtype=np.float32)
    height, width = size
    small_height, small_width = flow.shape[1:3]
    if (small_height, small_width) == (height, width):
        return flow
    # The ratio of the integer sizes, not the requested scale: 320 * 0.3 rounds to 96, not 96.0 exactly.
    ratio = np.array([width / small_width, height / small_height], dtype=np.float32)
    grown = np.stack([cv2.resize(pair, (width, height), interpolation=cv2.INTER_LINEAR) for pair in flow])
    return grown * ratio
