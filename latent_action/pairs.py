"""Flow pairs for training: one flow-RGB image per stored-frame pair, with the pair's real action if any.

Pairs are made as a build makes them (`FlowSettings`): frames at the stored rate and size, flow from
stored frame t to t + stride, the pair's action the mean of the source actions it spans.

Two providers with one interface (`PairSet`): `EpisodePairs` computes flow straight from episodes
(small runs), `LancePairs` reads the pipeline's `flow.lance` dataset with random access.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from flow.still import zero_unchanged
from latent_action.action_space import UNLABELLED_EMBODIMENTS
from latent_action.images import resize_images
from pyramid.cameras import Cameras, CameraView
from pyramid.clips import decode_stored, pair_actions, stored_frames_of
from pyramid.episode import Episode
from pyramid.errors import EpisodeError, one_line

FRAMES_PER_CHUNK = 128  # stored frames whose flow is computed at once
FLOW_COLUMN = "flow_npy_zst"  # flow.lance's stored flow (pyramid/schema.py)


@dataclass
class FlowPair:
    flow_rgb: np.ndarray  # uint8 [H, W, 3]
    action: np.ndarray | None  # float32 [D], the pair's action (`pyramid.clips.pair_actions`)
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
    task: list[str] = field(default_factory=list)  # the episode's task ("" where it names none, and in a flow.lance)
    action_names: dict[str, list[str]] = field(default_factory=dict)  # per embodiment, where known
    action_width: dict[str, tuple[int, str]] = field(default_factory=dict)  # per embodiment: (width, first episode id)

    def __len__(self) -> int:
        return len(self.episode_id)

    def append(self, episode_id: str, source: str, embodiment: str, pair_index: int, action: np.ndarray | None, group: str | None = None,
               task: str = "") -> None:
        if action is not None:
            self._check_width(embodiment, len(action), episode_id)
        self.group.append(source if group is None else group)
        self.task.append(task)
        self.episode_id.append(episode_id)
        self.source.append(source)
        self.embodiment.append(embodiment)
        self.pair_index.append(int(pair_index))
        self.action.append(action)

    @property
    def labelled(self) -> np.ndarray:
        return np.array([a is not None for a in self.action], bool)

    def _check_width(self, embodiment: str, width: int, episode_id: str) -> None:
        """Actions are normalised per embodiment, so one embodiment's are of one width: two datasets that name their
        robot alike (or not at all: "unknown") with other action spaces are refused, where one crashed the fit or
        lost dimensions."""
        known, first = self.action_width.setdefault(embodiment, (width, episode_id))
        if width != known:
            raise ValueError(f"embodiment '{embodiment}' has {width}-D actions in episode {episode_id} and {known}-D in "
                             f"{first}: give one of their sources its own `embodiment:` name in the config")


class PairSet:
    """A map-style set of flow pairs: `table` for metadata, `images(indices)` for the flow-RGB at model size,
    `settings` for how the flow was made."""

    table: PairTable
    image_size: int
    settings: FlowSettings

    def __len__(self) -> int:
        return len(self.table)

    def images(self, indices: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def pair(self, index: int) -> FlowPair:
        t = self.table
        return FlowPair(self.images([index])[0], t.action[index], t.embodiment[index], t.episode_id[index], t.pair_index[index], t.source[index])


# ---------------------------------------------------------------------------------------------- episodes


@dataclass(frozen=True)
class FlowSettings:
    """How flow pairs are made from an episode; the same in training, labelling, evaluation and builds."""

    backend: str = "dis"
    options: tuple[tuple[str, object], ...] = ()  # the backend's constructor options
    fps: float | None = 10.0  # stored frame rate; None = every source frame
    stride: int = 1  # pair distance in stored frames
    frame_height: int = 384
    frame_width: int = 320
    max_magnitude: float | None = None  # flow-RGB scale; None = flow.to_rgb's default
    still_threshold: float = 0.0  # flow zeroed where neither frame changed (flow/still.py); 0 = off
    still_radius: int = 6
    fit: str = "pad"  # how frames are fitted to the stored size: a recipe's `resize`
    layouts: tuple[str, ...] = ("single",)  # the camera layouts trained on (`CameraView.layout`), recorded with the VAE
    t_names: tuple[tuple[str, ...], ...] = ()  # the cameras of each T-layout trained on, head first (() = not recorded)

    @classmethod
    def from_config(cls, flow_config, views: Sequence[CameraView] = ()) -> "FlowSettings":
        """From a training config's `data.flow`, with the camera views of its sources."""
        return cls(flow_config.backend, tuple(sorted(flow_config.options.items())), flow_config.fps, flow_config.stride,
                   flow_config.frame_height, flow_config.frame_width, flow_config.max_magnitude,
                   flow_config.still_threshold, flow_config.still_radius, flow_config.resize, *_layouts_of(views))

    @classmethod
    def of_vae(cls, vae_config) -> "FlowSettings":
        """The settings a trained VAE recorded (`vae.config`, a dict)."""
        get = vae_config.get
        return cls(get("flow_backend", "dis"), tuple(sorted((get("flow_options") or {}).items())), get("flow_fps"),
                   int(get("flow_stride") or 1), get("frame_height", 384), get("frame_width", 320), get("flow_max_magnitude"),
                   float(get("flow_still_threshold") or 0.0), int(get("flow_still_radius", 6)),
                   get("flow_resize") or "pad", tuple(get("flow_camera_layouts") or ("single",)),
                   tuple(tuple(names) for names in get("flow_camera_t_names") or ()))

    def estimator(self):
        import flow

        return flow.get_backend(self.backend, **dict(self.options))

    def stored_indices(self, episode: Episode) -> np.ndarray:
        """Source frame index of each stored frame, as a build picks them."""
        if self.fps is None:
            return np.arange(episode.num_frames, dtype=np.int64)
        return stored_frames_of(episode.num_frames, episode.fps, self.fps)[1]


def episode_flows(episode: Episode, settings: FlowSettings, estimator=None, view=None) -> Iterator[np.ndarray]:
    """Flow of every stored-frame pair (t, t + stride), in order, a chunk at a time: float32 [k, H, W, 2].

    Frames are picked and fitted as a build does (`pyramid.clips`), from the episode's primary camera or `view`
    (a `CameraView`), so flow is in stored-size pixels.
    """
    estimator = estimator or settings.estimator()
    indices, stride = settings.stored_indices(episode), settings.stride
    size = (settings.frame_height, settings.frame_width)
    for start in range(0, len(indices) - stride, FRAMES_PER_CHUNK):
        frames = decode_stored(episode, indices[start : start + FRAMES_PER_CHUNK + stride], size, view=view, fit=settings.fit)
        yield zero_unchanged(estimator.sequence(frames, stride), frames, stride, settings.still_threshold, settings.still_radius)


def episode_pair_actions(episode: Episode, settings: FlowSettings) -> np.ndarray | None:
    """The real action of each stored-frame pair (`pyramid.clips.pair_actions`); None for action-free data."""
    if episode.actions is None or episode.embodiment in UNLABELLED_EMBODIMENTS or len(episode.actions) == 0:
        return None
    indices = settings.stored_indices(episode)
    if len(indices) <= settings.stride:
        return np.zeros((0, episode.actions.shape[1]), np.float32)
    return pair_actions(episode.actions, indices, settings.stride)


def flow_to_rgb(flows: np.ndarray, max_magnitude: float | None) -> np.ndarray:
    """The VAE's input: flow-RGB of the flow as a build stores it (1/16 px), so that pairs computed from
    episodes, read from flow.lance and labelled in a build give the VAE the same images."""
    import flow
    from flow.storage import as_stored

    flows = as_stored(flows)
    return flow.to_rgb(flows) if max_magnitude is None else flow.to_rgb(flows, max_magnitude=max_magnitude)


def rgb_to_flow(rgb: np.ndarray, max_magnitude: float | None) -> np.ndarray:
    import flow

    return flow.from_rgb(rgb) if max_magnitude is None else flow.from_rgb(rgb, max_magnitude=max_magnitude)


class EpisodePairs(PairSet):
    """Pairs computed from episodes and held in memory at model size (fine for up to ~100k pairs at 64x64)."""

    def __init__(self, image_size: int, settings: FlowSettings):
        self.table = PairTable()
        self.image_size = image_size
        self.settings = settings
        self.chunks: list[np.ndarray] = []
        self._stacked: np.ndarray | None = None

    def add_episode(self, episode: Episode, group: str | None = None, estimator=None, view=None) -> None:
        """Add every pair of the episode, or none of them where making its flow fails (an EpisodeError)."""
        settings = self.settings
        actions = episode_pair_actions(episode, settings)
        try:
            chunks = [resize_images(flow_to_rgb(flows, settings.max_magnitude), self.image_size, self.image_size)
                      for flows in episode_flows(episode, settings, estimator, view)]
        except (EpisodeError, OSError, ValueError) as exc:
            raise episode_error(episode.path, exc) from exc
        self.chunks.extend(chunks)
        for index in range(sum(map(len, chunks))):
            action = None if actions is None else actions[index]
            self.table.append(episode.episode_id, episode.source, episode.embodiment, index, action, group, episode.task or "")
        if episode.actions is not None and episode.action_names:
            self.table.action_names.setdefault(episode.embodiment, list(episode.action_names))
        self._stacked = None

    def images(self, indices: Sequence[int]) -> np.ndarray:
        if self._stacked is None:
            empty = np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
            self._stacked = np.concatenate(self.chunks) if self.chunks else empty
            self.chunks = [self._stacked]
        return self._stacked[np.asarray(indices, np.int64)]


@dataclass(frozen=True)
class UnreadableEpisode:
    """An episode `read_episodes` could not read, and why (so callers can record it)."""

    episode_id: str
    error: EpisodeError


def read_episodes(root: str | Path, kind: str | None = None, embodiment: str | None = None,
                  max_episodes: int | None = None) -> Iterator[Episode | UnreadableEpisode]:
    """Each episode of a source root, or what made it unreadable. A second episode with an id already seen (a
    duplicated metadata entry) is unreadable, as in a build."""
    from pyramid.sources import open_source
    from pyramid.sources.base import DuplicateIds

    options = {"embodiment": embodiment} if embodiment else {}
    reader = open_source(root, kind, **options)
    duplicates = DuplicateIds()
    for count, ref in enumerate(reader.discover()):
        if max_episodes is not None and count >= max_episodes:
            return
        if problem := duplicates.problem(ref.episode_id, str(ref.path)):
            yield UnreadableEpisode(f"{ref.episode_id} (duplicate)", EpisodeError(ref.path, problem))
            continue
        try:
            yield reader.load(ref)
        except EPISODE_FAILURES as exc:
            yield UnreadableEpisode(ref.episode_id, episode_error(ref.path, exc))


def episode_error(path: str | Path, exc: Exception) -> EpisodeError:
    """`exc` as the EpisodeError that names the episode at `path` (itself where it is one)."""
    return exc if isinstance(exc, EpisodeError) else EpisodeError(path, f"{exc.__class__.__name__}: {exc}")


# What reading an episode's video for its flow raises where that episode alone is at fault.
EPISODE_FAILURES = (EpisodeError, OSError, ValueError)


class SkippedEpisodes(dict):
    """The episodes a run leaves out, episode id -> the one-line reason naming its file, each said as it is left out.
    (By id: a LeRobot v3.0 file holds many episodes.)"""

    def __init__(self, echo: Callable[[str], None]):
        super().__init__()
        self.echo = echo

    def add(self, episode: Episode | UnreadableEpisode, exc: Exception | None = None) -> None:
        """An unreadable episode, or a read one whose flow failed with `exc`."""
        error = episode.error if isinstance(episode, UnreadableEpisode) else episode_error(episode.path, exc)
        self[episode.episode_id] = reason = str(error)
        self.echo(f"skipped: {reason}")


# ------------------------------------------------------------------------------------------------- lance


class LancePairs(PairSet):
    """The pipeline's `flow.lance` dataset: metadata read once, stored flow fetched with `take` on demand and
    rendered as flow-RGB.

    Columns: episode_id, source, embodiment (string), level (int8), pair_index (int32), flow_npy_zst
    (`flow.storage.pack` bytes), action (list<float32>, null when the pair has none).
    """

    COLUMNS = ("episode_id", "source", "embodiment", "pair_index", "action")

    def __init__(self, path: str | Path, image_size: int):
        import lance

        self.path = Path(path)
        if not self.path.exists():
            raise EpisodeError(self.path, "no such Lance dataset")
        self.dataset = lance.dataset(str(self.path))
        missing = [c for c in (*self.COLUMNS, FLOW_COLUMN) if c not in self.dataset.schema.names]
        if missing == [FLOW_COLUMN] and "flow_rgb" in self.dataset.schema.names:
            raise EpisodeError(self.path, "holds flow-RGB PNGs, written before builds stored the flow itself; "
                                          "build it again with this version")
        if missing:
            raise EpisodeError(self.path, f"Lance flow dataset lacks column(s) {', '.join(missing)}")
        self.image_size = image_size
        self.settings = build_flow_settings(self.path.parent / "manifest.json")
        self.table = _table_from_columns(self.dataset.to_table(columns=list(self.COLUMNS)).to_pydict())

    def images(self, indices: Sequence[int]) -> np.ndarray:
        indices = [int(i) for i in indices]
        blobs = self.dataset.take(indices, columns=[FLOW_COLUMN]).column(FLOW_COLUMN).to_pylist()
        flows = [_unpack_flow(blob, self.path, i) for blob, i in zip(blobs, indices)]
        return np.stack([resize_images(flow_to_rgb(flow[None], self.settings.max_magnitude), self.image_size, self.image_size)[0]
                         for flow in flows])


def build_flow_settings(manifest: Path) -> FlowSettings:
    """How a build made its flow.lance, from the recipe in its manifest.json."""
    import json

    try:
        recipe = json.loads(manifest.read_text())["recipe"]
        flow = recipe["flow"]
        height, width = recipe["video_size"]
        fit = recipe.get("resize", "pad")
        views = [CameraView.of_recipe(_cameras_spec(source.get("cameras", "primary")), fit) for source in recipe.get("sources", [])]
        return FlowSettings(flow["backend"], tuple(sorted(flow.get("options", {}).items())), float(recipe["fps"]),
                            int(flow.get("stride", 1)), int(height), int(width), None,
                            float(flow.get("still_threshold", 0.0)), int(flow.get("still_radius", 6)), fit, *_layouts_of(views))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EpisodeError(manifest, f"cannot tell how the build beside it made its flow ({exc.__class__.__name__}: {one_line(exc)}); "
                                     "train from a finished build's flow.lance") from exc


def _layouts_of(views: Sequence[CameraView]) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """FlowSettings' `layouts` and `t_names` of sources read through `views`."""
    layouts = tuple(sorted({view.layout for view in views})) or ("single",)
    return layouts, tuple(sorted({view.names for view in views if view.layout == "t"}))


def _cameras_spec(cameras):
    """A manifest recipe's source `cameras` (JSON), validated as the recipe's `cameras` is."""
    from pydantic import TypeAdapter

    return TypeAdapter(Cameras).validate_python(cameras)


def _table_from_columns(columns: dict[str, list]) -> PairTable:
    table = PairTable()
    for episode_id, source, embodiment, index, action in zip(*(columns[c] for c in LancePairs.COLUMNS)):
        labelled = action is not None and len(action) > 0 and embodiment not in UNLABELLED_EMBODIMENTS
        table.append(episode_id, source, embodiment, index, np.asarray(action, np.float32) if labelled else None)
    return table


def _unpack_flow(blob: bytes | None, path: Path, index: int) -> np.ndarray:
    from flow.storage import unpack

    if blob is None:
        raise EpisodeError(path, f"row {index}: {FLOW_COLUMN} is null")
    try:
        return unpack(blob)
    except ValueError as exc:
        raise EpisodeError(path, f"row {index}: {FLOW_COLUMN}: {exc}") from None


# ------------------------------------------------------------------------------------------------ splits


def heldout_episodes(table: PairTable, fraction: float, by: str = "episodes", tasks: Sequence[str] = ()) -> set[str]:
    """Episodes kept out of training, chosen by hash so that the choice is deterministic.

    By episodes: a `fraction` of the labelled episodes (at least one when fraction > 0 and there are two or more).
    By tasks: every episode, labelled or not, of a `fraction` of the tasks that have labelled episodes (at least
    one task, never all), or of the `tasks` named, so that a probe scores the latents of tasks the VAE never saw;
    a ValueError where the episodes name fewer than two such tasks, or a named task is not one of them.
    """
    labelled = {e: t for e, t, a in zip(table.episode_id, table.task, table.action) if a is not None}
    if by == "tasks":
        known = sorted({task for task in labelled.values() if task})
        if (fraction > 0 or tasks) and len(known) < 2:
            raise ValueError(f"holdout_by: tasks needs labelled episodes of two or more named tasks; these name {len(known)}"
                             + (" (a flow.lance records no task: train from data.sources)" if not any(table.task) else ""))
        held = _named_tasks(tasks, known) if tasks else set(_first_by_hash(known, fraction))
        return {episode for episode, task in zip(table.episode_id, table.task) if task in held}
    return set(_first_by_hash(sorted(labelled), fraction))


def _named_tasks(tasks: Sequence[str], known: list[str]) -> set[str]:
    """`tasks` (data.holdout_tasks), each one of the `known` labelled tasks, never all of them."""
    unknown = [task for task in tasks if task not in known]
    if unknown:
        raise ValueError(f"holdout_tasks: no labelled episode has the task {', '.join(map(repr, unknown))} "
                         f"(the tasks here: {', '.join(map(repr, known))})")
    if set(tasks) >= set(known):
        raise ValueError(f"holdout_tasks names every labelled task ({len(known)}): nothing labelled would be left to train with")
    return set(tasks)


def _first_by_hash(names: list[str], fraction: float) -> list[str]:
    """round(fraction x n) of `names` (at least one, never all; none for fraction 0 or fewer than two), by SHA-1."""
    if fraction <= 0 or len(names) < 2:
        return []
    count = min(len(names) - 1, max(1, math.floor(fraction * len(names) + 0.5)))
    return _ranked(names)[:count]


def _ranked(names: Iterable[str], salt: str = "") -> list[str]:
    """`names` ordered by the SHA-1 of salt + name: a shuffle that depends on nothing but the names."""
    return sorted(names, key=lambda name: hashlib.sha1(f"{salt}{name}".encode()).digest())


def hide_labels(table: PairTable, candidates: np.ndarray, share: float, by: str = "pairs", seed: int = 0) -> int:
    """Hide the actions of all but `share` of the labelled pairs (by="pairs") or episodes (by="episodes") among
    `candidates`; return how many pairs lost their action.

    Each pair (or episode) gets a uniform number from a hash of (seed, episode id[, pair index]). By pairs, those
    below `share` keep their action: the choice does not depend on what else is in the dataset. By episodes, the
    round(share x episodes) lowest keep theirs: a few hundred episodes drawn one by one stray far from the share
    (39 of 225 for a 10% share, in one MetaWorld split). Either way a smaller share keeps a subset of a larger one.
    """
    if share >= 1.0:
        return 0
    labelled = [int(i) for i in candidates if table.action[i] is not None]
    if by == "episodes":
        kept_episodes = _lowest_share(sorted({table.episode_id[i] for i in labelled}), share, seed)
        hidden = [i for i in labelled if table.episode_id[i] not in kept_episodes]
    else:
        hidden = [i for i in labelled if _unit_hash(seed, f"{table.episode_id[i]}/{table.pair_index[i]}") >= share]
    for index in hidden:
        table.action[index] = None
    return len(hidden)


def _lowest_share(episodes: list[str], share: float, seed: int) -> set[str]:
    """The round(share x len(episodes)) episodes with the lowest hashes of (seed, id)."""
    count = int(math.floor(share * len(episodes) + 0.5))
    return set(_ranked(episodes, f"{seed}:")[:count])


def _unit_hash(seed: int, key: str) -> float:
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def indices_of(table: PairTable, episodes: Iterable[str], keep: bool) -> np.ndarray:
    """Indices of pairs whose episode is (keep=True) or is not (keep=False) in `episodes`."""
    chosen = set(episodes)
    return np.array([i for i, e in enumerate(table.episode_id) if (e in chosen) == keep], np.int64)
