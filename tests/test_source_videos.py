"""Plain videos: a hostile camera dump (cut, empty, absurd-rate and non-video files, symlinks) is sorted
into clips that decode and one-line reasons, and discovery never stops."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from pyramid.errors import EpisodeError
from pyramid.sources import detect_source, get_source
from pyramid.video_io import probe
from tests.fixtures import HostileSpec
from tests.fixtures import videos as fixture
from tests.fixtures.media import moving_square_frames
from tests.hostile import failure


def check_hostile_corpus(name: str, build_hostile: Callable[[Path], HostileSpec], root: Path) -> HostileSpec:
    """Discovery lists exactly the corpus; good episodes load and decode; each bad one fails with its words."""
    spec = build_hostile(root)
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


def _assert_decodes(episode) -> None:
    assert episode.num_frames >= 6
    for name, camera in episode.cameras.items():
        frames = camera.frames()
        assert frames.shape[0] == camera.num_frames and frames.dtype == np.uint8, name
        assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 1, f"{name} does not move"


def test_hostile_camera_dump(tmp_path):
    spec = check_hostile_corpus("videos", fixture.build_hostile, tmp_path / "dump")
    assert {bad.fault for bad in spec.bad} >= {"truncated", "empty", "implausible_fps", "symlink_loop", "symlink_out"}


def test_the_caption_beside_a_clip_is_its_instruction(tmp_path):
    fixture.build_hostile(tmp_path)
    reader = get_source("videos")(tmp_path)
    episode = reader.load(reader.ref("kitchen/2024-05-01/cam0/clip_0001.mp4"))
    assert episode.instructions == ["wipe the counter"] and episode.fps == pytest.approx(30.0)


def test_a_truncated_faststart_mp4_probes_whole_and_fails_only_on_decoding(tmp_path):
    path = fixture.write_truncated_faststart(tmp_path / "cut.mp4", moving_square_frames(8, 64, 96))
    assert probe(path).num_frames == 8
    with pytest.raises(EpisodeError, match="cannot decode video"):
        get_source("videos")(tmp_path).load(get_source("videos")(tmp_path).ref("cut.mp4")).frames()


def test_links_out_of_the_root_are_read_when_allowed(tmp_path):
    fixture.build_hostile(tmp_path / "dump")
    reader = get_source("videos")(tmp_path / "dump", follow_symlinks=True)
    refs = {ref.relpath: ref for ref in reader.discover()}
    assert reader.load(refs["kitchen/2024-05-03/cam0/clip_0001.mp4"]).num_frames == 8
    assert refs["kitchen/2024-05-01/cam2"].error and "symlink loop" in refs["kitchen/2024-05-01/cam2"].error
