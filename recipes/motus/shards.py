"""Random access to the clips of a build (pyramid/SHARDS.md), in either format, by clip number.

`WebDatasetClips` indexes the tar members of `webdataset/level<L>/shard-*.tar` once (headers
only) and reads a clip's members by offset; `LanceClips` reads rows of `clips.lance`, the video
with them. Both return the same `ClipRecord`, still encoded.
"""

from __future__ import annotations

import itertools
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pyramid.errors import EpisodeError
from pyramid.schema import NPY_COLUMNS, npy_array

# A clip's arrays as a build writes them (pyramid/schema.py): `<name>.npy` members, `<name>_npy` Lance columns.
ARRAY_FIELDS = tuple(member.removesuffix(".npy") for member in NPY_COLUMNS)
# The fields of a clip's json the trainer reads; each is one of pyramid/schema.py's CLIP_JSON (tests check).
METADATA_FIELDS = ("episode_id", "source", "embodiment", "level", "instructions", "task", "fps", "num_frames",
                   "action_fps", "has_actions", "has_latent_actions", "height", "width", "clip_index", "start_frame",
                   "end_frame")


@dataclass
class ClipRecord:
    key: str
    meta: dict[str, Any]
    mp4: bytes
    arrays: dict[str, np.ndarray]  # any of actions, state, latent_actions present in the clip
    origin: str  # shard path or dataset path, for error messages


class WebDatasetClips:
    def __init__(self, root: str | Path, levels: list[int] | None = None):
        self.root = Path(root)
        if not (self.root / "webdataset").is_dir():
            raise EpisodeError(self.root, "no webdataset/ folder: not a `pyramid build` output, or one built "
                                          "without WebDataset shards (format lance reads its clips.lance)")
        shards = sorted((self.root / "webdataset").glob("level*/shard-*.tar"))
        if levels is not None:
            shards = [s for s in shards if _level_of(s) in set(levels)]
        if not shards:
            raise EpisodeError(self.root / "webdataset", f"no shards for levels {levels or 'any'}")
        # (shard, key, {extension: (offset, size)}) per clip, in shard order
        self.members: list[tuple[Path, str, dict[str, tuple[int, int]]]] = []
        for shard in shards:
            self.members += _index_tar(shard)
        self._metadata: list[dict] | None = None

    def __len__(self) -> int:
        return len(self.members)

    def metadata(self) -> list[dict[str, Any]]:
        """Every clip's json (small reads), for filtering before any video is touched."""
        if self._metadata is None:
            self._metadata = []
            for shard, clips in itertools.groupby(self.members, key=lambda member: member[0]):
                with open(shard, "rb") as handle:
                    self._metadata += [json.loads(_read(handle, members, "json", shard, key)) for _, key, members in clips]
        return self._metadata

    def __getitem__(self, index: int) -> ClipRecord:
        shard, key, members = self.members[index]
        with open(shard, "rb") as handle:
            meta = json.loads(_read(handle, members, "json", shard, key))
            mp4 = _read(handle, members, "mp4", shard, key)
            arrays = {name: npy_array(_read(handle, members, f"{name}.npy", shard, key))
                      for name in ARRAY_FIELDS if f"{name}.npy" in members}
        return ClipRecord(key, meta, mp4, arrays, f"{shard}:{key}")


class LanceClips:
    def __init__(self, root: str | Path, levels: list[int] | None = None):
        import lance

        self.path = Path(root) / "clips.lance"
        if not self.path.exists():
            raise EpisodeError(self.path, "no such Lance dataset")
        self.dataset = lance.dataset(str(self.path))
        names = set(self.dataset.schema.names)
        missing = {"key", "json", "video", *METADATA_FIELDS} - names - {"task"}
        if missing:
            raise EpisodeError(self.path, f"missing columns {sorted(missing)}")
        self.meta_columns = [c for c in ("key", *METADATA_FIELDS) if c in names]
        table = self.dataset.to_table(columns=self.meta_columns)
        rows = table.to_pylist()
        keep = [i for i, row in enumerate(rows) if levels is None or row["level"] in set(levels)]
        keep.sort(key=lambda i: rows[i]["level"])  # WebDataset's order (a folder per level): one seed, one stream
        if not keep:
            raise EpisodeError(self.path, f"no clips for levels {levels or 'any'}")
        self.row_ids, self._metadata = keep, [rows[i] for i in keep]

    def __len__(self) -> int:
        return len(self.row_ids)

    def metadata(self) -> list[dict[str, Any]]:
        return self._metadata

    def __getitem__(self, index: int) -> ClipRecord:
        row_id = self.row_ids[index]
        columns = [f"{name}_npy" for name in ARRAY_FIELDS]
        row = self.dataset.take([row_id], columns=[*columns, "json", "video"]).to_pylist()[0]
        arrays = {name: npy_array(row[f"{name}_npy"]) for name in ARRAY_FIELDS if row[f"{name}_npy"]}
        key = self._metadata[index]["key"]
        # the whole json, as WebDataset gives it: where the clip sits in its episode is only there
        return ClipRecord(key, json.loads(row["json"]), row["video"], arrays, f"{self.path}#{key}")

    def __getstate__(self):  # a Lance handle does not pickle; DataLoader workers reopen it
        state = dict(self.__dict__)
        state["dataset"] = None
        return state

    def __setstate__(self, state):
        import lance

        self.__dict__.update(state)
        self.dataset = lance.dataset(str(self.path))


def open_clips(format: str, root: str | Path, levels: list[int] | None = None) -> WebDatasetClips | LanceClips:
    check_build_root(Path(root))
    if format == "webdataset":
        return WebDatasetClips(root, levels)
    if format == "lance":
        return LanceClips(root, levels)
    raise ValueError(f"unknown data format {format!r} (webdataset or lance)")


def check_build_root(root: Path) -> None:
    """A missing or mistyped build path is named as such, not as a build without shards."""
    if not root.exists():
        raise EpisodeError(root, "the build directory does not exist")
    if not root.is_dir():
        raise EpisodeError(root, "not a build directory (it is a file)")


def _index_tar(shard: Path) -> list[tuple[Path, str, dict[str, tuple[int, int]]]]:
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, extension = member.name.partition(".")  # keys have no dots (SHARDS.md)
                samples.setdefault(key, {})[extension] = (member.offset_data, member.size)
    except tarfile.TarError as exc:
        raise EpisodeError(shard, f"unreadable tar shard ({exc})") from exc
    for key, members in samples.items():
        if "json" not in members or "mp4" not in members:
            raise EpisodeError(shard, f"sample {key} lacks {'json' if 'json' not in members else 'mp4'}")
    return [(shard, key, members) for key, members in samples.items()]


def _read(handle, members: dict[str, tuple[int, int]], extension: str, shard: Path, key: str) -> bytes:
    offset, size = members[extension]
    handle.seek(offset)
    data = handle.read(size)
    if len(data) != size:
        raise EpisodeError(shard, f"sample {key}.{extension} is truncated")
    return data


def _level_of(shard: Path) -> int:
    try:
        return int(shard.parent.name.removeprefix("level"))
    except ValueError as exc:
        raise EpisodeError(shard, "shard folder is not named level<L>") from exc
