"""OpenCV's DIS optical flow (Kroeger et al. 2016): the default backend, fast enough for CPU-only workers."""

from __future__ import annotations

import cv2
import numpy as np

from flow.grayscale import GrayscaleBackend

PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class DisBackend(GrayscaleBackend):
    """`get_backend("dis", preset="medium", threads=None, scale=1.0)`, or "dis:fast" for the preset."""

    name = "dis"
    spec_option = "preset"

    def __init__(self, preset: str = "medium", threads: int | None = None, scale: float = 1.0):
        if preset not in PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose from {', '.join(PRESETS)}")
        self.preset = preset
        super().__init__(threads, scale)

    def make_engine(self) -> cv2.DISOpticalFlow:
        return cv2.DISOpticalFlow_create(PRESETS[self.preset])

    def flow_between(self, engine: cv2.DISOpticalFlow, gray_a: np.ndarray, gray_b: np.ndarray) -> np.ndarray:
        return engine.calc(gray_a, gray_b, None)
