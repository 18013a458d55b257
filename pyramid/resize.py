"""The one image resize of the project: builds, the camera layouts, the VAE's input and the trainer's frames.

The aspect-ratio policy lives here, as `fit`:
- `pad`: scaled to fit inside, centred on black (as Motus's loaders do);
- `crop`: scaled to cover, centre-cropped;
- `stretch`: each axis scaled on its own (the VAE's square input, which its checkpoints were trained on).
Area filter when shrinking (thin motion and fine texture are averaged, not aliased away), bilinear when growing.
"""

from __future__ import annotations

import cv2
import numpy as np

FITS = ("pad", "crop", "stretch")


def resize_frames(frames: np.ndarray, size: tuple[int, int], fit: str = "pad") -> np.ndarray:
    """uint8 [N, H, W, C] frames to `size` = (height, width)."""
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r} (known: {', '.join(FITS)})")
    height, width = size
    if frames.shape[1:3] == (height, width):
        return frames
    if fit == "stretch":
        shrinking = height * width < frames.shape[1] * frames.shape[2]
        return np.stack([_resize(frame, (height, width), shrinking) for frame in frames])
    source_height, source_width = frames.shape[1:3]
    scale = (min if fit == "pad" else max)(height / source_height, width / source_width)
    scaled = (max(1, round(source_height * scale)), max(1, round(source_width * scale)))
    scaled = (min(scaled[0], height), min(scaled[1], width)) if fit == "pad" else (max(scaled[0], height), max(scaled[1], width))
    top, left = abs(height - scaled[0]) // 2, abs(width - scaled[1]) // 2
    out = np.zeros((len(frames), height, width, *frames.shape[3:]), np.uint8)
    for i, frame in enumerate(frames):
        resized = _resize(frame, scaled, scale < 1)
        if fit == "pad":
            out[i, top : top + scaled[0], left : left + scaled[1]] = resized
        else:
            out[i] = resized[top : top + height, left : left + width]
    return out


def _resize(frame: np.ndarray, size: tuple[int, int], shrinking: bool) -> np.ndarray:
    resized = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return resized.reshape(*size, *frame.shape[2:])  # cv2 drops a single channel axis
