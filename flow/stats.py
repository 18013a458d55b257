"""How much a clip moves, from its flow: the numbers used to drop static clips."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

# DIS on a static 384x320 scene with sensor noise reports ~0.02 px; a moving hand or gripper moves
# several px per frame pair. 1 px sits between, with room for the flicker and codec noise of real video.
DEFAULT_MOVING_THRESHOLD = 1.0


@dataclass(frozen=True)
class MotionStats:
    mean: float  # px per frame pair, over all pixels of all pairs
    median: float
    p95: float
    moving_fraction: float  # share of pixels whose flow exceeds the threshold

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def motion_stats(flow: np.ndarray, moving_threshold: float = DEFAULT_MOVING_THRESHOLD) -> MotionStats:
    """Magnitude statistics of [..., H, W, 2] flow in px (one pair or a whole clip)."""
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim < 3 or flow.shape[-1] != 2 or flow.size == 0:
        raise ValueError(f"flow must be a non-empty [..., H, W, 2] array, got {flow.shape}")
    # sqrt(u^2 + v^2) runs vectorised, ~5x np.hypot's speed; flow never comes near float32's overflow
    magnitude = np.sqrt(np.square(flow[..., 0]) + np.square(flow[..., 1])).ravel()
    mean = float(magnitude.mean())
    median, p95 = percentiles(magnitude, [50, 95], nonnegative=bool(np.isfinite(mean)))  # a finite mean: no inf, no NaN
    return MotionStats(
        mean=mean,
        median=float(median),
        p95=float(p95),
        moving_fraction=np.count_nonzero(magnitude > moving_threshold) / magnitude.size,
    )


BUCKETED_FROM = 1 << 16  # values from which selecting within buckets beats one partition of them all


def percentiles(values: np.ndarray, percents: list[float], nonnegative: bool = False) -> np.ndarray:
    """Exactly `np.percentile(values, percents)` (linear), from the order statistics it needs alone: ~5x
    np.percentile by one partition, and ~2.5x that again on a clip's millions of float32 magnitudes when the caller
    knows them `nonnegative` and finite."""
    values = np.ravel(values)
    position = np.asarray(percents, np.float64) / 100 * (len(values) - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, len(values) - 1)
    ranks = np.unique(np.concatenate([low, high]))
    if nonnegative and values.dtype == np.float32 and len(values) >= BUCKETED_FROM:
        ordered = dict(zip(ranks.tolist(), _order_statistics_nonnegative(values, ranks)))
        below, above = (np.array([ordered[k] for k in ks.tolist()], values.dtype) for ks in (low, high))
    else:
        ordered_all = np.partition(values, ranks)  # ordered_all[k] is the k-th smallest there
        below, above = ordered_all[low], ordered_all[high]
    weight, step = position - low, above - below
    # numpy's lerp: from the nearer end, so that the result is exact at weight 0 and 1
    return np.where(weight >= 0.5, above - step * (1 - weight), below + step * weight)


def _order_statistics_nonnegative(values: np.ndarray, ranks: np.ndarray) -> list[np.floating]:
    """The `ranks`-th smallest of finite float32 values >= 0. Their bit patterns as int32 sort as the values do, so
    a count of the top 16 bits finds the bucket holding each rank, and only that bucket is partitioned."""
    buckets = values.view(np.int32) >> 16
    counts = np.bincount(buckets)
    ends = np.cumsum(counts)
    found = []
    for bucket, group in itertools.groupby(ranks.tolist(), key=lambda rank: int(np.searchsorted(ends, rank, side="right"))):
        members = values[buckets == bucket]
        first = int(ends[bucket] - counts[bucket])  # rank of the bucket's smallest member
        local = [rank - first for rank in group]
        ordered = np.partition(members, local)
        found.extend(ordered[local])
    return found
