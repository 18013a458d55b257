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

    def flow_between(self, engine: Any, gray_a: np.ndarray, gray_b: np.ndarray, out: np.ndarray) -> None:
        """Flow from `gray_a` to `gray_b` into `out` (float32 [H, W, 2], a slice of the batch's result)."""
        raise NotImplementedError

    def compute_pairs(self, frames_a: np.ndarray, frames_b: np.ndarray) -> np.ndarray:
        return self._flows(to_gray(frames_a), to_gray(frames_b))

    def compute_sequence(self, frames: np.ndarray, stride: int, out: np.ndarray | None = None) -> np.ndarray:
        gray = to_gray(frames)  # each frame is converted once, though it belongs to two pairs
        return self._flows(gray[:-stride], gray[stride:], out)

    def _flows(self, gray_a: np.ndarray, gray_b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        # Each pair goes into the result as it is made: a list of pairs, then a stack, held the episode's flow twice.
        flows = np.empty((*gray_a.shape, 2), np.float32) if out is None else out
        chunks = np.array_split(np.arange(len(gray_a)), self.threads)

        def run(engine: Any, indices: np.ndarray) -> None:
            for i in indices:
                self.flow_between(engine, gray_a[i], gray_b[i], flows[i])

        with single_threaded_opencv():
            if self._pool is None:
                run(self._engines[0], chunks[0])
            else:
                list(self._pool.map(run, self._engines, chunks))
        return flows


def to_gray(frames: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] RGB -> [N, H, W] uint8 luma."""
    gray = np.empty(frames.shape[:-1], np.uint8)
    for frame, out in zip(frames, gray):
        cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY, dst=out)
    return gray
