"""Packs staged episodes into WebDataset tar shards per pyramid level, resumably and deterministically.

A worker stages each episode's samples as finished tar members, so a shard is those bytes end to end
followed by tar's end-of-archive blocks: nothing is parsed or re-encoded here.
Episodes are packed in discovery order; a shard closes when it reaches the target size and is
committed by rename, after which `pack_state.json` records how far each level got. A killed build
drops its unfinished `.tmp` shards and repacks from the last committed episode, producing the same
shards an uninterrupted build would.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pyramid.errors import BuildError
from pyramid.atomic import atomic_write_bytes, commit


@dataclass
class OpenShard:
    level: int
    number: int
    tmp: Path
    file: BinaryIO
    last_order: int = -1
    last_id: str = ""
    samples: int = 0


def pack_state_path(output: Path) -> Path:
    """Where finalize records the shards it has committed, to resume after them."""
    return Path(output) / "_staging" / "pack_state.json"


class ShardPacker:
    def __init__(self, output: Path, target_bytes: int, fingerprint: str):
        self.dir = Path(output) / "webdataset"
        self.state_path = pack_state_path(output)
        self.target_bytes = target_bytes
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        if self.state.get("fingerprint") != fingerprint:
            # Shards without this recipe's packing record are another build's (or an abandoned one's): start over.
            shutil.rmtree(self.dir, ignore_errors=True)
            self.state = {"fingerprint": fingerprint}
        self.open: dict[int, OpenShard] = {}
        for stale in self.dir.glob("level*/.*.tmp"):
            stale.unlink()

    def already_packed(self, order: int, episode_id: str, level: int) -> bool:
        state = self._level_state(level)
        if order == state["committed_through"] and episode_id != state.get("committed_id"):
            raise BuildError(f"{self.state_path}: the sources changed since this build started "
                               f"(episode {order} is now {episode_id}, was {state.get('committed_id')}); "
                               f"build into a new output directory")
        return order <= state["committed_through"]

    def add(self, order: int, episode_id: str, level: int, members: Path, samples: int) -> None:
        """Append one episode's staged tar members (`samples` clips) to its level's open shard."""
        shard = self.open.get(level) or self._open(level)
        with open(members, "rb") as staged:
            shutil.copyfileobj(staged, shard.file, 2**20)
        shard.samples += samples
        shard.last_order, shard.last_id = order, episode_id
        if shard.file.tell() >= self.target_bytes:
            self._commit(shard)

    def finish(self) -> None:
        for shard in list(self.open.values()):
            self._commit(shard)

    def shards(self) -> list[Path]:
        return sorted(self.dir.glob("level*/shard-*.tar"))

    def _level_state(self, level: int) -> dict:
        return self.state.setdefault(str(level), {"next_shard": 0, "committed_through": -1})

    def _open(self, level: int) -> OpenShard:
        number = self._level_state(level)["next_shard"]
        folder = self.dir / f"level{level}"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".shard-{number:06d}.tar.tmp"
        shard = OpenShard(level, number, tmp, open(tmp, "wb"))
        self.open[level] = shard
        return shard

    def _commit(self, shard: OpenShard) -> None:
        _end_archive(shard.file)
        shard.file.close()
        del self.open[shard.level]
        if shard.samples == 0:
            shard.tmp.unlink()
            return
        commit(shard.tmp, shard.tmp.with_name(f"shard-{shard.number:06d}.tar"))
        self.state[str(shard.level)] = {"next_shard": shard.number + 1, "committed_through": shard.last_order,
                                        "committed_id": shard.last_id}
        atomic_write_bytes(self.state_path, json.dumps(self.state).encode())


def _end_archive(file: BinaryIO) -> None:
    """What tarfile writes on close: two zero blocks, then zeros up to a whole record."""
    file.write(tarfile.NUL * 2 * tarfile.BLOCKSIZE)
    remainder = file.tell() % tarfile.RECORDSIZE
    if remainder:
        file.write(tarfile.NUL * (tarfile.RECORDSIZE - remainder))
