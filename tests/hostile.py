"""What the readers' hostile-corpus tests ask of one episode: does it load and decode, and if not, why."""

from __future__ import annotations

from pyramid.episode import Episode, EpisodeRef
from pyramid.errors import EpisodeError


def load_and_decode(reader, ref: EpisodeRef) -> Episode:
    """`reader.load(ref)`, then every frame of every camera (some faults show only when frames decode)."""
    episode = reader.load(ref)
    for camera in episode.cameras:
        episode.frames(camera)
    return episode


def failure(reader, ref: EpisodeRef) -> str | None:
    """The one-line reason `load_and_decode` fails with; None when the episode loads and decodes."""
    try:
        load_and_decode(reader, ref)
    except EpisodeError as error:
        return str(error)
    return None
