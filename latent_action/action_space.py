"""The shared 14-D action space that latent actions are aligned to, and how each embodiment maps into it.

A real action is first normalised per embodiment and per dimension (its q01/q99 mapped to -1/+1,
then clipped), then placed into 14 slots; a mask marks the slots that carry a real value, so
padding (and dimensions that never move) add nothing to the alignment loss.

Mapping per embodiment (slots filled / source dimensions used):

| embodiment                       | D  | mapping                                                        |
|----------------------------------|----|----------------------------------------------------------------|
| agibot_g1, agibot_g1_dexhand     | 22/32 | the 14 arm joints (`joint.left_arm_0..6`, `joint.right_arm_0..6`); effector, head, waist and base velocity dropped |
| aloha-agilex (RoboTwin 2.0)      | 14 | as is (two 6-DoF arms + two grippers)                           |
| ur_1rgb (RoboMIND UR5e)          | 7  | slots 0-6, slots 7-13 masked                                     |
| franka (RoboMIND Franka)         | 8  | slots 0-7, slots 8-13 masked                                     |
| agilex_3rgb (RoboMIND AgileX)    | 14 | as is                                                            |
| sample_arm (`pyramid sample-data`) | 3 | x, y, grip in slots 0-2, slots 3-13 masked                     |
| human (EgoDex), video (plain clips) | 0 | no actions: unlabelled                                      |
| anything else                    | D  | the first min(D, 14) dimensions, the rest masked                |
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pyramid.errors import EpisodeError

LATENT_ACTION_DIM = 14
# Embodiments whose action vector has named parts we pick from, rather than taking the leading dims.
NAME_PREFIXES = {
    "agibot_g1": ("joint.",),
    "agibot_g1_dexhand": ("joint.",),
}
# Embodiments that never have actions, even if a reader attached some.
UNLABELLED_EMBODIMENTS = {"human", "video"}


def selected_dims(embodiment: str, action_names: Sequence[str], action_dim: int) -> list[int]:
    """Indices of the source action dimensions that fill slots 0, 1, ... of the 14-D space."""
    if embodiment in UNLABELLED_EMBODIMENTS or action_dim == 0:
        return []
    prefixes = NAME_PREFIXES.get(embodiment)
    if prefixes and action_names:
        picked = [i for i, name in enumerate(action_names) if name.startswith(prefixes)]
        if picked:
            return picked[:LATENT_ACTION_DIM]
    return list(range(min(action_dim, LATENT_ACTION_DIM)))


@dataclass
class EmbodimentStats:
    """q01/q99 of the selected action dimensions of one embodiment, over its labelled training pairs."""

    dims: list[int]
    q01: np.ndarray
    q99: np.ndarray
    count: int

    def to_json(self) -> dict:
        return {"dims": self.dims, "q01": self.q01.tolist(), "q99": self.q99.tolist(), "count": self.count}

    @classmethod
    def from_json(cls, data: dict) -> "EmbodimentStats":
        return cls(list(data["dims"]), np.asarray(data["q01"], np.float32), np.asarray(data["q99"], np.float32), int(data["count"]))


class ActionNormalizer:
    """Maps a raw per-embodiment action to (value [14], mask [14]) in the shared latent action space."""

    def __init__(self, stats: dict[str, EmbodimentStats]):
        self.stats = stats

    @classmethod
    def fit(cls, labelled: Iterable[tuple[str, Sequence[str], np.ndarray]]) -> "ActionNormalizer":
        """Fit from (embodiment, action_names, action [D]) triples of the labelled training pairs."""
        rows: dict[str, list[np.ndarray]] = {}
        dims: dict[str, list[int]] = {}
        for embodiment, names, action in labelled:
            action = np.asarray(action, np.float32)
            chosen = dims.setdefault(embodiment, selected_dims(embodiment, names, len(action)))
            if chosen:
                rows.setdefault(embodiment, []).append(action[chosen])
        stats = {}
        for embodiment, values in rows.items():
            table = np.stack(values)
            q01, q99 = np.quantile(table, [0.01, 0.99], axis=0).astype(np.float32)
            stats[embodiment] = EmbodimentStats(dims[embodiment], q01, q99, len(table))
        return cls(stats)

    def encode(self, embodiment: str, action: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(normalised action in 14 slots, float mask); all zeros when the pair has no usable action."""
        value = np.zeros(LATENT_ACTION_DIM, np.float32)
        mask = np.zeros(LATENT_ACTION_DIM, np.float32)
        stats = self.stats.get(embodiment)
        if action is None or stats is None:
            return value, mask
        picked = np.asarray(action, np.float32)[stats.dims]
        span = stats.q99 - stats.q01
        moving = span > 1e-8  # a dimension that never moves in training says nothing about the latent
        scaled = np.where(moving, 2.0 * (picked - stats.q01) / np.where(moving, span, 1.0) - 1.0, 0.0)
        count = len(stats.dims)
        value[:count] = np.clip(scaled, -1.0, 1.0)
        mask[:count] = moving
        return value, mask

    def to_json(self) -> dict:
        return {"latent_action_dim": LATENT_ACTION_DIM, "embodiments": {k: v.to_json() for k, v in sorted(self.stats.items())}}

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "ActionNormalizer":
        try:
            payload = json.loads(Path(path).read_text())
            return cls({k: EmbodimentStats.from_json(v) for k, v in payload["embodiments"].items()})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EpisodeError(path, f"unreadable action normalisation stats ({exc.__class__.__name__}: {exc})") from exc
