"""Lance datasets of a build: `clips.lance` (one row per clip, with its video) and `flow.lance` (one per frame pair).

Workers stage each episode's rows as Arrow IPC files; these are memory-mapped and streamed, in
discovery order, into a temporary dataset that is renamed into place when complete, so a reader never
sees a half-written dataset.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

import lance
import pyarrow as pa

from pyramid.atomic import atomic_directory
from pyramid.schema import CLIP_SCHEMA, FLOW_SCHEMA, LANCE_STORAGE_VERSION, NPY_COLUMNS, check_pylance
from pyramid.staging import Staging


def clip_row(sample: dict[str, bytes]) -> dict:
    """One clips.lance row of a serialised shard sample."""
    meta = json.loads(sample["json"])
    row = {name: meta.get(name) for name in CLIP_SCHEMA.names if name in meta}
    row.update(key=sample["__key__"], json=sample["json"].decode(), video=sample["mp4"])
    for field, column in NPY_COLUMNS.items():
        row[column] = sample.get(field)
    return row


FINGERPRINT_KEY = b"pyramid.recipe_fingerprint"
EPISODES_KEY = b"pyramid.episodes_digest"  # which episodes it holds, in order: a resumed finalize may hold others


def write_clips(output: Path, staging: Staging, statuses: Callable[[], Iterable[dict]], fingerprint: str) -> Path:
    """clips.lance from the staged rows of the episodes `statuses()` yields, in that order."""
    return _write_staged(Path(output) / "clips.lance", CLIP_SCHEMA, staging, statuses, "clips.arrow", fingerprint)


def write_flow(output: Path, staging: Staging, statuses: Callable[[], Iterable[dict]], fingerprint: str) -> Path:
    return _write_staged(Path(output) / "flow.lance", FLOW_SCHEMA, staging, statuses, "flow.arrow", fingerprint)


def _write_staged(path: Path, schema: pa.Schema, staging: Staging, statuses: Callable[[], Iterable[dict]], suffix: str,
                  fingerprint: str) -> Path:
    def batches() -> Iterator[pa.RecordBatch]:
        for status in statuses():
            yield from staging.record_batches(status, suffix)

    return _write_atomically(path, schema, batches, fingerprint, _episodes_digest(statuses()))


def _episodes_digest(statuses: Iterable[dict]) -> str:
    return hashlib.sha256("\n".join(status["episode_id"] for status in statuses).encode()).hexdigest()[:16]


def written_by(path: Path) -> str | None:
    """The recipe fingerprint a Lance dataset of ours was written under (None: not one of ours, or unreadable)."""
    return _metadata(path)[0]


def _metadata(path: Path) -> tuple[str | None, str | None]:
    """The recipe fingerprint and the episodes' digest a Lance dataset of ours was written with (None where absent)."""
    try:
        metadata = lance.dataset(str(path)).schema.metadata or {}
    except (OSError, ValueError, RuntimeError):
        return None, None
    return tuple(metadata.get(key, b"").decode() or None for key in (FINGERPRINT_KEY, EPISODES_KEY))


def _write_atomically(path: Path, schema: pa.Schema, batches: Callable[[], Iterator[pa.RecordBatch]], fingerprint: str,
                      episodes: str) -> Path:
    """Kept when this recipe already wrote it of these episodes (finalize resumed); anything else there is stale and
    rewritten: another recipe's, or one written before a --retry-failed rerun built an episode more, or before the
    sources gained one."""
    if path.exists():
        if _metadata(path) == (fingerprint, episodes):
            return path
        shutil.rmtree(path)
    check_pylance()
    schema = schema.with_metadata({**(schema.metadata or {}), FINGERPRINT_KEY: fingerprint.encode(),
                                   EPISODES_KEY: episodes.encode()})
    with atomic_directory(path, create=False) as tmp:
        reader = pa.RecordBatchReader.from_batches(schema, batches())
        lance.write_dataset(reader, str(tmp), schema=schema, mode="create", max_rows_per_file=4096,
                            data_storage_version=LANCE_STORAGE_VERSION)
    return path
