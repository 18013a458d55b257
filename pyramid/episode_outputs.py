"""What a worker makes of one processed episode, ready for finalize to concatenate or commit as is.

An episode is processed in parts of whole clips (`clips.clip_parts`; one part unless it is long). From a part's
payload (stored frames, flow, latents, arrays) it builds the part's WebDataset members as tar bytes (shards are
these bytes end to end) and its `clips.lance` and `flow.lance` rows as Arrow tables; `EpisodeSummary` gathers the
parts into the episode's status: counts, partial normalisation statistics, report previews and seconds per stage.
Finalize never decodes, re-reads or re-parses a clip: one pass per episode.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import cv2
import numpy as np
import pyarrow as pa

from pyramid.clips import pair_actions
from pyramid.recipe import Recipe
from pyramid.schema import npy_bytes
from pyramid.stats import partial_stats

TAR_MTIME = 0  # fixed so that a rebuilt shard is byte-identical
ARRAYS = {"state": "state.npy", "actions": "actions.npy", "latent_actions": "latent_actions.npy"}


@dataclass
class PartOutputs:
    shard_members: bytes  # tar members of the part's kept clips, without the end-of-archive blocks
    clips: pa.Table | None  # clips.lance rows, when the recipe writes Lance
    flow: pa.Table | None  # flow.lance rows, when the recipe stores flow
    counts: dict[str, int]  # clips, static clips, stored frames and flow pairs of the part
    arrays: dict[str, list[np.ndarray]]  # the kept clips' arrays by name, for the episode's statistics
    previews: dict  # the report's previews, from the part's first kept clip


@contextmanager
def timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall seconds of the block to `seconds[stage]` (the per-stage breakdown of a build)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started


def part_outputs(payload: dict, recipe: Recipe) -> PartOutputs:
    from pyramid.schema import CLIP_SCHEMA, FLOW_SCHEMA
    from pyramid.sinks.lance_sink import clip_row

    seconds = payload.setdefault("seconds", {})
    with timed(seconds, "video_encode"):
        raw_samples = list(clip_samples(payload, recipe))
    samples = [serialized(sample) for sample in raw_samples]
    clips = pa.Table.from_pylist([clip_row(s) for s in samples], schema=CLIP_SCHEMA) if "lance" in recipe.formats else None
    flow = None
    if recipe.flow.store:
        with timed(seconds, "flow_encode"):
            flow = pa.Table.from_pylist(flow_rows(payload, recipe.flow.stride), schema=FLOW_SCHEMA)
    counts = {"clips": len(samples), "static_clips": len(payload["spans"]) - len(samples),
              "stored_frames": int(sum(json.loads(s["json"])["num_frames"] for s in samples)),
              "flow_pairs": int(payload["num_pairs"])}
    arrays = {name: [s[field] for s in raw_samples if field in s and s[field].size] for name, field in ARRAYS.items()}
    return PartOutputs(tar_members(samples), clips, flow, counts, arrays, previews(payload, recipe))


class EpisodeSummary:
    """An episode's status from its parts: counts summed, statistics over every kept clip (as if it were one part),
    the previews of its first kept clip, and the seconds each stage took over all parts."""

    def __init__(self, fields: dict):
        self.fields = fields
        self.seconds: dict[str, float] = {}
        self.counts = {"clips": 0, "static_clips": 0, "stored_frames": 0, "flow_pairs": 0}
        self.arrays: dict[str, list[np.ndarray]] = {name: [] for name in ARRAYS}
        self.previews: dict = {}

    def add(self, part: PartOutputs, seconds: dict[str, float]) -> None:
        """Add the parts in episode order."""
        for key, value in part.counts.items():
            self.counts[key] += value
        for name, parts in part.arrays.items():
            self.arrays[name] += parts
        self.previews = self.previews or part.previews
        for stage, value in seconds.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + value

    def status(self) -> dict:
        fields = self.fields
        return {"level": fields["level"], "embodiment": fields["embodiment"], **self.counts,
                "seconds": fields["num_source_frames"] / fields["source_fps"] if fields["source_fps"] else 0.0,
                "stats": {name: partial_stats(np.concatenate(parts)) for name, parts in self.arrays.items() if parts},
                **self.previews, "stage_seconds": self.seconds}


def part_record(part: PartOutputs, seconds: dict[str, float], fields: dict) -> dict:
    """What `EpisodeSummary.add` takes from a part, as JSON: a part staged by one writer, joined by another."""
    return {"fields": fields, "counts": part.counts, "previews": part.previews, "seconds": seconds,
            "arrays": {name: [base64.b64encode(npy_bytes(array)).decode() for array in arrays] for name, arrays in part.arrays.items()}}


def recorded_part(record: dict) -> tuple[PartOutputs, dict[str, float]]:
    """`part_record`'s part (without its members and rows, which stay in their files) and seconds."""
    from pyramid.schema import npy_array

    arrays = {name: [npy_array(base64.b64decode(text)) for text in texts] for name, texts in record["arrays"].items()}
    return PartOutputs(b"", None, None, record["counts"], arrays, record["previews"]), record["seconds"]


def flow_scale() -> float:
    import flow

    return flow.DEFAULT_MAX_MAGNITUDE


def clip_samples(payload: dict, recipe: Recipe) -> Iterator[dict[str, Any]]:
    from pyramid.staging import mp4_bytes

    fields, frames, spans = payload["fields"], payload["frames"], payload["spans"]
    latents = payload.get("latent_actions")
    stride, offset = recipe.flow.stride, payload.get("offset", 0)  # spans count stored frames from the part's first
    for clip in payload["kept_clips"]:
        span = spans[clip]
        meta = {**fields, "clip_index": span.index, "start_frame": span.start_frame, "end_frame": span.end_frame,
                "num_frames": span.num_frames, "height": recipe.video_size[0], "width": recipe.video_size[1],
                "action_fps": fields["source_fps"], "has_actions": payload["actions"] is not None,
                "has_latent_actions": latents is not None,
                "motion": payload["clip_motion"][clip],
                "flow": {"backend": recipe.flow.backend, "stride": stride, "dataset": "flow.lance" if recipe.flow.store else None,
                         "max_magnitude": flow_scale(),
                         "pair_range": [offset + span.first, offset + span.stop - stride]}}
        sample: dict[str, Any] = {"__key__": clip_key(fields["episode_id"], span.index), "json": meta,
                                  "mp4": mp4_bytes(frames[span.first : span.stop], fields["fps"])}
        for name in ("actions", "state"):
            if payload[name] is not None:
                sample[f"{name}.npy"] = payload[name][span.start_frame : span.end_frame]
        if latents is not None:
            sample["latent_actions.npy"] = latents[span.first : span.stop - stride]
        yield sample


def serialized(sample: dict[str, Any]) -> dict[str, bytes]:
    """A sample as {field: bytes} (`__key__` stays a string): json sorted, arrays as .npy."""
    out: dict[str, Any] = {"__key__": sample["__key__"]}
    for field, value in sample.items():
        if field == "json":
            out[field] = json.dumps(value, sort_keys=True).encode()
        elif field.endswith(".npy"):
            out[field] = npy_bytes(value)
        elif field != "__key__":
            out[field] = value
    return out


def tar_members(samples: list[dict[str, bytes]]) -> bytes:
    """The samples as consecutive tar members (fields in sorted order), without the end-of-archive blocks."""
    buffer = io.BytesIO()
    tar = tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT)
    for sample in samples:
        key = sample["__key__"]
        for field in sorted(f for f in sample if f != "__key__"):
            add_member(tar, f"{key}.{field}", sample[field])
    members = buffer.getvalue()  # before close() appends the end-of-archive blocks
    tar.close()
    return members


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


def clip_key(episode_id: str, clip_index: int) -> str:
    return f"{episode_id}_c{clip_index:04d}"


def pair_clip_keys(payload: dict, stride: int) -> dict[int, str]:
    """pair index -> key of the kept clip whose pair range holds it (the rows of that clip's latent_actions.npy)."""
    spans, episode_id = payload["spans"], payload["fields"]["episode_id"]
    return {t: clip_key(episode_id, spans[clip].index) for clip in payload["kept_clips"]
            for t in range(spans[clip].first, spans[clip].stop - stride)}


def flow_rows(payload: dict, stride: int) -> list[dict]:
    fields, actions, latents = payload["fields"], payload["actions"], payload.get("latent_actions")
    offset = payload.get("offset", 0)  # pair t of the part is pair offset + t of the episode
    actions = None if actions is None else pair_actions(actions, payload["indices"], stride)
    clip_keys = pair_clip_keys(payload, stride)
    return [{"episode_id": fields["episode_id"], "source": fields["source"], "embodiment": fields["embodiment"],
             "level": fields["level"], "pair_index": offset + t, "clip_key": clip_keys.get(t), "flow_npy_zst": blob,
             "action": None if actions is None else actions[t].tolist(),
             "latent_action": None if latents is None else latents[t].tolist()}
            for t, blob in enumerate(payload["flow_blobs"])]


def previews(payload: dict, recipe: Recipe) -> dict:
    """Half-size PNGs (first frame, frame + stride, their flow) of the first kept clip, and its latent actions."""
    if not payload["kept_clips"] or "preview_flow_rgb" not in payload:
        return {}
    span = payload["spans"][payload["kept_clips"][0]]
    frames = payload["frames"]
    images = (frames[span.first], frames[min(span.first + recipe.flow.stride, span.stop - 1)], payload["preview_flow_rgb"])
    found = {"preview_png": [base64.b64encode(half_size_png(image)).decode() for image in images],
             "preview_heading": preview_heading(payload["fields"])}
    if payload.get("latent_actions") is not None:
        found["preview_latents"] = payload["latent_actions"][span.first : span.stop - recipe.flow.stride].tolist()
    return found


def preview_heading(fields: dict) -> str:
    cameras = f"{fields.get('layout', 'single')}: {', '.join(fields.get('cameras', []))}"
    return f"{fields['task'] or 'no instruction'}; cameras {cameras}"


def half_size_png(rgb: np.ndarray) -> bytes:
    small = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2))
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()
