"""Atomic writes, the one way the project writes a file or a directory: under a temporary name beside the
target, flushed to disk, then renamed over it, so a reader sees the old version or the whole new one.

The temporary name is `.<stem>.tmp<pid><suffix>`: hidden from globs such as `step_*`, two processes never
share one, and it keeps the suffix that writers such as `np.save` go by.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def is_temporary(path: Path) -> bool:
    """Whether `path` has a temporary name (`temporary_name`): pathlib's globs such as `*.json` match hidden files."""
    return re.fullmatch(r"\..+\.tmp\d+.*", Path(path).name) is not None


def stale_temporaries(path: Path) -> list[Path]:
    """The temporary names of `path` that any process's writer left beside it (one killed before its rename)."""
    return list(path.parent.glob(f".{glob.escape(path.stem)}.tmp*{glob.escape(path.suffix)}"))


def atomic_write_bytes(path: Path, data: bytes, sync: bool = True) -> None:
    """Write `data` to `path` atomically.

    `sync=False` skips the flush to disk (kill -9 cannot tear the file, a power cut can): for staged files
    whose sizes a synced file records, so a torn one is found and redone.
    """
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as file:
            file.write(data)

    atomic_write(path, write, sync)


def atomic_write(path: Path, write: Callable[[Path], None], sync: bool = True) -> None:
    """`write(tmp)` fills a temporary file (for writers that take a path: np.save, torch.save, an encoder)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        commit(tmp, path, sync)
    finally:
        tmp.unlink(missing_ok=True)


def commit(tmp: Path, path: Path, sync: bool = True) -> None:
    """Flush a file that was streamed to its temporary name (a shard, a listing) to disk and rename it into place."""
    if sync:
        _fsync(tmp)
    os.replace(tmp, path)


@contextmanager
def atomic_directory(path: Path, sync: bool = True, create: bool = True) -> Iterator[Path]:
    """Yield a temporary directory to fill (`create=False`: not made, for writers that make it themselves);
    on success it replaces `path`, whatever was there (where `path` links to a directory, that directory: the link
    stays)."""
    path = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    tmp = temporary_name(path)
    for stale in stale_temporaries(path):  # left by a killed writer (a checkpoint: GBs)
        shutil.rmtree(stale, ignore_errors=True)
    if create:
        tmp.mkdir(parents=True)
    try:
        yield tmp
        if sync:
            for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
                _fsync(file)
        retired = _rename_aside(path)
        os.replace(tmp, path)
        if retired is not None:  # deleted once the new version is in place: a kill during the deletion of a large
            shutil.rmtree(retired, ignore_errors=True)  # one left it half-deleted where it stood
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rename_aside(path: Path) -> Path | None:
    """Move a directory at `path` to a temporary name beside it (one that `stale_temporaries` finds)."""
    if not path.is_dir():
        return None
    retired = path.with_name(f".{path.stem}.tmp{os.getpid()}-old{path.suffix}")
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(path, retired)
    return retired


def _fsync(file: Path) -> None:
    descriptor = os.open(file, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
