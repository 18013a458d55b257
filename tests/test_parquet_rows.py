"""One episode's rows of a parquet file holding many: the same rows as a filtered read, each row group decoded once
for the episodes it holds (a file of E episodes used to be decoded E times), a rewritten file read anew."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pyramid.sources.parquet_rows import EpisodeRows

COLUMNS = ["action", "episode_index"]


def write_episodes(path, episodes: int, rows_each: int, row_group_rows: int | None, seed: int = 0) -> None:
    generator = np.random.default_rng(seed)
    table = pa.table({"action": [list(v) for v in generator.random((episodes * rows_each, 3)).astype(np.float32)],
                      "episode_index": np.repeat(np.arange(episodes, dtype=np.int64), rows_each),
                      "frame_index": np.tile(np.arange(rows_each, dtype=np.int64), episodes)})
    pq.write_table(table, path, row_group_size=row_group_rows or len(table))


@pytest.mark.parametrize("row_group_rows", [None, 7, 5])  # one group (to_parquet), groups across episodes, one each
def test_rows_are_a_filtered_reads_and_each_row_group_is_decoded_once(tmp_path, monkeypatch, row_group_rows):
    path = tmp_path / "file-000.parquet"
    write_episodes(path, episodes=12, rows_each=5, row_group_rows=row_group_rows)
    decoded = []
    read_row_group = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, group, **kw: decoded.append(group) or read_row_group(self, group, **kw))
    rows = EpisodeRows()
    for episode in range(12):
        expected = pq.read_table(path, columns=COLUMNS, filters=[("episode_index", "=", episode)])
        assert rows.read(path, episode, COLUMNS).equals(expected), episode
    assert sorted(decoded) == list(range(pq.ParquetFile(path).metadata.num_row_groups))
    assert rows.read(path, 99, COLUMNS).num_rows == 0


def test_a_file_written_anew_is_read_anew(tmp_path):
    path = tmp_path / "file-000.parquet"
    write_episodes(path, episodes=4, rows_each=3, row_group_rows=None)
    rows = EpisodeRows()
    before = rows.read(path, 2, COLUMNS)
    write_episodes(path.with_suffix(".tmp"), episodes=4, rows_each=6, row_group_rows=None, seed=1)
    path.with_suffix(".tmp").replace(path)
    after = rows.read(path, 2, COLUMNS)
    assert before.num_rows == 3 and after.equals(pq.read_table(path, columns=COLUMNS, filters=[("episode_index", "=", 2)]))


def test_kept_row_groups_stay_under_their_cap_by_a_running_total(tmp_path, monkeypatch):
    """Summing every kept group on each insert cost O(G^2) over a file of thousands of small groups."""
    import pyramid.sources.parquet_rows as parquet_rows

    path = tmp_path / "file-000.parquet"
    write_episodes(path, episodes=60, rows_each=3, row_group_rows=5)
    rows = EpisodeRows()
    cap = 3 * pq.ParquetFile(path).read_row_group(0, columns=COLUMNS).nbytes
    monkeypatch.setattr(parquet_rows, "KEPT_BYTES", cap)
    for episode in range(60):
        rows.read(path, episode, COLUMNS)
        assert rows.kept_bytes == sum(kept.nbytes for kept in rows.groups.values()) <= cap
    assert len(rows.groups) >= 2
