"""OpenCV's Farneback polynomial-expansion flow: a second classical baseline, slower and blurrier than DIS."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from flow.grayscale import GrayscaleBackend


class FarnebackBackend(GrayscaleBackend):
    """`get_backend("farneback", levels=4, window=15, iterations=3, threads=None, scale=1.0)`."""

    name = "farneback"

    def __init__(self, levels: int = 4, window: int = 15, iterations: int = 3, threads: int | None = None, scale: float = 1.0):
        # Four half-scale levels reach ~16x the window's reach: enough for 20+ px motion at 384x320.
        self.levels = levels
        self.window = window
        self.iterations = iterations
        super().__init__(threads, scale)

    def flow_between(self, engine: Any, gray_a: np.ndarray, gray_b: np.ndarray, out: np.ndarray) -> None:
        out[...] = cv2.calcOpticalFlowFarneback(
            gray_a, gray_b, None, pyr_scale=0.5, levels=self.levels, winsize=self.window,
            iterations=self.iterations, poly_n=5, poly_sigma=1.1, flags=0,
        )
