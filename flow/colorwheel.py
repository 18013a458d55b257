"""Flow as RGB images with the Middlebury colour wheel (Baker et al. 2011), and back to pixels.

Hue is the direction, saturation the magnitude relative to a fixed `max_magnitude`, so the same
motion has the same colour in every clip. Vectors longer than `max_magnitude` are saturated: drawn
at 0.75 brightness like the Middlebury code, decoded back at exactly `max_magnitude`.

Round-trip precision below saturation, set by 8-bit quantisation: the magnitude is read from the
darkest channel (step max_magnitude / 255), the direction from the hue, coarsest on the wheel's
15-step red-yellow arc. Mean error ~max_magnitude / 540, worst ~max_magnitude / 148: 0.04 and
0.135 px at the default 20 px; a worst case under 0.1 px needs max_magnitude <= 14.
"""

from __future__ import annotations

import cv2
import numpy as np

# Flow in px per frame pair at 384x320 (Motus's video size). At 30 fps a hand crossing the view in
# about a second moves ~13 px per frame, so 20 px leaves ordinary manipulation unsaturated, while
# one quantisation step (20 / 255 ~ 0.08 px) stays finer than what DIS or DPFlow resolve.
DEFAULT_MAX_MAGNITUDE = 20.0

# Above this brightest channel a pixel is inside the disc (brightest channel 255); saturated ones
# peak at 0.75 * 255 = 191. The midpoint tolerates lossy video coding of the flow images.
_SATURATED_BELOW = 223


def _make_wheel() -> np.ndarray:
    """The 55 Middlebury colours [55, 3] in 0..255 levels: red-yellow-green-cyan-blue-magenta, 15/6/4/11/13/6 steps."""
    segments = [(15, 0, 1, +1), (6, 1, 0, -1), (4, 1, 2, +1), (11, 2, 1, -1), (13, 2, 0, +1), (6, 0, 2, -1)]
    rows = []
    for steps, full, moving, direction in segments:
        ramp = np.floor(255 * np.arange(steps) / steps)
        block = np.zeros((steps, 3))
        block[:, full] = 255
        block[:, moving] = ramp if direction > 0 else 255 - ramp
        rows.append(block)
    return np.concatenate(rows)


WHEEL = _make_wheel()
# HSV hue (0..6) of each wheel colour, closed at 6 (back to red). Each of the wheel's six arcs is
# one HSV sextant, so hue rises along the wheel and np.interp inverts it to a wheel position.
_WHEEL_HUES = np.append(cv2.cvtColor((WHEEL[None] / 255).astype(np.float32), cv2.COLOR_RGB2HSV)[0, :, 0] / 60, 6.0)
# Per channel: 255 - colour, and the change to the next colour (lookup tables for to_rgb).
_WHEEL_MISSING = np.ascontiguousarray((255 - WHEEL).T, np.float64)
_WHEEL_STEP = np.ascontiguousarray((np.roll(WHEEL, -1, axis=0) - WHEEL).T, np.float64)


def to_rgb(flow: np.ndarray, max_magnitude: float | None = DEFAULT_MAX_MAGNITUDE) -> np.ndarray:
    """[..., H, W, 2] flow in px -> [..., H, W, 3] uint8. `max_magnitude=None` normalises by the input's own maximum."""
    flow = np.asarray(flow, dtype=np.float32)
    if flow.shape[-1] != 2 or flow.ndim < 3:
        raise ValueError(f"flow must be [..., H, W, 2], got {flow.shape}")
    if not np.isfinite(flow).all():
        raise ValueError("flow contains NaN or infinite values")
    if max_magnitude is None:
        max_magnitude = float(np.hypot(flow[..., 0], flow[..., 1]).max()) or 1.0
    if max_magnitude <= 0:
        raise ValueError(f"max_magnitude must be positive, got {max_magnitude}")
    rgb = np.empty(flow.shape[:-1] + (3,), np.uint8)
    # One image at a time: its float64 temporaries stay in cache (a whole clip at once is ~2x slower).
    images, out = flow.reshape(-1, *flow.shape[-3:]), rgb.reshape(-1, *rgb.shape[-3:])
    for image, image_rgb in zip(images, out):
        _image_to_rgb(image, np.float32(max_magnitude), image_rgb)
    return rgb


def _image_to_rgb(flow: np.ndarray, max_magnitude: np.float32, rgb: np.ndarray) -> None:
    """One [H, W, 2] flow into its [H, W, 3] uint8 `rgb`."""
    u, v = flow[..., 0] / max_magnitude, flow[..., 1] / max_magnitude
    radius = np.hypot(u, v)
    # Middlebury's mapping, including its (ncols - 1): angle -pi..pi -> wheel position 0..54.
    position = np.arctan2(-v, -u)
    position /= np.float32(np.pi)
    position += 1
    position *= np.float32((len(WHEEL) - 1) / 2)
    first = position.astype(np.int32)  # position >= 0, so this is floor
    fraction = position - first  # float64 (float32 - int32), which the exact-colour tests rely on
    # In 0..255 levels, where the wheel's entries are exact integers: inside the disc a channel is
    # 255 - radius * (255 - wheel), outside 0.75 * wheel = 191.25 - 0.75 * (255 - wheel).
    inside = radius <= 1
    top = np.where(inside, np.float32(255), np.float32(191.25))
    scale = np.where(inside, radius, np.float32(0.75))
    # In place, into reused buffers: this function runs on every flow pair of a build.
    missing, step = np.empty_like(fraction), np.empty_like(fraction)
    for channel in range(3):
        # (255 - wheel) is exactly 0 along a full channel, so it stays exactly 255 (from_rgb relies on it).
        np.take(_WHEEL_MISSING[channel], first, out=missing, mode="clip")
        np.take(_WHEEL_STEP[channel], first, out=step, mode="clip")
        step *= fraction
        missing -= step
        missing *= scale
        np.subtract(top, missing, out=missing)
        rgb[..., channel] = missing  # values are >= 0, so the cast truncates, i.e. floors


def from_rgb(rgb: np.ndarray, max_magnitude: float = DEFAULT_MAX_MAGNITUDE) -> np.ndarray:
    """[..., H, W, 3] uint8 made by `to_rgb` -> [..., H, W, 2] float32 flow in px (saturated: at max_magnitude)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3 or rgb.ndim < 3:
        raise ValueError(f"rgb must be uint8 [..., H, W, 3], got {rgb.dtype} {rgb.shape}")
    # to_rgb floors, so level k stands for [k, k + 1): decode at the middle. 255 is exact (a full channel).
    decoded = np.where(rgb == 255, np.float32(1), (rgb.astype(np.float32) + np.float32(0.5)) / np.float32(255))
    # OpenCV's float HSV is the hue and (max - min) / max we need: inside the disc the brightest
    # channel is 1 and the darkest 1 - radius, so saturation is the radius (and survives lossy rescaling).
    hsv = cv2.cvtColor(decoded.reshape(-1, *rgb.shape[-2:]), cv2.COLOR_RGB2HSV).reshape(rgb.shape)
    radius = np.where(rgb.max(-1) < _SATURATED_BELOW, np.float32(1), hsv[..., 1])
    position = np.interp(hsv[..., 0] / 60, _WHEEL_HUES, np.arange(len(_WHEEL_HUES))).astype(np.float32)
    angle = (position / np.float32((len(WHEEL) - 1) / 2) - 1) * np.float32(np.pi)
    magnitude = radius * np.float32(max_magnitude)
    # to_rgb's angle is atan2(-v, -u), so the flow points the opposite way.
    return np.stack([-magnitude * np.cos(angle), -magnitude * np.sin(angle)], axis=-1)
