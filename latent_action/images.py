"""Flow-RGB images (uint8 [N, H, W, 3]) to model tensors ([N, 3, S, S]) and back, plus shift augmentation.

Two encodings of the same image:
- "signed": rgb / 127.5 - 1 in [-1, 1], white (no motion) = +1: what an image DC-AE was pretrained on.
- "ink": (1 - rgb / 255) * INK_GAIN in [0, INK_GAIN], white = 0: zero where nothing moves, so zero
  padding at the border looks like more static background. For a randomly initialised DC-AE.
  Why the gain: a moving pixel's ink is only 0.02-0.3 at flow.to_rgb's default scale (motions of
  0.5-6 px against 20 px) and about 98% of pixels are 0, so in [0, 1] the signal drowns in the
  network's biases. In an experiment on the sample data (the tiny encoder trained on the actions
  alone) it could not fit even its training pairs in [0, 1] (R^2 ~0 after 600 steps); with the
  gain of 10 it reached held-out R^2 0.75 (x) and 0.79 (y) within 400 steps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pyramid.resize import resize_frames

ENCODINGS = ("signed", "ink")
INK_GAIN = 10.0


def resize_images(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 [N, H, W, 3] images, each axis on its own (the project's one resize, pyramid/resize.py)."""
    return resize_frames(images, (height, width), fit="stretch")


def to_model_input(flow_rgb: np.ndarray, image_size: int, encoding: str = "signed") -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, S, S] in the model's encoding."""
    square = resize_images(np.asarray(flow_rgb, np.uint8), image_size, image_size)
    rgb = torch.from_numpy(square).permute(0, 3, 1, 2).float()
    return rgb.div_(127.5).sub_(1.0) if _check(encoding) == "signed" else rgb.div_(-255.0).add_(1.0).mul_(INK_GAIN)


def to_uint8(images: torch.Tensor, encoding: str = "signed") -> np.ndarray:
    """float [N, 3, S, S] in the model's encoding -> uint8 [N, S, S, 3]."""
    images = images.detach().float()
    if _check(encoding) == "signed":
        scaled = (images.clamp(-1.0, 1.0) + 1.0) * 127.5
    else:
        scaled = (1.0 - images.clamp(0.0, INK_GAIN) / INK_GAIN) * 255.0
    return scaled.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def white(encoding: str) -> float:
    """The value of a no-motion pixel."""
    return 1.0 if _check(encoding) == "signed" else 0.0


def distance_from_white(images: torch.Tensor, encoding: str) -> torch.Tensor:
    """[N, 1, S, S] in [0, 1]: 0 where nothing moves, 1 for a fully saturated flow colour."""
    if _check(encoding) == "signed":
        return (1.0 - images.float().amin(dim=1, keepdim=True)) / 2.0
    return (images.float().amax(dim=1, keepdim=True) / INK_GAIN).clamp(0.0, 1.0)


def random_shift(images: torch.Tensor, max_shift: int, background: float, rng: np.random.Generator) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels in x and y, filling with `background`.

    Moving the whole flow image does not change the motion it shows, so the latent action must not
    change either: this teaches the encoder to read motion rather than where things are.
    """
    if max_shift <= 0:
        return images
    size = images.shape[-1]
    padded = F.pad(images, (max_shift,) * 4, value=background)
    offsets = rng.integers(0, 2 * max_shift + 1, size=(len(images), 2))
    return torch.stack([padded[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(offsets)])


def _check(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown image encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")
    return encoding
