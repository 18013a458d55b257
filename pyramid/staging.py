"""Per-episode staging: the durable result of processing one episode, before finalize commits the build.

For each episode `<id>`: `<id>.tar` (its clip samples as tar members, in the shard sample format of
SHARDS.md, without the end-of-archive blocks, so shards are these files end to end), `<id>.clips.arrow`
and `<id>.flow.arrow` (its `clips.lance` and `flow.lance` rows, Arrow IPC files that finalize maps into
memory and hands to Lance as they are) and `<id>.json` (status, counts, statistics, previews and the
byte size of each staged file). The JSON is written last, by rename, so its presence means the episode
is completely done: a killed build resumes by skipping episodes that have one.

Where the parts of a long episode go through different writers (the GPU layout), each part is staged alone as
`<id>.p<k>.<suffix>` with its record `<id>.p<k>.part` written last; the writer that finds every record there and
wins the claim `<id>.join` (created exclusively) joins them into the episode's files. An episode quarantined while
parts were in flight keeps none of them: the failure writes the status first, then removes the parts; a part
written after looks for the status once it is written, and removes itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pyarrow as pa

from pyramid.atomic import atomic_write, atomic_write_bytes, commit, is_temporary, stale_temporaries, temporary_name
from pyramid.paths import output_child
from pyramid.video_io import Frames, video_bytes

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


def mp4_bytes(frames: Frames, fps: float) -> bytes:
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

    @property
    def recipe_marker(self) -> Path:
        return self.dir / "recipe.json"

    def status_files(self) -> list[Path]:
        """Every episode's status file; not the recipe marker, nor a temporary a killed writer left (torn JSON)."""
        return [path for path in self.dir.glob("*.json") if path != self.recipe_marker and not is_temporary(path)]

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

    def part_path(self, episode_id: str, part: int, suffix: str) -> Path:
        return self.path(episode_id, f"p{part:04d}.{suffix}")

    def stage_part(self, episode_id: str, part: int, shard_members: bytes, tables: dict[str, pa.Table | None]) -> dict[str, int]:
        """Stage one part of an episode alone, each file by rename; their sizes, for `record_part`."""
        sizes = {"tar": len(shard_members)}
        atomic_write_bytes(self.part_path(episode_id, part, "tar"), shard_members, sync=False)
        for suffix, table in tables.items():
            if table is not None and table.num_rows:
                atomic_write(self.part_path(episode_id, part, suffix), lambda tmp, table=table: _write_arrow(tmp, table), sync=False)
                sizes[suffix] = self.part_path(episode_id, part, suffix).stat().st_size
        return sizes

    def record_part(self, episode_id: str, part: int, record: dict, sizes: dict[str, int]) -> None:
        """Mark a staged part whole: its record (`episode_outputs.part_record`) with its files' sizes, written last."""
        atomic_write_bytes(self.part_path(episode_id, part, "part"), json.dumps({**record, "sizes": sizes}).encode(), sync=False)

    def parts_staged(self, episode_id: str) -> int:
        return len(list(self.dir.glob(f"{episode_id}.p[0-9][0-9][0-9][0-9].part")))

    def claim_join(self, episode_id: str) -> bool:
        """Whether this caller is the one to join the episode's parts (the first to ask)."""
        try:
            os.close(os.open(self.path(episode_id, "join"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def staged_parts(self, episode_id: str, parts: int) -> Iterator[tuple[dict, bytes, dict[str, pa.Table]]]:
        """Each part's record, tar members and Arrow rows, in order; StagedFileDamaged where a size is not the recorded one."""
        for part in range(parts):
            record = json.loads(self.part_path(episode_id, part, "part").read_text())
            files = {suffix: _of_size(self.part_path(episode_id, part, suffix), size, episode_id) for suffix, size in record["sizes"].items()}
            tables = {suffix: pa.ipc.open_file(pa.memory_map(str(path))).read_all() for suffix, path in files.items() if suffix != "tar"}
            yield record, files["tar"].read_bytes(), tables

    def clear_parts(self, episode_id: str) -> None:
        """Remove the episode's staged parts and join claim (and what a killed writer left of them)."""
        for path in self.dir.glob(f"{episode_id}.p[0-9][0-9][0-9][0-9].*"):
            path.unlink(missing_ok=True)
        for path in self.dir.glob(f".{episode_id}.p[0-9][0-9][0-9][0-9].*"):
            path.unlink(missing_ok=True)
        self.path(episode_id, "join").unlink(missing_ok=True)

    def begin_episode(self, episode_id: str) -> "StagedEpisode":
        return StagedEpisode(self, episode_id)

    def commit_episode(self, row: dict, staged: "StagedEpisode", status: dict) -> dict:
        """Put an episode's staged files in place, then its status (`EpisodeSummary.status`) last."""
        sizes = staged.commit()
        if not status["clips"]:
            row = {**row, "status": "skipped", "reason": f"{row['path']}: every clip is static (moving pixels below static_motion_threshold)"}
        return self.write_status(row, {**status, "staged_bytes": sizes})

    def checked_path(self, status: dict, suffix: str) -> Path | None:
        """The staged file, if the episode wrote one; StagedFileDamaged when its size is not the recorded one."""
        expected = status.get("staged_bytes", {}).get(suffix)
        if expected is None:
            return None
        return _of_size(self.path(status["episode_id"], suffix), expected, status["episode_id"])

    def record_batches(self, status: dict, suffix: str) -> Iterator[pa.RecordBatch]:
        """The rows of a staged Arrow file, memory-mapped (nothing is parsed or copied until Lance writes them)."""
        path = self.checked_path(status, suffix)
        if path is None:
            return
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_file(source)
            for index in range(reader.num_record_batches):
                yield reader.get_batch(index)


class StagedEpisode:
    """One episode's staged data files, written part by part under temporary names (so that a long episode is never
    held whole) and renamed into place together by `commit`; `discard` removes them."""

    def __init__(self, staging: Staging, episode_id: str):
        self.paths = {suffix: staging.path(episode_id, suffix) for suffix in DATA_SUFFIXES}
        for path in self.paths.values():  # left by a worker killed while staging this episode
            for stale in stale_temporaries(path):
                stale.unlink(missing_ok=True)
        self.temporary = {suffix: temporary_name(path) for suffix, path in self.paths.items()}
        self.tar = open(self.temporary["tar"], "wb")
        self.tables: dict[str, pa.ipc.RecordBatchFileWriter] = {}

    def add(self, shard_members: bytes, tables: dict[str, pa.Table | None]) -> None:
        """Append a part: its tar members, and its rows of each Arrow file ("clips.arrow", "flow.arrow")."""
        self.tar.write(shard_members)
        for suffix, table in tables.items():
            if table is not None and table.num_rows:
                if suffix not in self.tables:
                    self.tables[suffix] = pa.ipc.new_file(str(self.temporary[suffix]), table.schema)
                self.tables[suffix].write_table(table)

    def commit(self) -> dict[str, int]:
        """Rename the files into place (no flush to disk: the status records their sizes, so a file torn by a power
        cut is found and the episode redone); their sizes by suffix. The tar always, an Arrow file if it has rows."""
        self._close()
        written = ["tar", *self.tables]
        sizes = {suffix: self.temporary[suffix].stat().st_size for suffix in written}
        for suffix in written:
            commit(self.temporary[suffix], self.paths[suffix], sync=False)
        return sizes

    def discard(self) -> None:
        self._close()
        for path in self.temporary.values():
            path.unlink(missing_ok=True)

    def _close(self) -> None:
        self.tar.close()
        for writer in self.tables.values():
            writer.close()


def _of_size(path: Path, expected: int, episode_id: str) -> Path:
    """`path`, or StagedFileDamaged when its size is not the one recorded (a power cut, a full disk)."""
    found = path.stat().st_size if path.exists() else None
    if found != expected:
        raise StagedFileDamaged(f"{path}: staged file has {found} bytes, its status recorded {expected}", episode_id)
    return path


def _write_arrow(path: Path, table: pa.Table) -> None:
    with pa.ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table)
