"""One episode's rows of a parquet file that holds many (LeRobot v3.0 packs thousands of episodes per data file).

Reading an episode with `pq.read_table(path, filters=...)` parses the file's footer and tests every row group's
statistics each time, and where the file is one row group (as `DataFrame.to_parquet` and LeRobot's v2.1 -> v3.0
converter write it) decodes the whole file for each episode: a file of E episodes cost O(E^2) over a build. Here a
file's footer is parsed once and its row groups are found by their `episode_index` statistics; a decoded row group
that holds several episodes is kept for the episodes after it, up to `KEPT_BYTES`, since a worker reads a file's
episodes one after another.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pyramid.paths import file_version

KEPT_BYTES = 256 << 20  # decoded row groups kept per reader, and the largest one kept
OPEN_FILES = 4  # parsed footers kept per reader


class EpisodeRows:
    """Parsed footers and decoded row groups of the data files one reader reads, each known by its path and version
    (a file rewritten in place is read anew)."""

    def __init__(self) -> None:
        self._opened = functools.lru_cache(maxsize=OPEN_FILES)(_DataFile)  # by (path, version): a file read anew
        self.groups: OrderedDict[tuple, pa.Table] = OrderedDict()
        self.kept_bytes = 0  # of `groups`, kept as a running total: small groups can number in the thousands

    def schema_names(self, path: Path) -> list[str]:
        return self._file(path).parquet.schema_arrow.names

    def read(self, path: Path, episode_index: int, columns: list[str]) -> pa.Table:
        """The rows of `episode_index` (`columns` must include `episode_index`)."""
        data = self._file(path)
        groups = data.groups_holding(episode_index)
        if groups is None:  # no statistics to go by
            return pq.read_table(path, columns=columns, filters=[("episode_index", "=", episode_index)])
        tables = [self._group(data, group, columns) for group in groups]
        rows = pa.concat_tables(tables) if tables else data.parquet.schema_arrow.empty_table().select(columns)
        return rows.filter(pc.equal(rows.column("episode_index"), episode_index))

    def _file(self, path: Path) -> "_DataFile":
        return self._opened((str(path), *file_version(path)))

    def _group(self, data: "_DataFile", group: int, columns: list[str]) -> pa.Table:
        key = (data.key, group, tuple(columns))
        if key in self.groups:
            self.groups.move_to_end(key)
            return self.groups[key]
        table = data.parquet.read_row_group(group, columns=columns)
        if data.episodes_in(group) > 1 and table.nbytes <= KEPT_BYTES:
            self.groups[key] = table
            self.kept_bytes += table.nbytes
            while self.kept_bytes > KEPT_BYTES:
                self.kept_bytes -= self.groups.popitem(last=False)[1].nbytes
        return table


class _DataFile:
    def __init__(self, key: tuple):
        self.key, self.parquet = key, pq.ParquetFile(key[0])  # closed when the cache lets it go
        self.ranges = _episode_ranges(self.parquet)

    def groups_holding(self, episode_index: int) -> list[int] | None:
        if self.ranges is None:
            return None
        low, high = self.ranges
        return np.flatnonzero((low <= episode_index) & (episode_index <= high)).tolist()

    def episodes_in(self, group: int) -> int:
        return int(self.ranges[1][group] - self.ranges[0][group] + 1)


def _episode_ranges(parquet: pq.ParquetFile) -> tuple[np.ndarray, np.ndarray] | None:
    """The lowest and the highest `episode_index` of each row group, from the footer; None where a group lacks them."""
    leaves = [parquet.metadata.schema.column(i).path for i in range(parquet.metadata.num_columns)]
    if "episode_index" not in leaves:
        return None
    leaf, ranges = leaves.index("episode_index"), []
    for group in range(parquet.metadata.num_row_groups):
        statistics = parquet.metadata.row_group(group).column(leaf).statistics
        if statistics is None or not statistics.has_min_max:
            return None
        ranges.append((int(statistics.min), int(statistics.max)))
    bounds = np.array(ranges, np.int64).reshape(-1, 2)
    return bounds[:, 0], bounds[:, 1]
