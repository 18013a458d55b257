"""Per-episode staging: the durable result of processing one episode, before finalize commits the build.

For each episode `<id>`: `<id>.tar` (its clip samples as tar members, in the shard sample format of
SHARDS.md, without the end-of-archive blocks, so shards are these files end to end), `<id>.clips.arrow`
and `<id>.flow.arrow` (its `clips.lance` and `flow.lance` rows, Arrow IPC files that finalize maps into
memory and hands to Lance as they are) and `<id>.json` (status, counts, statistics, previews and the
byte size of each staged file). The JSON is written last, by rename, so its presence means the episode
is completely done: a killed build resumes by skipping episodes that have one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pyarrow as pa

from pyramid.atomic import atomic_write_bytes, commit, temporary_name
from pyramid.paths import output_child
from pyramid.video_io import video_bytes

# Staged data files of an episode, by suffix; the status JSON records the size of each one written.
DATA_SUFFIXES = ("tar", "clips.arrow", "flow.arrow")


PNG_FLOW_RGB = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
                cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def png_bytes(rgb: np.ndarray) -> bytes:
    # Run-length deflate of each row's difference from the row above: flow-RGB is mostly flat white (still
    # pixels) and smooth, so this is ~2x faster than libpng's per-row filter search and about its size
    # (bench/flow.py, flow storage). Lossless either way: the decoded pixels are the same.
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), PNG_FLOW_RGB)
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


def mp4_bytes(frames: np.ndarray, fps: float) -> bytes:
    return video_bytes(frames, fps=fps, codec="libx264", crf=18)


class StagedFileDamaged(Exception):
    """A staged file whose size differs from the one its status recorded (a power cut, a full disk)."""

    def __init__(self, message: str, episode_id: str):
        super().__init__(message)
        self.episode_id = episode_id


class Staging:
    def __init__(self, output: Path):
        self.dir = Path(output) / "_staging"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, episode_id: str, suffix: str) -> Path:
        """A staged file of one episode; the id must be a plain file name, so nothing lands outside staging."""
        return output_child(self.dir, f"{episode_id}.{suffix}")

    @property
    def episode_list(self) -> Path:
        return self.dir / "episodes.jsonl"

    def record_episodes(self, rows: Iterator[dict]) -> Iterator[dict]:
        """Pass discovery's rows through, listing each (order, id, path, level) for finalize; the list is
        committed once discovery is complete, so finalize never runs discovery again."""
        tmp = temporary_name(self.episode_list)
        with open(tmp, "w") as listing:
            for row in rows:
                listing.write(json.dumps({key: row[key] for key in ("order", "episode_id", "path", "level")}) + "\n")
                yield row
        commit(tmp, self.episode_list)

    def episodes(self) -> Iterator[dict]:
        """The rows `record_episodes` listed, in discovery order."""
        with open(self.episode_list) as listing:
            for line in listing:
                yield json.loads(line)

    def mark_started(self, episode_id: str) -> None:
        """Note that a worker has begun the episode. When a worker dies, the episodes begun and without a status
        are the ones that may have killed it: only those are rerun alone to find it."""
        self.path(episode_id, "started").touch()

    def started(self, episode_id: str) -> bool:
        return self.path(episode_id, "started").exists()

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

    def write_episode(self, row: dict, outputs) -> dict:
        """Stage one episode's `EpisodeOutputs` (None: failed or skipped before any output), status last."""
        if outputs is None:
            return self.write_status(row, None)
        from pyramid.episode_outputs import timed

        episode_id, status = row["episode_id"], outputs.status
        with timed(status.setdefault("stage_seconds", {}), "stage_write"):
            sizes = {"tar": self._write(episode_id, "tar", outputs.shard_members)}
            for suffix, table in (("clips.arrow", outputs.clips), ("flow.arrow", outputs.flow)):
                if table is not None and table.num_rows:
                    sizes[suffix] = self._write(episode_id, suffix, ipc_bytes(table))
        if not status["clips"]:
            row = {**row, "status": "skipped", "reason": f"{row['path']}: every clip is static (moving pixels below static_motion_threshold)"}
        return self.write_status(row, {**status, "staged_bytes": sizes})

    def _write(self, episode_id: str, suffix: str, data: bytes) -> int:
        atomic_write_bytes(self.path(episode_id, suffix), data, sync=False)
        return len(data)

    def checked_path(self, status: dict, suffix: str) -> Path | None:
        """The staged file, if the episode wrote one; StagedFileDamaged when its size is not the recorded one."""
        expected = status.get("staged_bytes", {}).get(suffix)
        if expected is None:
            return None
        path = self.path(status["episode_id"], suffix)
        found = path.stat().st_size if path.exists() else None
        if found != expected:
            raise StagedFileDamaged(f"{path}: staged file has {found} bytes, its status recorded {expected}", status["episode_id"])
        return path

    def record_batches(self, status: dict, suffix: str) -> Iterator[pa.RecordBatch]:
        """The rows of a staged Arrow file, memory-mapped (nothing is parsed or copied until Lance writes them)."""
        path = self.checked_path(status, suffix)
        if path is None:
            return
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_file(source)
            for index in range(reader.num_record_batches):
                yield reader.get_batch(index)


def ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
