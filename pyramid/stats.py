"""Per-dimension normalisation statistics computed in one streaming pass.

min, max, mean and std are exact; q01/q99 come from a fixed-size reservoir sample (deterministic for
a given order of updates), so memory stays flat however many frames stream through. A build's workers
summarise each episode (`partial_stats`) and the driver merges the summaries in discovery order.
"""

from __future__ import annotations

import numpy as np

RESERVOIR_ROWS = 100_000
# Rows of an episode's array that reach the quantile reservoir: evenly spaced, so a long episode is
# represented across its length without the driver holding all of it.
PARTIAL_SAMPLE_ROWS = 256
# One VAE labels every embodiment in one latent space: its latent actions are normalised over all of them, where each
# robot's own actions and state are normalised per robot. (Motus's latent-action loader has one q01/q99 for all of them
# too, but commented out: it trains on them raw. Our VAE's latents have no fixed scale, so we keep the normalisation.)
SHARED_ARRAYS = ("latent_actions",)


def partial_stats(rows: np.ndarray) -> dict:
    """What `RunningStats.merge` needs of one array [N, D]: exact moments and extremes, and a row sample (JSON-able)."""
    rows = np.asarray(rows, np.float64).reshape(len(rows), -1)
    picked = rows if len(rows) <= PARTIAL_SAMPLE_ROWS else rows[np.linspace(0, len(rows) - 1, PARTIAL_SAMPLE_ROWS).astype(np.int64)]
    return {"count": len(rows), "sum": rows.sum(0).tolist(), "sum_sq": np.square(rows).sum(0).tolist(),
            "min": rows.min(0).tolist(), "max": rows.max(0).tolist(), "sample": picked.astype(np.float32).tolist()}


class RunningStats:
    def __init__(self, dim: int, seed: int = 0, reservoir_rows: int = RESERVOIR_ROWS):
        self.dim = dim
        self.count = 0
        self.sampled = 0  # rows offered to the reservoir
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

    def merge(self, partial: dict) -> None:
        """Add one `partial_stats` summary: moments exactly, its sample rows to the reservoir."""
        if not partial["count"]:
            return
        self.total += np.asarray(partial["sum"], np.float64)
        self.total_sq += np.asarray(partial["sum_sq"], np.float64)
        self.low = np.minimum(self.low, np.asarray(partial["min"], np.float64))
        self.high = np.maximum(self.high, np.asarray(partial["max"], np.float64))
        self._sample(np.asarray(partial["sample"], np.float64).reshape(-1, self.dim))
        self.count += partial["count"]

    def _sample(self, rows: np.ndarray) -> None:
        capacity = len(self.reservoir)
        seen = self.sampled
        self.sampled += len(rows)
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
        sample = self.reservoir[: min(self.sampled, len(self.reservoir))]
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
