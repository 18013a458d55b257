"""Per-dimension normalisation statistics computed in one streaming pass.

min, max, mean and std are exact; q01/q99 come from a fixed-size reservoir sample (deterministic for
a given order of updates), so memory stays flat however many frames stream through.
"""

from __future__ import annotations

import numpy as np

RESERVOIR_ROWS = 100_000


class RunningStats:
    def __init__(self, dim: int, seed: int = 0, reservoir_rows: int = RESERVOIR_ROWS):
        self.dim = dim
        self.count = 0
        self.total = np.zeros(dim, np.float64)
        self.total_sq = np.zeros(dim, np.float64)
        self.low = np.full(dim, np.inf)
        self.high = np.full(dim, -np.inf)
        self.reservoir = np.empty((reservoir_rows, dim), np.float32)
        self.rng = np.random.default_rng(seed)

    def update(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float64).reshape(-1, self.dim)
        if not len(rows):
            return
        self.total += rows.sum(0)
        self.total_sq += np.square(rows).sum(0)
        self.low = np.minimum(self.low, rows.min(0))
        self.high = np.maximum(self.high, rows.max(0))
        self._sample(rows)
        self.count += len(rows)

    def _sample(self, rows: np.ndarray) -> None:
        capacity = len(self.reservoir)
        seen = self.count
        free = max(0, min(capacity - seen, len(rows)))
        self.reservoir[seen : seen + free] = rows[:free]
        rest = rows[free:]
        if len(rest):
            # Algorithm R: row number n (0-based) replaces a random slot with probability capacity / (n + 1).
            positions = self.rng.integers(0, np.arange(seen + free, seen + len(rows)) + 1)
            keep = positions < capacity
            self.reservoir[positions[keep]] = rest[keep]

    def summary(self) -> dict[str, list[float]]:
        if not self.count:
            return {}
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.total_sq / self.count - mean**2, 0.0))
        sample = self.reservoir[: min(self.count, len(self.reservoir))]
        q01, q99 = np.quantile(sample, [0.01, 0.99], axis=0)
        return {
            "count": int(self.count),
            "min": self.low.tolist(),
            "max": self.high.tolist(),
            "mean": mean.tolist(),
            "std": std.tolist(),
            "q01": q01.astype(float).tolist(),
            "q99": q99.astype(float).tolist(),
        }
