"""Lance datasets of a build: `clips.lance` (one row per clip, with its video) and `flow.lance` (one per frame pair).

Workers stage each episode's rows as Arrow IPC files; these are memory-mapped and streamed, in
discovery order, into a temporary dataset that is renamed into place when complete, so a reader never
sees a half-written dataset.
"""

from __future__ import annotations

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

    return _write_atomically(path, schema, batches, fingerprint)


def written_by(path: Path) -> str | None:
    """The recipe fingerprint a Lance dataset of ours was written under (None: not one of ours, or unreadable)."""
    try:
        return (lance.dataset(str(path)).schema.metadata or {}).get(FINGERPRINT_KEY, b"").decode() or None
    except (OSError, ValueError, RuntimeError):
        return None


def _write_atomically(path: Path, schema: pa.Schema, batches: Callable[[], Iterator[pa.RecordBatch]], fingerprint: str) -> Path:
    """Kept when this recipe already wrote it (finalize resumed); anything else there is stale and rewritten."""
    if path.exists():
        if written_by(path) == fingerprint:
            return path
        shutil.rmtree(path)
    check_pylance()
    schema = schema.with_metadata({**(schema.metadata or {}), FINGERPRINT_KEY: fingerprint.encode()})
    with atomic_directory(path, create=False) as tmp:
        reader = pa.RecordBatchReader.from_batches(schema, batches())
        lance.write_dataset(reader, str(tmp), schema=schema, mode="create", max_rows_per_file=4096,
                            data_storage_version=LANCE_STORAGE_VERSION)
    return path
