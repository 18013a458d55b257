"""Opening a source's HDF5 file with an error that names it, shared by the HDF5-based readers."""

from __future__ import annotations

from pathlib import Path


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def open_hdf5(path: Path):
    """`h5py.File(path, "r")`, or an `EpisodeError` saying the file is missing or unreadable."""
    import h5py

    from pyramid.errors import EpisodeError

    if not path.is_file():
        raise EpisodeError(path, "file not found")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise EpisodeError(path, f"not a readable HDF5 file ({one_line(error)})") from None
