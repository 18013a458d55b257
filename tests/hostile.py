"""What the readers' hostile-corpus tests ask: does an episode load and decode, and if not, why; and of a whole corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pyramid.episode import Episode, EpisodeRef
from pyramid.errors import EpisodeError
from tests.fixtures import HostileSpec


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


def check_hostile_corpus(name: str, root: Path, spec: HostileSpec) -> HostileSpec:
    """The reader detects `root`; discovery lists exactly the corpus; good episodes load and decode frames that
    move; each bad one fails with a one-line reason holding its words."""
    from pyramid.sources import detect_source, get_source

    reader = get_source(name)(root)
    assert detect_source(root).name == name
    refs = {ref.relpath: ref for ref in reader.discover()}
    assert sorted(refs) == sorted([*spec.good, *(bad.relpath for bad in spec.bad)])
    for relpath in spec.good:
        _assert_decodes(reader.load(refs[relpath]))
    for bad in spec.bad:
        message = failure(reader, refs[bad.relpath])
        assert message is not None and "\n" not in message and bad.words in message, (bad, message)
    return spec


def _assert_decodes(episode: Episode) -> None:
    assert episode.num_frames >= 6
    for name, camera in episode.cameras.items():
        frames = camera.frames()
        assert frames.shape[0] == camera.num_frames and frames.dtype == np.uint8, name
        assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 1, f"{name} does not move"
