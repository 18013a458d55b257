"""What a source reader is, the registry of readers by name, and lazy directory walking.

A reader knows one on-disk dataset format. `discover()` yields `EpisodeRef`s lazily (a 300k
episode tree is never listed into memory), `read(ref)` returns one canonical `Episode`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator

from pyramid.episode import PYRAMID_LEVELS, Episode, EpisodeRef
from pyramid.errors import EpisodeError, SourceError, one_line
from pyramid.paths import confined, symlink_problem
from pyramid.validate import check_episode

SOURCES: dict[str, type["Source"]] = {}


class Source(ABC):
    """Base class of every source reader. Subclasses set `name` and `default_level`."""

    name: ClassVar[str]
    default_level: ClassVar[int]
    default_embodiment: ClassVar[str] = "unknown"

    def __init__(self, root: str | os.PathLike, level: int | None = None, embodiment: str | None = None, *,
                 follow_symlinks: bool = False, **options: Any):
        self.root = Path(root)
        self.follow_symlinks = follow_symlinks  # symlinks out of the root are refused unless set; loops always
        if not self.root.is_dir():
            raise SourceError(f"{self.root}: not a directory")
        if level is not None and level not in PYRAMID_LEVELS:
            raise SourceError(f"{self.root}: pyramid level must be 1-6, got {level}")
        self.level = level if level is not None else self.default_level
        self.embodiment_override = embodiment
        self.options = options

    @classmethod
    @abstractmethod
    def detect(cls, root: Path) -> bool:
        """Whether `root` looks like this format (cheap: a few stat calls, no full walk)."""

    @abstractmethod
    def discover(self) -> Iterator[EpisodeRef]:
        """Yield a reference to every episode under the root, lazily and in a deterministic order."""

    @abstractmethod
    def read(self, ref: EpisodeRef) -> Episode:
        """Read one episode; raise `EpisodeError` naming the file when it is unusable."""

    def load(self, ref: EpisodeRef) -> Episode:
        """`read`, then the checks every episode must pass (finite arrays, plausible fps, aligned cameras).

        What every caller uses: a discovery error, a reader's error and a failed check all raise one
        `EpisodeError` naming the file.
        """
        if ref.error:
            raise EpisodeError(ref.path, ref.error)
        try:
            episode = self.read(ref)
        except EpisodeError:
            raise
        except (OSError, KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
            raise EpisodeError(ref.path, f"{exc.__class__.__name__}: {one_line(exc)}") from exc
        return check_episode(episode)

    def ref(self, relpath: str | os.PathLike, **locator: Any) -> EpisodeRef:
        return EpisodeRef(self.name, str(self.root), Path(relpath).as_posix(), locator)

    def unreadable(self, relpath: str | os.PathLike, problem: str) -> EpisodeRef:
        """A ref for an entry discovery could not parse: `load` raises `problem`, and discovery goes on."""
        return EpisodeRef(self.name, str(self.root), Path(relpath).as_posix(), {}, error=" ".join(problem.split()))

    def resolve(self, relative: str | os.PathLike) -> Path:
        """`root / relative` for a path named by the dataset's own metadata, refused when it leaves the root."""
        return confined(self.root, relative, self.follow_symlinks)

    def walk(self, folder: Path, keep: Callable[[str], bool],
             prune: Callable[[str], bool] = lambda name: name.startswith(".")) -> Iterator[Path | EpisodeRef]:
        """`walk_files` under this source's symlink policy: a refused link comes out as an unreadable ref."""
        for item in walk_files(folder, keep, prune, confine_to=self.root, follow_symlinks=self.follow_symlinks):
            if isinstance(item, RefusedPath):
                yield self.unreadable(item.path.relative_to(self.root), item.problem)
            else:
                yield item

    def embodiment(self, detected: str | None = None) -> str:
        return self.embodiment_override or detected or self.default_embodiment


def register(cls: type[Source]) -> type[Source]:
    SOURCES[cls.name] = cls
    return cls


def get_source(kind: str) -> type[Source]:
    """A built-in reader by name, or your own `Source` subclass by import path: `my_package.my_module:MyReader`.

    The module must be importable wherever the build runs (installed, or on PYTHONPATH: a build hands the
    driver's PYTHONPATH to its Ray workers).
    """
    _load_builtin_sources()
    if ":" in kind:
        return _import_source(kind)
    if kind not in SOURCES:
        raise SourceError(f"unknown source kind '{kind}' (known: {', '.join(sorted(SOURCES))}; or module.path:ReaderClass)")
    return SOURCES[kind]


def _import_source(path: str) -> type[Source]:
    import importlib

    module_name, _, class_name = path.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise SourceError(f"source kind '{path}': cannot import it ({exc.__class__.__name__}: {exc})") from None
    if not (isinstance(found, type) and issubclass(found, Source)):
        raise SourceError(f"source kind '{path}': {class_name} is not a pyramid.sources.Source subclass")
    return found


def detect_source(root: str | os.PathLike) -> type[Source]:
    """The reader whose `detect` accepts `root`; the most specific formats are asked first."""
    _load_builtin_sources()
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory")
    for cls in sorted(SOURCES.values(), key=lambda c: c.name == "videos"):
        if cls.detect(root):
            return cls
    raise SourceError(f"{root}: no known dataset layout found (pass --source; known: {', '.join(sorted(SOURCES))})"
                      + _symlinks_out_hint(root))


def _symlinks_out_hint(root: Path) -> str:
    """Where the root's folders are symlinks out of it (a split kept on another disk), which detection, reading only
    inside a root, does not follow: how to read them."""
    try:
        leaving = [p.name for p in sorted(root.iterdir())
                   if symlink_problem(p, root) and not symlink_problem(p, root, follow_symlinks=True)]
    except OSError:
        return ""
    if not leaving:
        return ""
    shown = ", ".join(leaving[:3]) + (f" and {len(leaving) - 3} more" if len(leaving) > 3 else "")
    return (f"; {shown} {'is a symlink' if len(leaving) == 1 else 'are symlinks'} out of it, not looked into: to read "
            "them, give the source in a recipe its kind and options: {follow_symlinks: true}")


def open_source(root: str | os.PathLike, kind: str | None = None, **options: Any) -> Source:
    cls = get_source(kind) if kind else detect_source(root)
    return cls(root, **options)


def colliding_roots(sources: Iterable[tuple[str, str | os.PathLike]]) -> str | None:
    """The line saying which two of the (kind, root) sources would give their episodes the same ids, or None.

    An episode id carries its reader's kind and its root folder's name, not the root's path (so that a moved dataset
    keeps its ids): two datasets of one kind in folders of one name, or one root listed twice, collide.
    """
    seen: dict[tuple[str, str], Path] = {}
    for kind, root in sources:
        root = Path(root)
        key = (kind, root.name)
        if key not in seen:
            seen[key] = root
        elif seen[key].resolve() == root.resolve():
            return f"source {root} is listed twice"
        else:
            return (f"sources {seen[key]} and {root} are both '{kind}' in folders named '{root.name}': "
                    "their episode ids would collide; rename one folder")
    return None


class DuplicateIds:
    """Remembers episode ids (as 64-bit hashes: flat memory on huge trees) to name the second of a pair."""

    def __init__(self):
        self.seen: dict[int, str] = {}

    def problem(self, episode_id: str, path: str) -> str | None:
        import hashlib

        key = int.from_bytes(hashlib.blake2b(episode_id.encode(), digest_size=8).digest(), "little")
        if key in self.seen:
            return f"duplicate episode: same id ({episode_id}) as {self.seen[key]}"
        self.seen[key] = path
        return None


@dataclass(frozen=True)
class RefusedPath:
    """A symlink `walk_files` did not follow, and why."""

    path: Path
    problem: str


def walk_files(root: Path, keep: Callable[[str], bool], prune: Callable[[str], bool] = lambda name: name.startswith("."), *,
               confine_to: Path | None = None, follow_symlinks: bool = False) -> Iterator[Path | RefusedPath]:
    """Yield files under `root` whose name passes `keep`, depth first, sorted per directory.

    Symlinks that loop are never followed; with `confine_to`, neither are links that leave that
    folder unless `follow_symlinks`. Each refused link is yielded as a `RefusedPath`. Only one
    directory listing is held at a time per level, so memory stays flat on huge trees.
    """
    confine_to = Path(confine_to or root)
    try:
        entries = sorted(os.scandir(root), key=lambda e: _natural_key(e.name))
    except OSError:
        return
    for entry in entries:
        is_dir = entry.is_dir(follow_symlinks=True)
        if prune(entry.name) or not (is_dir or keep(entry.name)):
            continue
        if entry.is_symlink() and (problem := symlink_problem(Path(entry.path), confine_to, follow_symlinks)):
            yield RefusedPath(Path(entry.path), problem)
        elif is_dir:
            yield from walk_files(Path(entry.path), keep, prune, confine_to=confine_to, follow_symlinks=follow_symlinks)
        elif keep(entry.name):
            yield Path(entry.path)


def _natural_key(name: str) -> tuple:
    """Sort 'episode2' before 'episode10'; names of one number ('1', '01') by name, not in the directory's order."""
    import re

    # isdecimal, not isdigit: '²' is a digit that int() refuses, and one such name would stop discovery
    return (*(int(part) if part.isdecimal() else part for part in re.split(r"(\d+)", name)), name)


def _load_builtin_sources() -> None:
    # Importing the package registers every built-in reader.
    import pyramid.sources  # noqa: F401
