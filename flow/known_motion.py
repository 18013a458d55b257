"""Frames with known motion (translation, rotation, zoom of a textured image) and the error of a flow on them."""

from __future__ import annotations

import cv2
import numpy as np

# Flow near the border is undefined (content enters or leaves the frame): score only pixels this
# far inside both frames.
BORDER_MARGIN = 16


def textured_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB [H, W, 3] with texture at every scale (blurred noise at 1-27 px), like a cluttered scene."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    for sigma in (1, 3, 9, 27):
        noise = rng.standard_normal((height, width, 3)).astype(np.float32)
        layer = cv2.GaussianBlur(noise, (0, 0), sigma)
        image += layer / layer.std()
    image = (image - image.min()) / (image.max() - image.min())
    return (255 * image).astype(np.uint8)


def translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy]], np.float64)


def rotation(degrees: float, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    return cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)


def zoom(factor: float, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    return cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), 0.0, factor)


def warp(image: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move `image` by the 2x3 `matrix` (pixel p goes to matrix @ p): (moved image, true flow [H, W, 2], valid mask)."""
    height, width = image.shape[:2]
    moved = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    to_x = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    to_y = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    flow = np.stack([to_x - xs, to_y - ys], axis=-1).astype(np.float32)
    valid = _inside(xs, ys, (height, width)) & _inside(to_x, to_y, (height, width))
    return moved, flow, valid


def _inside(xs: np.ndarray, ys: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    m = BORDER_MARGIN
    return (xs >= m) & (xs <= width - 1 - m) & (ys >= m) & (ys <= height - 1 - m)


def end_point_error(flow: np.ndarray, true_flow: np.ndarray, valid: np.ndarray) -> float:
    """Mean Euclidean distance (px) between estimated and true vectors over the valid pixels."""
    error = np.hypot(flow[..., 0] - true_flow[..., 0], flow[..., 1] - true_flow[..., 1])
    return float(error[np.broadcast_to(valid, error.shape)].mean())


def moving_sequence(num_frames: int, size: tuple[int, int], step: tuple[float, float] = (1.7, -0.9), seed: int = 0) -> np.ndarray:
    """[num_frames, H, W, 3]: a textured image translating by `step` px per frame (for timing)."""
    image = textured_image(*size, seed=seed)
    return np.stack([warp(image, translation(step[0] * t, step[1] * t))[0] for t in range(num_frames)])
