"""Atomic writes, the one way the project writes a file or a directory: under a temporary name beside the
target, flushed to disk, then renamed over it, so a reader sees the old version or the whole new one.

The temporary name is `.<stem>.tmp<pid><suffix>`: hidden from globs such as `step_*`, two processes never
share one, it keeps the suffix that writers such as `np.save` go by, and its pid tells a live writer from a killed
one. A directory's old version waits under `.<stem>.tmp<pid>-old<suffix>` until the new one is in place.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from pyramid.paths import under_a_file


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def _temporary_pattern(stem: str, suffix: str) -> re.Pattern:
    """`temporary_name`'s form, and that of a directory's old version, for a stem and suffix given as regexes; group 1
    is the writer's pid."""
    return re.compile(rf"\.{stem}\.tmp(\d+)(?:-old)?{suffix}")


_ANY_TEMPORARY = _temporary_pattern(".+", ".*")


def is_temporary(path: Path) -> bool:
    """Whether `path` has a temporary name (`temporary_name`): pathlib's globs such as `*.json` match hidden files."""
    return _ANY_TEMPORARY.fullmatch(Path(path).name) is not None


def temporaries_of(path: Path) -> dict[Path, int]:
    """The temporary names of exactly `path` beside it (not those of `path.v1`, say), with the writer's pid; a
    directory's old version set aside (`-old`) is one too."""
    exact = _temporary_pattern(re.escape(path.stem), re.escape(path.suffix))
    candidates = path.parent.glob(f".{glob.escape(path.stem)}.tmp*{glob.escape(path.suffix)}")
    return {found: int(match.group(1)) for found in candidates if (match := exact.fullmatch(found.name))}


def remove_temporaries(directory: Path) -> None:
    """Remove what killed writers left in `directory` (not below it); for a writer that holds the directory's lock,
    so that no live writer's temporary is among them."""
    if not directory.is_dir() or directory.is_symlink():
        return
    for found in directory.iterdir():
        if is_temporary(found):
            if found.is_dir() and not found.is_symlink():
                shutil.rmtree(found, ignore_errors=True)
            else:
                found.unlink(missing_ok=True)


def stale_temporaries(path: Path) -> list[Path]:
    """The temporary names of `path` that any writer left beside it, for outputs that one writer alone works on
    (an episode's staged files)."""
    return list(temporaries_of(path))


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


class OutputBusy(FileExistsError):
    """Another live process is writing the same output."""


@contextmanager
def atomic_directory(path: Path, sync: bool = True, create: bool = True) -> Iterator[Path]:
    """Yield a temporary directory to fill (`create=False`: not made, for writers that make it themselves);
    on success it replaces `path`, whatever was there (where `path` links to a directory, that directory: the link
    stays). OutputBusy where another live process is writing `path`."""
    path = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    if problem := under_a_file(path, made_in=path.parent):  # else the error names the temporary folder
        raise NotADirectoryError(problem)
    tmp = temporary_name(path)
    _clear_dead_writers(path)
    if create:
        tmp.mkdir(parents=True)
    retired = _retired_name(path, os.getpid())
    try:
        yield tmp
        if sync:
            for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
                _fsync(file)
        if path.is_dir():
            os.replace(path, retired)  # set aside, not deleted in place: a kill while deleting a large one
        os.replace(tmp, path)          # left it half-deleted where it stood
    except BaseException:
        if retired.exists() and not path.exists():  # stopped between the two renames (Ctrl-C)
            os.replace(retired, path)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_old_version(retired, path)


def _clear_dead_writers(path: Path) -> None:
    """Remove what killed writers of `path` left (a checkpoint: GBs); restore an old version one set aside and did not
    replace (killed between its renames). OutputBusy where a writer is alive."""
    for found, pid in temporaries_of(path).items():
        if pid != os.getpid() and _alive(pid):
            raise OutputBusy(f"{path}: another process (pid {pid}) is writing it; wait for it to end, or choose another "
                             f"output (delete {found.name} beside it if no such process is running)")
        if found != _retired_name(path, pid):
            shutil.rmtree(found, ignore_errors=True)
        elif path.exists():
            _remove_old_version(found, path)
        else:
            os.replace(found, path)


def _remove_old_version(retired: Path, path: Path) -> None:
    """Delete `path`'s replaced version; where some of it cannot be deleted (read-only folders, say), say so on stderr
    in one line, as it stays hidden beside the new one."""
    try:
        shutil.rmtree(retired)
    except FileNotFoundError:
        pass
    except OSError as exc:
        shutil.rmtree(retired, ignore_errors=True)  # as much of it as can go
        if retired.exists():
            print(f"warning: {path}: its earlier version could not all be deleted and stays beside it as {retired.name} "
                  f"({exc.filename}: {exc.strerror or exc}); delete it by hand", file=sys.stderr)


def _retired_name(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.stem}.tmp{pid}-old{path.suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync(file: Path) -> None:
    descriptor = os.open(file, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
