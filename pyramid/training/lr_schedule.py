"""The learning-rate schedule both trainers use (latent-action VAE, Motus): linear warmup, then a cosine decay."""

from __future__ import annotations

import math
from typing import Callable


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier for `LambdaLR`: linear warmup to 1, then a cosine down to `min_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
