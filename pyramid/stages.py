"""The per-episode work of a build, as Ray Data stages: decode -> flow -> (label) -> stage to disk.

Each stage maps one row per episode. A row carries its heavy data as a pickled `payload` (our own
in-process objects, never read from user files), so Ray moves one opaque blob instead of
inferring Arrow types for ragged arrays. A stage that fails marks the row `failed` with the reason;
later stages pass failed rows through untouched, and the staging writer records the reason.
"""

from __future__ import annotations

import pickle
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from pyramid.clips import clip_spans, resize_frames, stored_frame_indices, stored_rate
from pyramid.episode import EpisodeRef
from pyramid.errors import EpisodeError
from pyramid.recipe import Recipe

_readers: dict[int, Any] = {}


def _reader(recipe: Recipe, source_index: int):
    """One reader per source per worker process (readers cache side files such as instruction tables)."""
    if source_index not in _readers:
        from pyramid.sources import get_source

        spec = recipe.sources[source_index]
        _readers[source_index] = get_source(spec.kind)(spec.root, level=spec.level, embodiment=spec.embodiment, **spec.options)
    return _readers[source_index]


def failure(row: dict, exc: BaseException) -> dict:
    reason = str(exc) if isinstance(exc, EpisodeError) else f"{row.get('path', '')}: {exc.__class__.__name__}: {exc}"
    return {**row, "status": "failed", "reason": reason.splitlines()[0] if reason else repr(exc), "payload": b""}


def decode_episode(row: dict, recipe: Recipe) -> dict:
    """Read the episode, pick the stored frames, decode and resize them."""
    try:
        reader = _reader(recipe, int(row["source_index"]))
        episode = reader.read(EpisodeRef(row["source"], row["root"], row["relpath"], pickle.loads(row["locator"])))
        fps = stored_rate(episode.fps, recipe.fps)
        indices = stored_frame_indices(episode.num_frames, episode.fps, fps)
        spans = clip_spans(indices, recipe.clip_frames, recipe.filters.min_frames)
        if not spans:
            return {**row, "status": "skipped", "reason": f"{row['path']}: {len(indices)} frames at {fps:g} fps, fewer than min_frames", "payload": b""}
        indices = indices[: spans[-1].stop]
        frames = resize_frames(episode.frames(indices=indices.tolist()), recipe.video_size)
        fields = {
            "episode_id": episode.episode_id, "source": episode.source, "embodiment": episode.embodiment,
            "level": episode.level, "instructions": episode.instructions, "task": episode.task,
            "source_fps": float(episode.fps), "fps": fps, "num_source_frames": episode.num_frames,
            "state_names": episode.state_names, "action_names": episode.action_names,
        }
        payload = {"fields": fields, "frames": frames, "indices": indices, "spans": spans,
                   "state": episode.state, "actions": episode.actions}
        return {**row, "status": "ok", "payload": pickle.dumps(payload, protocol=5)}
    except Exception as exc:  # noqa: BLE001 - any failure quarantines this episode only
        return failure(row, exc)


class FlowStage:
    """Optical flow between stored frames t and t+stride, rendered as flow-RGB; drops static clips."""

    def __init__(self, recipe: Recipe, threads: int | None = None):
        import flow

        self.recipe = recipe
        options = dict(recipe.flow.options)
        if threads and recipe.flow.backend.partition(":")[0] in ("dis", "farneback"):
            options.setdefault("threads", threads)  # share the cores with the other workers, don't oversubscribe
        self.backend = flow.get_backend(recipe.flow.backend, **options)

    def __call__(self, row: dict) -> dict:
        if row["status"] != "ok":
            return row
        try:
            return {**row, "payload": pickle.dumps(self._flow(pickle.loads(row["payload"])), protocol=5)}
        except Exception as exc:  # noqa: BLE001
            return failure(row, exc)

    def _flow(self, payload: dict) -> dict:
        import flow

        stride = self.recipe.flow.stride
        frames = payload["frames"]
        flows = self.backend.sequence(frames, stride) if len(frames) > stride else np.zeros((0, *frames.shape[1:3], 2), np.float32)
        payload["flow_rgb"] = flow.to_rgb(flows)
        payload["clip_motion"] = [flow.motion_stats(flows[span.first : span.stop - stride]).as_dict() if span.stop - stride > span.first else None
                                  for span in payload["spans"]]
        threshold = self.recipe.filters.static_motion_threshold
        payload["kept_clips"] = [i for i, stats in enumerate(payload["clip_motion"]) if stats is not None and stats["moving_fraction"] >= threshold]
        return payload


class LabelStage:
    """Latent actions (the VAE posterior mean) for every flow pair, from a trained VAE checkpoint."""

    def __init__(self, recipe: Recipe):
        from latent_action.labelling import LatentLabeller

        self.labeller = LatentLabeller(recipe.vae)

    def __call__(self, row: dict) -> dict:
        if row["status"] != "ok":
            return row
        try:
            payload = pickle.loads(row["payload"])
            payload["latent_actions"] = self.labeller.label_flow_rgb(payload["flow_rgb"])
            return {**row, "payload": pickle.dumps(payload, protocol=5)}
        except Exception as exc:  # noqa: BLE001
            return failure(row, exc)


class StageWriter:
    """Writes one episode's clips, flow rows and status to the staging directory (temp name, then rename)."""

    def __init__(self, recipe: Recipe):
        from pyramid.staging import Staging

        self.recipe = recipe
        self.staging = Staging(Path(recipe.output))

    def __call__(self, row: dict) -> dict:
        try:
            payload = pickle.loads(row["payload"]) if row["status"] == "ok" else None
            summary = self.staging.write_episode(row, payload, self.recipe)
        except Exception as exc:  # noqa: BLE001
            failed = failure(row, exc)
            summary = self.staging.write_status(failed, None)
            traceback.print_exc()
        return {"order": row["order"], "episode_id": row["episode_id"], "status": summary["status"], "reason": summary.get("reason", "")}


class EpisodeWorker:
    """Every stage in one actor, for CPU-only machines: no hand-offs between processes, one worker per core."""

    def __init__(self, recipe: Recipe, flow_threads: int | None = None):
        self.recipe = recipe
        self.flow = FlowStage(recipe, threads=flow_threads)
        self.label = LabelStage(recipe) if recipe.vae else None
        self.write = StageWriter(recipe)

    def __call__(self, row: dict) -> dict:
        row = self.flow(decode_episode(row, self.recipe))
        if self.label is not None:
            row = self.label(row)
        return self.write(row)
