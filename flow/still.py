"""Zero the flow where nothing changed between the two frames: a static camera's hallucinated motion.

Dense flow has to put some vector on every pixel. Where the image is flat (a painted wall, a plain
table) the data says nothing, and DIS or Farneback spread the motion of nearby moving parts into it:
on MetaWorld's corner camera about half of all pixels of a typical pair show motion, against the
~5-15% the arm actually covers. Both frames are identical there (rendered or well-compressed video
of a fixed camera), so a pixel whose colour changed by at most `threshold` in every channel, with no
changed pixel within `radius`, keeps zero flow. The radius keeps the inside of a uniformly coloured
moving part, whose pixels need not change, near its changing edges. For a moving camera nearly
every pixel changes and the flow is kept as it is.
"""

from __future__ import annotations

import cv2
import numpy as np


def zero_unchanged(flows: np.ndarray, frames: np.ndarray, stride: int, threshold: float, radius: int) -> np.ndarray:
    """flows [N - stride, H, W, 2] of `frames` [N, H, W, 3] (t -> t + stride), zeroed where frame t + stride
    differs from frame t by at most `threshold` (0-255) in every channel within `radius` px; in place."""
    if threshold <= 0 or len(flows) == 0:
        return flows
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)) if radius > 0 else None
    for index, flow in enumerate(flows):
        changed = changed_pixels(frames[index], frames[index + stride], threshold)
        if kernel is not None:
            changed = cv2.dilate(changed, kernel)
        flow[changed == 0] = 0.0
    return flows


def changed_pixels(frame_a: np.ndarray, frame_b: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 [H, W]: 1 where some channel changed by more than `threshold`."""
    difference = cv2.absdiff(frame_a, frame_b).max(axis=-1)
    return (difference > threshold).astype(np.uint8)
