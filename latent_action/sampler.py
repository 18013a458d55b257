"""Batches that mix unlabelled and labelled flow pairs at a fixed ratio, from any mixture of sources.

Each batch is a pure function of (seed, step), so a resumed run draws exactly the batches an
uninterrupted run would, with no sampler state to save.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

DEFAULT_LABELLED_FRACTION = 0.1  # the paper trains on 90% unlabelled and 10% labelled pairs


class MixedPairSampler:
    """Each slot of a batch is labelled with probability `labelled_fraction`; within the labelled or
    unlabelled pool a source is picked by `source_weights` (default 1 each), then a pair uniformly.

    When one pool is empty every slot comes from the other, so a video-only or robot-only run works.
    """

    def __init__(
        self,
        labelled: Sequence[bool],
        sources: Sequence[str],
        candidates: Sequence[int] | None = None,
        labelled_fraction: float = DEFAULT_LABELLED_FRACTION,
        source_weights: Mapping[str, float] | None = None,
        seed: int = 0,
    ):
        if not 0.0 <= labelled_fraction <= 1.0:
            raise ValueError(f"labelled_fraction must be in [0, 1], got {labelled_fraction}")
        labelled = np.asarray(labelled, bool)
        sources = np.asarray(sources, object)
        candidates = np.arange(len(labelled)) if candidates is None else np.asarray(candidates, np.int64)
        if len(candidates) == 0:
            raise ValueError("no flow pairs to sample from")
        self.labelled_fraction = labelled_fraction
        self.seed = seed
        weights = dict(source_weights or {})
        self.pools = {
            True: _Pool(candidates[labelled[candidates]], sources, weights),
            False: _Pool(candidates[~labelled[candidates]], sources, weights),
        }

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        wants_label = rng.random(batch_size) < self.labelled_fraction
        if self.pools[True].empty:
            wants_label[:] = False
        elif self.pools[False].empty:
            wants_label[:] = True
        return np.array([self.pools[bool(flag)].draw(rng) for flag in wants_label], np.int64)


class _Pool:
    def __init__(self, members: np.ndarray, sources: np.ndarray, weights: Mapping[str, float]):
        names = sorted({str(sources[i]) for i in members})
        self.by_source = [members[sources[members] == name] for name in names]
        raw = np.array([float(weights.get(name, 1.0)) for name in names])
        self.probabilities = raw / raw.sum() if len(raw) and raw.sum() > 0 else raw

    @property
    def empty(self) -> bool:
        return not self.by_source

    def draw(self, rng: np.random.Generator) -> int:
        group = self.by_source[rng.choice(len(self.by_source), p=self.probabilities)]
        return int(group[rng.integers(len(group))])
