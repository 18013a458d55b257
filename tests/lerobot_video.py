"""Reading an export's items through lerobot 0.4.1's own video path.

lerobot 0.4.1 decodes video with torchcodec when it is installed, else with torchvision's `io.VideoReader` on PyAV (it
requires torchvision<0.23 for that). The torchvision pinned here (0.29) has no `VideoReader`, and torchcodec needs
system FFmpeg libraries that these machines lack, so `LeRobotDataset[i]` of a dataset with video cannot run here as it
is. `pyav_video_reader` puts a reader of the same contract in `VideoReader`'s place for the length of a check: seek to
the keyframe at or before a time, then every frame from there in order as {"data": uint8 [3, H, W], "pts": seconds}.
The rest of lerobot's path runs unchanged: the timestamps it queries, its 1e-4 s tolerance check, clamping and padding.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import av
import torch
import torchvision.io


class PyAVVideoReader:
    """The part of torchvision 0.22's `VideoReader` (pyav backend) that lerobot uses: seek, iterate, `container`."""

    def __init__(self, path: str, stream: str = "video"):
        if stream != "video":
            raise ValueError(f"only the video stream is read, not {stream!r}")
        self.container = av.open(path)
        self.stream = self.container.streams.video[0]
        self.frames = self.container.decode(self.stream)

    def seek(self, seconds: float, keyframes_only: bool = False) -> "PyAVVideoReader":
        self.container.seek(int(seconds / self.stream.time_base), backward=True, any_frame=not keyframes_only, stream=self.stream)
        self.frames = self.container.decode(self.stream)
        return self

    def __iter__(self) -> "PyAVVideoReader":
        return self

    def __next__(self) -> dict:
        frame = next(self.frames)
        pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
        return {"data": pixels, "pts": float(frame.pts * frame.time_base)}


@contextmanager
def pyav_video_reader() -> Iterator[None]:
    """lerobot's pyav backend runs on `PyAVVideoReader` inside the block; torchvision is left as it was after it."""
    had_reader = hasattr(torchvision.io, "VideoReader")
    saved_reader = getattr(torchvision.io, "VideoReader", None)
    torchvision.io.VideoReader = PyAVVideoReader
    try:
        yield
    finally:
        if had_reader:
            torchvision.io.VideoReader = saved_reader
        else:
            del torchvision.io.VideoReader
