"""Per-episode staging: the durable result of processing one episode, before packing into shards.

For each episode `<id>`: `<id>.tar` (its clip samples, in the shard sample format of SHARDS.md),
`<id>.flow.parquet` (its flow-RGB pairs) and `<id>.json` (status and counts). The JSON is written
last, by rename, so its presence means the episode is completely done: a killed build resumes by
skipping episodes that have one.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pyramid.clips import pair_actions
from pyramid.paths import output_child
from pyramid.recipe import Recipe
from pyramid.schema import FLOW_SCHEMA
from pyramid.video_io import write_video

TAR_MTIME = 0  # fixed so that a rebuilt shard is byte-identical


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name, flush to disk, rename: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


def mp4_bytes(frames: np.ndarray, fps: float) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(Path(tmp) / "clip.mp4", frames, fps=fps, codec="libx264", crf=18)
        return path.read_bytes()


class Staging:
    def __init__(self, output: Path):
        self.dir = Path(output) / "_staging"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, episode_id: str, suffix: str) -> Path:
        """A staged file of one episode; the id must be a plain file name, so nothing lands outside staging."""
        return output_child(self.dir, f"{episode_id}.{suffix}")

    def status_path(self, episode_id: str) -> Path:
        return self.path(episode_id, "json")

    def status(self, episode_id: str) -> dict | None:
        path = self.status_path(episode_id)
        return json.loads(path.read_text()) if path.exists() else None

    def write_status(self, row: dict, counts: dict | None) -> dict:
        summary = {"episode_id": row["episode_id"], "status": row["status"], "reason": row.get("reason", ""),
                   "source": row["source"], "path": row.get("path", ""), "level": row.get("level"), **(counts or {})}
        atomic_write_bytes(self.status_path(row["episode_id"]), json.dumps(summary).encode())
        return summary

    def write_episode(self, row: dict, payload: dict | None, recipe: Recipe) -> dict:
        if payload is None:
            return self.write_status(row, None)
        episode_id = row["episode_id"]
        samples = list(clip_samples(payload, recipe))
        self._write_tar(episode_id, samples)
        self._write_flow(episode_id, payload, recipe.flow.stride)
        fields = payload["fields"]
        counts = {"level": fields["level"], "embodiment": fields["embodiment"], "clips": len(samples),
                  "static_clips": len(payload["spans"]) - len(samples),
                  "seconds": fields["num_source_frames"] / fields["source_fps"] if fields["source_fps"] else 0.0,
                  "stored_frames": int(sum(s["json"]["num_frames"] for s in samples)),
                  "flow_pairs": int(len(payload["flow_rgb"]))}
        if not samples:
            row = {**row, "status": "skipped", "reason": f"{row['path']}: every clip is static (moving pixels below static_motion_threshold)"}
        return self.write_status(row, counts)

    def _write_tar(self, episode_id: str, samples: list[dict]) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for sample in samples:
                for name, data in sample_members(sample):
                    add_member(tar, name, data)
        atomic_write_bytes(self.path(episode_id, "tar"), buffer.getvalue())

    def _write_flow(self, episode_id: str, payload: dict, stride: int) -> None:
        fields, actions, latents = payload["fields"], payload["actions"], payload.get("latent_actions")
        actions = None if actions is None else pair_actions(actions, payload["indices"], stride)
        clip_keys = pair_clip_keys(payload, stride)
        rows = [{"episode_id": episode_id, "source": fields["source"], "embodiment": fields["embodiment"],
                 "level": fields["level"], "pair_index": t, "clip_key": clip_keys.get(t), "flow_rgb": png_bytes(rgb),
                 "action": None if actions is None else actions[t].tolist(),
                 "latent_action": None if latents is None else latents[t].tolist()}
                for t, rgb in enumerate(payload["flow_rgb"])]
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=FLOW_SCHEMA), buffer)
        atomic_write_bytes(self.path(episode_id, "flow.parquet"), buffer.getvalue())

    def samples(self, episode_id: str) -> Iterator[dict[str, bytes]]:
        """The staged clip samples of one episode, each as {field name: bytes} plus `__key__`."""
        path = self.path(episode_id, "tar")
        if not path.exists():
            return
        current: dict[str, bytes] = {}
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, field = member.name.partition(".")
                if current and current["__key__"] != key:
                    yield current
                    current = {}
                current.setdefault("__key__", key)
                current[field] = tar.extractfile(member).read()
        if current:
            yield current

    def flow_table(self, episode_id: str) -> pa.Table | None:
        path = self.path(episode_id, "flow.parquet")
        return pq.read_table(path) if path.exists() else None


def flow_scale() -> float:
    import flow

    return flow.DEFAULT_MAX_MAGNITUDE


def clip_key(episode_id: str, clip_index: int) -> str:
    return f"{episode_id}_c{clip_index:04d}"


def pair_clip_keys(payload: dict, stride: int) -> dict[int, str]:
    """pair index -> key of the kept clip whose pair range holds it (the rows of that clip's latent_actions.npy)."""
    spans, episode_id = payload["spans"], payload["fields"]["episode_id"]
    return {t: clip_key(episode_id, spans[clip].index) for clip in payload["kept_clips"]
            for t in range(spans[clip].first, spans[clip].stop - stride)}


def clip_samples(payload: dict, recipe: Recipe) -> Iterator[dict[str, Any]]:
    fields, frames, spans = payload["fields"], payload["frames"], payload["spans"]
    latents = payload.get("latent_actions")
    stride = recipe.flow.stride
    for clip in payload["kept_clips"]:
        span = spans[clip]
        meta = {**fields, "clip_index": span.index, "start_frame": span.start_frame, "end_frame": span.end_frame,
                "num_frames": span.num_frames, "height": recipe.video_size[0], "width": recipe.video_size[1],
                "action_fps": fields["source_fps"], "has_actions": payload["actions"] is not None,
                "has_latent_actions": latents is not None,
                "motion": payload["clip_motion"][clip],
                "flow": {"backend": recipe.flow.backend, "stride": stride, "dataset": "flow.lance",
                         "max_magnitude": flow_scale(),
                         "pair_range": [span.first, span.stop - stride]}}
        sample: dict[str, Any] = {"__key__": clip_key(fields["episode_id"], span.index), "json": meta,
                                  "mp4": mp4_bytes(frames[span.first : span.stop], fields["fps"])}
        for name in ("actions", "state"):
            if payload[name] is not None:
                sample[f"{name}.npy"] = payload[name][span.start_frame : span.end_frame]
        if latents is not None:
            sample["latent_actions.npy"] = latents[span.first : span.stop - stride]
        yield sample


def sample_members(sample: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
    key = sample["__key__"]
    for field, value in sample.items():
        if field == "__key__":
            continue
        if field == "json":
            data = json.dumps(value, sort_keys=True).encode()
        elif field.endswith(".npy"):
            data = npy_bytes(value)
        else:
            data = value
        yield f"{key}.{field}", data


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))
