"""Flow pairs for training: one flow-RGB image per consecutive frame pair, with the pair's real action if any.

Two providers with one interface (`PairSet`): `EpisodePairs` computes flow straight from episodes
(small runs), `LancePairs` reads the pipeline's `flow.lance` dataset with random access.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from latent_action.action_space import UNLABELLED_EMBODIMENTS
from latent_action.images import resize_images
from pyramid.episode import Episode
from pyramid.errors import EpisodeError

FRAMES_PER_CHUNK = 128  # frames decoded at once when computing an episode's flow


@dataclass
class FlowPair:
    flow_rgb: np.ndarray  # uint8 [H, W, 3]
    action: np.ndarray | None  # float32 [D], the episode's actions[pair_index]
    embodiment: str
    episode_id: str
    pair_index: int
    source: str = ""


@dataclass
class PairTable:
    """Everything about the pairs except their images, one entry per pair."""

    episode_id: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    embodiment: list[str] = field(default_factory=list)
    pair_index: list[int] = field(default_factory=list)
    action: list[np.ndarray | None] = field(default_factory=list)
    group: list[str] = field(default_factory=list)  # what the sampler weighs: a config `sources` entry, or the source name
    action_names: dict[str, list[str]] = field(default_factory=dict)  # per embodiment, where known

    def __len__(self) -> int:
        return len(self.episode_id)

    def append(self, episode_id: str, source: str, embodiment: str, pair_index: int, action: np.ndarray | None, group: str | None = None) -> None:
        self.group.append(source if group is None else group)
        self.episode_id.append(episode_id)
        self.source.append(source)
        self.embodiment.append(embodiment)
        self.pair_index.append(int(pair_index))
        self.action.append(action)

    @property
    def labelled(self) -> np.ndarray:
        return np.array([a is not None for a in self.action], bool)


class PairSet:
    """A map-style set of flow pairs: `table` for metadata, `images(indices)` for the flow-RGB at model size."""

    table: PairTable
    image_size: int

    def __len__(self) -> int:
        return len(self.table)

    def images(self, indices: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def pair(self, index: int) -> FlowPair:
        t = self.table
        return FlowPair(self.images([index])[0], t.action[index], t.embodiment[index], t.episode_id[index], t.pair_index[index], t.source[index])


# ---------------------------------------------------------------------------------------------- episodes


def episode_flows(episode: Episode, frame_height: int, frame_width: int, backend: str = "dis") -> Iterator[np.ndarray]:
    """Flow of every consecutive frame pair, in order, a chunk at a time: float32 [k, H, W, 2], k summing to T-1.

    Frames are resized to the stored size first, so flow is in stored-size pixels.
    """
    import flow

    estimator = flow.get_backend(backend)
    total = episode.num_frames
    for start in range(0, total - 1, FRAMES_PER_CHUNK):
        indices = range(start, min(start + FRAMES_PER_CHUNK + 1, total))
        frames = resize_images(episode.frames(indices=indices), frame_height, frame_width)
        yield flow.estimate(frames, backend=estimator, stride=1)


def flow_to_rgb(flows: np.ndarray, max_magnitude: float | None) -> np.ndarray:
    import flow

    return flow.to_rgb(flows) if max_magnitude is None else flow.to_rgb(flows, max_magnitude=max_magnitude)


def rgb_to_flow(rgb: np.ndarray, max_magnitude: float | None) -> np.ndarray:
    import flow

    return flow.from_rgb(rgb) if max_magnitude is None else flow.from_rgb(rgb, max_magnitude=max_magnitude)


def pair_action(episode: Episode, pair_index: int) -> np.ndarray | None:
    """The real action aligned with the pair (frame t, frame t+1): actions[t]; None for action-free data."""
    if episode.actions is None or episode.embodiment in UNLABELLED_EMBODIMENTS or pair_index >= len(episode.actions):
        return None
    return episode.actions[pair_index]


class EpisodePairs(PairSet):
    """Pairs computed from episodes and held in memory at model size (fine for up to ~100k pairs at 64x64)."""

    def __init__(self, image_size: int):
        self.table = PairTable()
        self.image_size = image_size
        self.chunks: list[np.ndarray] = []
        self.skipped: dict[str, str] = {}  # episode id -> why it was left out
        self._stacked: np.ndarray | None = None

    def add_episode(self, episode: Episode, frame_height: int, frame_width: int, backend: str = "dis",
                    max_magnitude: float | None = None, group: str | None = None) -> None:
        index = 0
        for flows in episode_flows(episode, frame_height, frame_width, backend):
            rgb = resize_images(flow_to_rgb(flows, max_magnitude), self.image_size, self.image_size)
            self.chunks.append(rgb)
            for _ in range(len(rgb)):
                self.table.append(episode.episode_id, episode.source, episode.embodiment, index, pair_action(episode, index), group)
                index += 1
        if episode.actions is not None and episode.action_names:
            self.table.action_names.setdefault(episode.embodiment, list(episode.action_names))
        self._stacked = None

    def images(self, indices: Sequence[int]) -> np.ndarray:
        if self._stacked is None:
            empty = np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
            self._stacked = np.concatenate(self.chunks) if self.chunks else empty
            self.chunks = [self._stacked]
        return self._stacked[np.asarray(indices, np.int64)]


def read_episodes(root: str | Path, kind: str | None = None, embodiment: str | None = None, max_episodes: int | None = None) -> Iterator[Episode | EpisodeError]:
    """Each episode of a source root, or the `EpisodeError` that made it unreadable (so callers can record why)."""
    from pyramid.sources import open_source

    options = {"embodiment": embodiment} if embodiment else {}
    reader = open_source(root, kind, **options)
    for count, ref in enumerate(reader.discover()):
        if max_episodes is not None and count >= max_episodes:
            return
        try:
            yield reader.load(ref)
        except (EpisodeError, OSError, ValueError) as exc:
            yield exc if isinstance(exc, EpisodeError) else EpisodeError(ref.path, f"{exc.__class__.__name__}: {exc}")


# ------------------------------------------------------------------------------------------------- lance


class LancePairs(PairSet):
    """The pipeline's `flow.lance` dataset: metadata read once, PNG flow images fetched with `take` on demand.

    Columns: episode_id, source, embodiment (string), level (int8), pair_index (int32), flow_rgb
    (PNG bytes, standard RGB channel order), action (list<float32>, null when the pair has none).
    """

    COLUMNS = ("episode_id", "source", "embodiment", "pair_index", "action")

    def __init__(self, path: str | Path, image_size: int):
        import lance

        self.path = Path(path)
        if not self.path.exists():
            raise EpisodeError(self.path, "no such Lance dataset")
        self.dataset = lance.dataset(str(self.path))
        missing = [c for c in (*self.COLUMNS, "flow_rgb") if c not in self.dataset.schema.names]
        if missing:
            raise EpisodeError(self.path, f"Lance flow dataset lacks column(s) {', '.join(missing)}")
        self.image_size = image_size
        self.table = _table_from_columns(self.dataset.to_table(columns=list(self.COLUMNS)).to_pydict())

    def images(self, indices: Sequence[int]) -> np.ndarray:
        indices = [int(i) for i in indices]
        blobs = self.dataset.take(indices, columns=["flow_rgb"]).column("flow_rgb").to_pylist()
        decoded = [_decode_png(blob, self.path, i) for blob, i in zip(blobs, indices)]
        return np.stack([resize_images(image[None], self.image_size, self.image_size)[0] for image in decoded])


def _table_from_columns(columns: dict[str, list]) -> PairTable:
    table = PairTable()
    for episode_id, source, embodiment, index, action in zip(*(columns[c] for c in LancePairs.COLUMNS)):
        labelled = action is not None and len(action) > 0 and embodiment not in UNLABELLED_EMBODIMENTS
        table.append(episode_id, source, embodiment, index, np.asarray(action, np.float32) if labelled else None)
    return table


def _decode_png(blob: bytes | None, path: Path, index: int) -> np.ndarray:
    from PIL import Image

    if blob is None:
        raise EpisodeError(path, f"row {index}: flow_rgb is null")
    try:
        return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    except OSError as exc:
        raise EpisodeError(path, f"row {index}: flow_rgb is not a readable PNG ({exc})") from exc


# ------------------------------------------------------------------------------------------------ splits


def heldout_episodes(table: PairTable, fraction: float) -> set[str]:
    """A deterministic `fraction` of the labelled episodes (by hash of the id), kept out of training.

    At least one episode is held out when fraction > 0 and there are two or more labelled episodes.
    """
    labelled = sorted({e for e, a in zip(table.episode_id, table.action) if a is not None})
    if fraction <= 0 or len(labelled) < 2:
        return set()
    count = min(len(labelled) - 1, max(1, math.floor(fraction * len(labelled) + 0.5)))
    ranked = sorted(labelled, key=lambda e: hashlib.sha1(e.encode()).hexdigest())
    return set(ranked[:count])


def indices_of(table: PairTable, episodes: Iterable[str], keep: bool) -> np.ndarray:
    """Indices of pairs whose episode is (keep=True) or is not (keep=False) in `episodes`."""
    chosen = set(episodes)
    return np.array([i for i, e in enumerate(table.episode_id) if (e in chosen) == keep], np.int64)
