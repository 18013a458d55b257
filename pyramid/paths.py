"""Confinement: every path a reader opens stays inside its dataset root, every path a writer makes inside its output,
and an output never overlaps what it is made from.

Readers refuse `..` and absolute paths from metadata, and symlinks that leave the root or loop back on
themselves (a source option, `follow_symlinks: true`, lets links out of the root; loops are never
followed). Writers take names only from `safe_name`, so a crafted key cannot climb out of the output.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from pyramid.errors import EpisodeError, ExportError

SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def symlink_problem(path: Path, root: Path, follow_symlinks: bool = False) -> str | None:
    """Why the symlink at `path` must not be followed (a loop, or a target outside `root`), or None."""
    if not path.is_symlink():
        return None
    try:
        target = os.path.realpath(path, strict=True)
    except (OSError, RuntimeError):
        return f"broken or looping symlink ({os.readlink(path)})"
    if path.is_dir() and _within(os.path.realpath(path.parent), target):
        return f"symlink loop (points at its own ancestor {target})"
    if not follow_symlinks and not _within(target, os.path.realpath(root)):
        return f"symlink leaves the dataset root (to {target}); set the source option follow_symlinks: true to read it"
    return None


def confined(root: Path, relative: str | os.PathLike, follow_symlinks: bool = False) -> Path:
    """`root / relative`, or an EpisodeError when metadata points outside the root (absolute, `..`, a symlink out)."""
    relative = Path(relative)
    path = Path(root) / relative
    if relative.is_absolute() or ".." in relative.parts:
        raise EpisodeError(path, f"path '{relative}' leaves the dataset root {root}")
    if path.is_symlink() and not path.exists():  # else "missing", or "outside the root" where it would have led
        raise EpisodeError(path, f"broken symlink (to {os.readlink(path)})")
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if not _within(real, real_root):
        if not follow_symlinks:
            raise EpisodeError(path, f"resolves to {real}, outside the dataset root {root} "
                                     f"(set the source option follow_symlinks: true to read it)")
        for ancestor in [path, *path.parents]:
            if ancestor == Path(root):
                break
            if (problem := symlink_problem(ancestor, root, True)) is not None:
                raise EpisodeError(path, problem)
    return path


def safe_name(name: str, what: str = "name") -> str:
    """`name` when it is a plain file name (letters, digits, `_ . -`; no separators, no leading dot), else ValueError."""
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{what} {name!r} is not a safe file name (letters, digits, '_', '-', '.')")
    return name


def file_name_of(text: str) -> str:
    """`text` (a name from a dataset: a robot type, say) as a safe file name: each run of other characters than
    letters, digits, `_` and `-` becomes one `_` (`x/../y` reads `x_y`)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:200] or "_"


def output_child(out_dir: Path, *names: str) -> Path:
    """A path under `out_dir` built from safe names only."""
    return Path(out_dir).joinpath(*(safe_name(name) for name in names))


def file_version(path: str | os.PathLike) -> tuple[int, int, int]:
    """What changes when a file is written anew, in place or renamed over it: its inode, size and modification time
    (the key under which what was read of it is kept)."""
    status = os.stat(path)
    return status.st_ino, status.st_size, status.st_mtime_ns


def resolves_inside(path: Path, root: Path) -> bool:
    """Whether `path`, links resolved, is `root` or lies inside it."""
    return _within(os.path.realpath(path), os.path.realpath(root))


def overlapping(first: Path, second: Path) -> bool:
    """Whether one path is the other or lies inside it (links resolved)."""
    first, second = os.path.realpath(first), os.path.realpath(second)
    return _within(first, second) or _within(second, first)


def overlap_problem(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], what: str) -> str | None:
    """The line refusing `output` (named `what`) where it is, lies inside or holds one of `inputs` (links resolved), or
    None: a command writing there would change what it reads, and what a later run of it would read."""
    found = next((path for path in inputs if overlapping(path, output)), None)
    return None if found is None else f"{output}: {what} overlaps the input {found} (one lies inside the other); write it elsewhere"


def under_a_file(output: Path, made_in: Path | None = None) -> str | None:
    """The line refusing `output` where a file stops it from being made (`made_in`: the folder it is made in, where
    `output` itself is replaced whole), the file being that folder or its nearest existing parent; or None."""
    directory = output if made_in is None else made_in
    for parent in (directory, *directory.parents):
        if parent.exists():
            return None if parent.is_dir() else f"{output}: cannot be the output directory ({parent} is a file)"
    return None


def absent_or_empty(path: Path) -> bool:
    """Whether `path` does not exist or is an empty directory: an output a writer may take."""
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def check_export_target(input_path: Path, out_dir: Path, overwrite: bool, marker: str) -> None:
    """An export may write `out_dir` when it is apart from its input (neither inside the other) and absent, empty, or,
    with `overwrite`, an earlier export of its kind (it holds `marker`): never another directory a user keeps."""
    if overlapping(input_path, out_dir):
        raise ExportError(f"{out_dir}: overlaps the input {input_path} (one lies inside the other); write the export elsewhere")
    if absent_or_empty(out_dir):
        return
    if not overwrite:
        raise ExportError(f"{out_dir}: already exists (pass --overwrite to replace it)")
    if not (out_dir / marker).exists():
        raise ExportError(f"{out_dir}: --overwrite replaces only an earlier export, and this holds no {marker}")
