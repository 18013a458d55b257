"""Shared machinery of the classical OpenCV backends: grayscale once per frame, pairs spread over threads."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator

import cv2
import numpy as np

from flow.backend import FlowBackend


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def single_threaded_opencv() -> Iterator[None]:
    # One pair per thread scales ~1.9x on 2 cores; OpenCV's own parallel_for inside DIS scales ~1.4x
    # and would oversubscribe the cores our threads already use.
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


class GrayscaleBackend(FlowBackend):
    """A backend whose engine works on single-channel uint8 images, one pair at a time.

    `threads` worker threads (default: the cores this process may use) each own one engine, since
    OpenCV's flow objects are not safe to share; OpenCV releases the GIL, so threads run in parallel.
    """

    def __init__(self, threads: int | None = None, scale: float = 1.0):
        super().__init__(scale)
        self.threads = threads or usable_cores()
        self._engines = [self.make_engine() for _ in range(self.threads)]
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self.name) if self.threads > 1 else None

    def make_engine(self) -> Any:
        """A per-thread flow object (None for a stateless OpenCV function)."""
        return None

    def flow_between(self, engine: Any, gray_a: np.ndarray, gray_b: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def compute_pairs(self, frames_a: np.ndarray, frames_b: np.ndarray) -> np.ndarray:
        return self._flows(to_gray(frames_a), to_gray(frames_b))

    def compute_sequence(self, frames: np.ndarray, stride: int) -> np.ndarray:
        gray = to_gray(frames)  # each frame is converted once, though it belongs to two pairs
        return self._flows(gray[:-stride], gray[stride:])

    def _flows(self, gray_a: np.ndarray, gray_b: np.ndarray) -> np.ndarray:
        chunks = np.array_split(np.arange(len(gray_a)), self.threads)

        def run(engine: Any, indices: np.ndarray) -> list[np.ndarray]:
            return [self.flow_between(engine, gray_a[i], gray_b[i]) for i in indices]

        with single_threaded_opencv():
            if self._pool is None:
                results = [run(self._engines[0], chunks[0])]
            else:
                results = list(self._pool.map(run, self._engines, chunks))
        return np.stack([flow for chunk in results for flow in chunk])


def to_gray(frames: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] RGB -> [N, H, W] uint8 luma."""
    return np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames])
