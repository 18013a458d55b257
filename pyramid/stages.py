"""The per-episode work of a build: decode -> flow -> (label) -> stage to disk.

Each step works on a `payload` dict (the episode's fields, stored frames, flow-RGB, latents, and the
seconds each step took). The last step turns it into what finalize commits as is (`episode_outputs`). On a
CPU-only machine `EpisodeWorker` runs every step in one Ray actor and hands payloads over in memory.
With GPUs the steps become separate Ray Data stages, a row for each part of an episode; between them a row
carries its payload pickled (our own in-process objects, never read from user files), so Ray moves one opaque blob
instead of inferring Arrow types for ragged arrays. A failing step marks the row `failed` with a one-line
reason; later steps pass it through, and the staging writer records the reason. Either way an episode is
processed in parts of `PART_FRAMES` stored frames, so memory does not grow with its length.
"""

from __future__ import annotations

import pickle
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from pyramid.cameras import LAYOUT_WORDS, CameraView, layouts_in_words, reordered_t_layout
from pyramid.clips import PART_FRAMES, ClipSpan, clip_parts, clip_spans, decode_stored_parts, stored_frames_of
from pyramid.episode import Episode, EpisodeRef
from pyramid.episode_outputs import EpisodeSummary, part_outputs, part_record, recorded_part, timed
from pyramid.errors import EpisodeError, OutputFullError, one_line, output_full
from pyramid.recipe import Recipe

_readers: dict[str, Any] = {}
_stagings: dict[str, Any] = {}
REUSED_FLOW_BYTES = 1 << 30  # a worker keeps its flow array between episodes up to this size (~1000 pairs at 384x320)


class WorkerSetupError(RuntimeError):
    """A stage that could not be constructed (weights missing, a VAE that does not load): one line, picklable."""


@contextmanager
def worker_setup():
    """Whatever a stage's constructor raises reaches the driver as a WorkerSetupError: Ray cannot carry every
    exception type across processes, and the driver stops the build with its line (no episode is to blame)."""
    try:
        yield
    except WorkerSetupError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise WorkerSetupError(f"{exc.__class__.__name__}: {one_line(exc)}") from exc


def _reader(recipe: Recipe, source_index: int):
    """One reader per source per worker process (readers cache side files such as instruction tables), by the
    source's whole spec: a process that serves two builds never reads one's episodes with the other's reader."""
    spec = recipe.sources[source_index]
    key = spec.model_dump_json()
    if key not in _readers:
        _readers[key] = spec.open_reader()
    return _readers[key]


def _staging(recipe: Recipe):
    from pyramid.staging import Staging

    if recipe.output not in _stagings:
        _stagings[recipe.output] = Staging(Path(recipe.output))
    return _stagings[recipe.output]


def failure(row: dict, exc: BaseException | str) -> dict:
    """The row of an episode quarantined for `exc`; a full output is no episode's fault and stops the build."""
    if why := output_full(exc):
        raise OutputFullError(why) from exc
    if isinstance(exc, str):
        reason = exc
    elif isinstance(exc, EpisodeError):
        reason = str(exc)
    else:
        reason = f"{row.get('path', '')}: {exc.__class__.__name__}: {exc}"
    return {**row, "status": "failed", "reason": (reason.splitlines() or [repr(exc)])[0], "payload": b""}


@dataclass
class PlannedEpisode:
    """A loaded episode and what a build stores of it: the stored frames' source indices and the clips."""

    episode: Episode
    fields: dict  # what every clip's json says of the episode
    indices: np.ndarray
    spans: list[ClipSpan]
    view: CameraView


def plan_episode(row: dict, recipe: Recipe) -> tuple[dict, PlannedEpisode | None]:
    """(row, plan) of an episode; the plan is None when it is quarantined or too short for a clip (the row says why).
    Nothing is decoded yet."""
    try:
        _staging(recipe).mark_started(row["episode_id"])
        reader = _reader(recipe, int(row["source_index"]))
        episode = reader.load(EpisodeRef(row["source"], row["root"], row["relpath"], pickle.loads(row["locator"]), row.get("error")))
        fps, indices = stored_frames_of(episode.num_frames, episode.fps, recipe.fps)
        spans = clip_spans(indices, recipe.clip_frames, recipe.filters.min_frames, episode.num_frames)
        if not spans:
            reason = f"{row['path']}: {len(indices)} frames at {fps:g} fps, fewer than min_frames ({recipe.filters.min_frames})"
            return {**row, "status": "skipped", "reason": reason}, None
        view = recipe.sources[int(row["source_index"])].camera_view(recipe.resize)
        fields = {
            # the pipeline's id, which also tells apart two sources of the same kind
            "episode_id": row["episode_id"], "source": episode.source, "embodiment": episode.embodiment,
            "level": episode.level, "instructions": episode.instructions, "task": episode.task,
            "source_fps": float(episode.fps), "fps": fps, "num_source_frames": episode.num_frames,
            "state_names": episode.state_names, "action_names": episode.action_names, **view.describe(episode),
        }
        return {**row, "status": "ok"}, PlannedEpisode(episode, fields, indices[: spans[-1].stop], spans, view)
    except Exception as exc:  # noqa: BLE001 - any failure quarantines this episode only
        return failure(row, exc), None


def part_payloads(plan: PlannedEpisode, recipe: Recipe, part_frames: int | None, seconds: dict[str, float] | None = None) -> Iterator[dict]:
    """The payload of each part of the episode (`clip_parts`), its stored frames decoded and resized when it is
    asked for; spans and pairs count from the part's first stored frame (`offset`). Each part has its own
    seconds per stage, the first part's starting from `seconds` (the episode's planning)."""
    parts = clip_parts(plan.spans, recipe.flow.stride, part_frames)
    frames = decode_stored_parts(plan.episode, plan.indices, [(lo, hi) for _, lo, hi in parts], recipe.video_size,
                                 view=plan.view, fit=recipe.resize)
    for number, (spans, lo, hi) in enumerate(parts):
        part_seconds = dict(seconds or {}) if number == 0 else {}
        with timed(part_seconds, "decode"):
            part = next(frames)
        yield {"fields": plan.fields, "frames": part, "indices": plan.indices[lo:hi], "offset": lo, "part": number,
               "parts": len(parts), "spans": [replace(span, first=span.first - lo, stop=span.stop - lo) for span in spans],
               "state": plan.episode.state, "actions": plan.episode.actions, "seconds": part_seconds}


def decode_parts(row: dict, recipe: Recipe) -> Iterator[dict]:
    """An episode's rows for the GPU stages (a Ray Data flat_map): one per part, each carrying its payload, made as
    the next stage asks for it; a row without a payload where the episode is skipped or fails (the writer records
    it). Parts of an earlier run killed midway are removed first."""
    seconds: dict[str, float] = {}
    with timed(seconds, "decode"):
        row, plan = plan_episode(row, recipe)
    if plan is None:
        yield {**row, "payload": b""}
        return
    _staging(recipe).clear_parts(row["episode_id"])
    try:
        for payload in part_payloads(plan, recipe, PART_FRAMES, seconds):
            yield _pack(row, payload)
    except Exception as exc:  # noqa: BLE001 - the parts already sent are removed when the writer records this
        yield {**failure(row, exc), "payload": b""}


def _pack(row: dict, payload: dict | None) -> dict:
    return {**row, "payload": pickle.dumps(payload, protocol=5) if payload is not None else b""}


def _unpack(row: dict) -> dict | None:
    return pickle.loads(row["payload"]) if row["status"] == "ok" else None


class RowStage:
    """Runs `process(payload)` on a Ray Data row, turning an exception into a quarantined row."""

    def process(self, payload: dict) -> dict:
        raise NotImplementedError

    def __call__(self, row: dict) -> dict:
        if row["status"] != "ok":
            return row
        try:
            return _pack(row, self.process(_unpack(row)))
        except Exception as exc:  # noqa: BLE001
            return failure(row, exc)


class FlowStage(RowStage):
    """Optical flow between stored frames t and t+stride, rendered as flow-RGB; marks static clips."""

    def __init__(self, recipe: Recipe, threads: int | None = None):
        import flow

        self.recipe = recipe
        options = dict(recipe.flow.options)
        if threads and recipe.flow.backend.partition(":")[0] in ("dis", "farneback"):
            options.setdefault("threads", threads)  # share the cores with the other workers, don't oversubscribe
        with worker_setup():
            self.backend = flow.get_backend(recipe.flow.backend, **options)
        self._flow_buffer: np.ndarray | None = None

    def flow_buffer(self, pairs: int, size: tuple[int, int]) -> np.ndarray | None:
        """An array for the episode's flow, kept for the next episode (fresh pages for each episode's flow cost
        ~1 ms a pair at 384x320 here); None past REUSED_FLOW_BYTES, so that one long episode is not held on to.
        Safe because a stage processes one episode at a time (Ray Data runs one call per actor at a time) and no
        payload keeps the flow itself."""
        if pairs * size[0] * size[1] * 8 > REUSED_FLOW_BYTES:
            return None
        buffer = self._flow_buffer
        if buffer is None or len(buffer) < pairs or buffer.shape[1:3] != tuple(size):
            buffer = self._flow_buffer = np.empty((pairs, *size, 2), np.float32)
        return buffer

    def process(self, payload: dict) -> dict:
        import flow
        import flow.storage
        from flow.still import zero_unchanged

        stride = self.recipe.flow.stride
        frames, seconds = payload["frames"], payload.setdefault("seconds", {})
        with timed(seconds, "flow"):
            flows = (self.backend.sequence(frames, stride, out=self.flow_buffer(len(frames) - stride, frames.shape[1:3]))
                     if len(frames) > stride else np.zeros((0, *frames.shape[1:3], 2), np.float32))
            zero_unchanged(flows, frames, stride, self.recipe.flow.still_threshold, self.recipe.flow.still_radius)
        with timed(seconds, "flow_stats"):
            payload["clip_motion"] = [flow.motion_stats(flows[span.first : span.stop - stride]).as_dict() if span.stop - stride > span.first else None
                                      for span in payload["spans"]]
        threshold = self.recipe.filters.static_motion_threshold
        payload["kept_clips"] = [i for i, stats in enumerate(payload["clip_motion"]) if stats is not None and stats["moving_fraction"] >= threshold]
        payload["num_pairs"] = len(flows)
        # The stored flow (int16 in 1/16 px, zstd) is what flow.lance holds and what the VAE renders its input from.
        if self.recipe.flow.store or self.recipe.vae:
            with timed(seconds, "flow_pack"):
                payload["flow_blobs"] = flow.storage.pack_pairs(flows)
        if payload["kept_clips"]:
            payload["preview_flow_rgb"] = flow.to_rgb(flows[payload["spans"][payload["kept_clips"][0]].first])
        return payload


class LabelStage(RowStage):
    """Latent actions (the VAE posterior mean) for every flow pair, from a trained VAE checkpoint."""

    def __init__(self, recipe: Recipe):
        from latent_action.labelling import LatentActionLabeller

        with worker_setup():
            self.labeller = LatentActionLabeller(recipe.vae)
            check_vae_matches(self.labeller.vae.config, recipe)

    def process(self, payload: dict) -> dict:
        from flow.storage import unpack
        from latent_action.labelling import encode_flow_rgb
        from latent_action.pairs import flow_to_rgb

        seconds, blobs, batch = payload.setdefault("seconds", {}), payload["flow_blobs"], self.labeller.batch_size
        chunks = []
        for start in range(0, len(blobs), batch):
            with timed(seconds, "flow_rgb"):
                # rendered from the stored flow, as training from flow.lance renders it
                flow_rgb = flow_to_rgb(np.stack([unpack(blob) for blob in blobs[start : start + batch]]), None)
            with timed(seconds, "label"):
                chunks.append(encode_flow_rgb(self.labeller.vae, flow_rgb, batch))
        latents = np.concatenate(chunks) if chunks else np.zeros((0, self.labeller.vae.config.action_dim), np.float32)
        if not np.isfinite(latents).all():
            raise ValueError(f"the VAE gave non-finite latent actions (first at pair {int(np.argwhere(~np.isfinite(latents))[0, 0])})")
        payload["latent_actions"] = latents
        return payload


def check_vae_matches(config: Any, recipe: Recipe) -> None:
    """A VAE only understands flow made the way it was trained: same stored rate and size (flow is in px per
    stored-frame pair), backend and options, stride and colour scale. Names both sides of every difference."""
    import flow

    trained = (config.frame_height, config.frame_width)
    problems = []
    if trained != tuple(recipe.video_size):
        problems.append(f"trained on flow at {trained[0]}x{trained[1]}, the recipe stores {recipe.video_size[0]}x{recipe.video_size[1]}")
    trained_fps = config.get("flow_fps")
    if trained_fps is None:
        problems.append(f"trained on every source frame (a VAE from before the frame rate was recorded), the recipe stores {recipe.fps:g} fps: retrain it")
    elif float(trained_fps) != float(recipe.fps):
        problems.append(f"trained on frames at {float(trained_fps):g} fps, the recipe stores {recipe.fps:g} fps")
    if config.flow_backend.partition(":")[0] != recipe.flow.backend.partition(":")[0]:
        problems.append(f"trained on '{config.flow_backend}' flow, the recipe uses '{recipe.flow.backend}'")
    elif (trained_options := config.get("flow_options")) is not None:
        wanted = flow.resolved_options(recipe.flow.backend, recipe.flow.options)
        if dict(trained_options) != wanted:
            problems.append(f"trained with flow options {dict(trained_options)}, the recipe's resolve to {wanted}")
    trained_still = (float(config.get("flow_still_threshold") or 0.0), int(_recorded(config, "flow_still_radius", 6)))
    wanted_still = (recipe.flow.still_threshold, recipe.flow.still_radius)
    if trained_still != wanted_still and (trained_still[0] or wanted_still[0]):
        problems.append(f"trained with flow.still_threshold/still_radius {trained_still[0]:g}/{trained_still[1]}, "
                        f"the recipe's are {wanted_still[0]:g}/{wanted_still[1]}")
    trained_stride = int(config.get("flow_stride") or 1)
    if trained_stride != recipe.flow.stride:
        problems.append(f"trained on pairs {trained_stride} stored frame(s) apart, the recipe's flow stride is {recipe.flow.stride}")
    problems += _view_problems(config, recipe)
    scale = config.flow_max_magnitude or flow.DEFAULT_MAX_MAGNITUDE
    if scale != flow.DEFAULT_MAX_MAGNITUDE:
        problems.append(f"flow-RGB scale is {scale} px, builds use {flow.DEFAULT_MAX_MAGNITUDE} px")
    if problems:
        raise ValueError(f"{recipe.vae}: VAE does not match the recipe: {'; '.join(problems)}")


def _view_problems(config: Any, recipe: Recipe) -> list[str]:
    """How the recipe fits frames and lays out cameras, against what the VAE's flow came from: a padded frame's
    flow is not a cropped one's, and a T-layout frame holds three pictures where a single view holds one."""
    from latent_action.pairs import FlowSettings

    trained = FlowSettings.of_vae(config)  # as labelling reads it, a VAE from before these were recorded included
    problems = []
    if trained.fit != recipe.resize:
        problems.append(f"trained on frames fitted by '{trained.fit}', the recipe's resize is '{recipe.resize}'")
    for number, source in enumerate(recipe.sources):
        view = source.camera_view(recipe.resize)
        if view.layout not in trained.layouts:
            problems.append(f"sources[{number}] ({source.kind}) stores {LAYOUT_WORDS[view.layout]}, the VAE was trained on "
                            + layouts_in_words(trained.layouts))
        elif problem := reordered_t_layout(view, trained.t_names):
            problems.append(f"sources[{number}] ({source.kind}) {problem}")
    return problems


def _recorded(config: Any, key: str, default: Any) -> Any:
    """A VAE config value, or `default` for VAEs saved before it was recorded."""
    value = config.get(key)
    return default if value is None else value


class StageWriter:
    """Writes one episode's clips, flow rows and status to the staging directory (temp name, then rename)."""

    def __init__(self, recipe: Recipe):
        from pyramid.staging import Staging

        self.recipe = recipe
        with worker_setup():
            self.staging = Staging(Path(recipe.output))

    def write(self, row: dict, payloads: Iterable[dict] | None) -> dict:
        """Stage the episode from its parts' payloads (None: failed or skipped before any output). The payloads may be
        made as they are asked for: whatever goes wrong in any part quarantines the episode, and nothing of it stays."""
        staged = None
        try:
            if payloads is None:
                summary = self.staging.write_status(row, None)
            else:
                staged = self.staging.begin_episode(row["episode_id"])
                summary = self.staging.commit_episode(row, staged, self._stage_parts(staged, payloads))
        except Exception as exc:  # noqa: BLE001
            if staged is not None:
                staged.discard()
            summary = self.staging.write_status(failure(row, exc), None)
        return _written(row, summary)

    def _stage_parts(self, staged, payloads: Iterable[dict]) -> dict:
        """Write each part as it comes; the episode's status."""
        summary = None
        for payload in payloads:
            outputs = part_outputs(payload, self.recipe)
            with timed(payload["seconds"], "stage_write"):
                staged.add(outputs.shard_members, {"clips.arrow": outputs.clips, "flow.arrow": outputs.flow})
            summary = summary or EpisodeSummary(payload["fields"])
            summary.add(outputs, payload["seconds"])
        return {**summary.status(), "node": _node_id()}

    def __call__(self, row: dict) -> dict:
        """One row of the GPU stages: a whole episode, a part of one, or an episode that failed or was skipped."""
        payload = _unpack(row)
        if payload is None:
            return self._record_failure(row)
        if payload["parts"] == 1:
            return self.write(row, [payload])
        return self._stage_part(row, payload)

    def _record_failure(self, row: dict) -> dict:
        """Its status first, then no part of it (a part staged later sees the status and removes itself)."""
        episode_id = row["episode_id"]
        summary = self.staging.status(episode_id) or self.staging.write_status(row, None)
        self.staging.clear_parts(episode_id)
        return _written(row, summary)

    def _stage_part(self, row: dict, payload: dict) -> dict:
        """Stage a part alone; the writer that stages the last one joins them into the episode."""
        episode_id, part, parts = row["episode_id"], payload["part"], payload["parts"]
        try:
            outputs = part_outputs(payload, self.recipe)
            with timed(payload["seconds"], "stage_write"):
                sizes = self.staging.stage_part(episode_id, part, outputs.shard_members, {"clips.arrow": outputs.clips, "flow.arrow": outputs.flow})
            self.staging.record_part(episode_id, part, part_record(outputs, payload["seconds"], payload["fields"]), sizes)
        except Exception as exc:  # noqa: BLE001
            return self._record_failure(failure(row, exc))
        if self.staging.status_path(episode_id).exists():  # quarantined while this part was in flight
            self.staging.clear_parts(episode_id)
            return _written(row, self.staging.status(episode_id))
        if self.staging.parts_staged(episode_id) < parts or not self.staging.claim_join(episode_id):
            return _written(row, {"status": "part staged"})
        return self._join(row, parts)

    def _join(self, row: dict, parts: int) -> dict:
        episode_id = row["episode_id"]
        summary = None
        try:
            staged = self.staging.begin_episode(episode_id)
            try:
                for record, members, tables in self.staging.staged_parts(episode_id, parts):
                    staged.add(members, tables)
                    summary = summary or EpisodeSummary(record["fields"])
                    summary.add(*recorded_part(record))
                status = self.staging.commit_episode(row, staged, {**summary.status(), "node": _node_id()})
            except BaseException:
                staged.discard()
                raise
        except Exception as exc:  # noqa: BLE001
            status = self.staging.write_status(failure(row, exc), None)
        self.staging.clear_parts(episode_id)
        return _written(row, status)


def _written(row: dict, summary: dict) -> dict:
    return {"order": row["order"], "episode_id": row["episode_id"], "status": summary["status"], "reason": summary.get("reason", "")}


def _node_id() -> str | None:
    """The Ray node this worker runs on (a build's manifest counts the episodes each node processed)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


class EpisodeWorker:
    """Every step in one actor, for CPU-only machines: payloads stay in memory, one worker per core."""

    def __init__(self, recipe: Recipe, threads: int = 1):
        self.recipe = recipe
        self.flow = FlowStage(recipe, threads=threads)
        self.label = None
        if recipe.vae:
            import torch

            torch.set_num_threads(threads)
            self.label = LabelStage(recipe)
        self.writer = StageWriter(recipe)

    def __call__(self, row: dict) -> dict:
        row, plan = plan_episode(row, self.recipe)
        return self.writer.write(row, None if plan is None else self._processed_parts(plan))

    def _processed_parts(self, plan: PlannedEpisode) -> Iterator[dict]:
        """Each part of the episode through flow (and labelling), one part in memory at a time."""
        for payload in part_payloads(plan, self.recipe, PART_FRAMES):
            for stage in filter(None, (self.flow, self.label)):
                payload = stage.process(payload)
            yield payload
