"""Opening a source's HDF5 file and reading its numeric datasets, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pyramid.errors import EpisodeError, one_line

NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def open_hdf5(path: Path):
    """`h5py.File(path, "r")`, or an `EpisodeError` saying the file is missing, empty or unreadable (e.g. truncated)."""
    import h5py

    if not path.is_file():
        raise EpisodeError(path, "file not found")
    if path.stat().st_size == 0:
        raise EpisodeError(path, "empty file (0 bytes), not HDF5")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise EpisodeError(path, f"not a readable HDF5 file ({one_line(error)})") from None


def read_numeric(file, path: Path, key: str) -> np.ndarray:
    """Dataset `key` as float64, or an `EpisodeError` when it is missing, not a dataset, not numbers or unreadable."""
    import h5py

    data = file.get(key)
    if data is None:
        raise EpisodeError(path, f"missing dataset '{key}'")
    if not isinstance(data, h5py.Dataset):
        raise EpisodeError(path, f"'{key}' is a group, expected a dataset")
    if data.dtype.kind not in NUMERIC_KINDS:
        raise EpisodeError(path, f"'{key}' holds {_describe(data.dtype)}, expected numbers")
    try:
        return np.asarray(data[()], dtype=np.float64)
    except OSError as error:  # a chunk past the end of a damaged file
        raise EpisodeError(path, f"'{key}' cannot be read ({one_line(error)})") from None


def check_finite(path: Path, key: str, rows: np.ndarray) -> None:
    """An `EpisodeError` naming the first NaN/inf element of `rows`, read from dataset `key`."""
    bad = ~np.isfinite(rows)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise EpisodeError(path, f"'{key}' holds a non-finite value ({rows[where]}) at row {where[0]}"
                                 + (f", column {where[1]}" if len(where) > 1 else ""))


def _describe(dtype: np.dtype) -> str:
    import h5py

    if h5py.check_string_dtype(dtype) is not None or dtype.kind in "SU":
        return "strings"
    return f"{dtype} values"
