"""OpenCV's DIS optical flow (Kroeger et al. 2016): the default backend, fast enough for CPU-only workers."""

from __future__ import annotations

import cv2
import numpy as np

from flow.grayscale import GrayscaleBackend

# Each preset is OpenCV's, with some of its parameters changed (OpenCV setter name -> value).
PRESETS: dict[str, tuple[int, dict[str, int]]] = {
    "ultrafast": (cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, {}),
    "fast": (cv2.DISOPTICAL_FLOW_PRESET_FAST, {}),
    # The default, chosen by bench/flow.py at 384x320: OpenCV's medium with patches every 4 px instead
    # of 3 and 1 variational refinement iteration instead of 5 runs ~1.8x as fast per core (~140 pairs/s
    # against ~80) with the same end-point error on known motion (0.066 px against 0.068). One refinement
    # pass is kept for smoothness at motion edges, which the known-motion cases lack. Coarser scales
    # (finest scale 2, or flow at half size) are 3x as fast but double the error.
    "balanced": (cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, {"PatchStride": 4, "VariationalRefinementIterations": 1}),
    "medium": (cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, {}),
}
DEFAULT_PRESET = "balanced"


def dis_engine(preset: int, parameters: dict[str, int]) -> cv2.DISOpticalFlow:
    """An OpenCV DIS object from one of its presets, with `parameters` ({"PatchStride": 4, ...}) changed."""
    engine = cv2.DISOpticalFlow_create(preset)
    for name, value in parameters.items():
        getattr(engine, f"set{name}")(value)
    return engine


class DisBackend(GrayscaleBackend):
    """`get_backend("dis", preset="balanced", threads=None, scale=1.0)`, or "dis:fast" for the preset."""

    name = "dis"
    spec_option = "preset"

    def __init__(self, preset: str = DEFAULT_PRESET, threads: int | None = None, scale: float = 1.0):
        self.check_options({"preset": preset})
        self.preset = preset
        super().__init__(threads, scale)

    @classmethod
    def check_options(cls, options: dict) -> None:
        if options.get("preset", DEFAULT_PRESET) not in PRESETS:
            raise ValueError(f"unknown DIS preset {options['preset']!r}; choose from {', '.join(PRESETS)}")

    def make_engine(self) -> cv2.DISOpticalFlow:
        return dis_engine(*PRESETS[self.preset])

    def flow_between(self, engine: cv2.DISOpticalFlow, gray_a: np.ndarray, gray_b: np.ndarray, out: np.ndarray) -> None:
        out[...] = engine.calc(gray_a, gray_b, None)  # (OpenCV 4.13's DIS crashed when given `out` to write into, from threads)
