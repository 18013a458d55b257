"""One battery every registered source reader must pass, run over its real-format fixture."""

from __future__ import annotations

import inspect as pyinspect
import json
import pickle

import numpy as np
import pytest

from pyramid.episode import Episode
from pyramid.errors import EpisodeError
from pyramid.sources import SOURCES, detect_source, get_source
from tests.fixtures import builder

get_source("videos")  # loads the registry
SOURCE_NAMES = sorted(SOURCES)


@pytest.fixture(scope="module", params=SOURCE_NAMES)
def built(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(name)
    spec = builder(name)(root)
    return name, root, spec


def test_discover_is_lazy_and_finds_every_episode(built):
    name, root, spec = built
    reader = get_source(name)(root)
    refs = reader.discover()
    assert pyinspect.isgenerator(refs) or hasattr(refs, "__next__")
    relpaths = [ref.relpath for ref in refs]
    assert sorted(relpaths) == sorted(set(spec.expected) | set(spec.corrupt))
    assert relpaths == [ref.relpath for ref in reader.discover()], "discovery order must be deterministic"


def test_autodetect_picks_this_reader(built):
    name, root, _ = built
    assert detect_source(root).name == name


def test_episodes_match_the_fixture(built):
    name, root, spec = built
    reader = get_source(name)(root)
    for ref in reader.discover():
        if ref.relpath in spec.corrupt:
            continue
        episode = reader.read(ref)
        assert isinstance(episode, Episode)
        summary = episode.summary()
        json.dumps(summary)
        for key, value in spec.expected[ref.relpath].items():
            got = summary[key] if key in summary else getattr(episode, key)
            if isinstance(value, float):
                assert got == pytest.approx(value, rel=1e-3), (ref.relpath, key)
            else:
                assert got == value, (ref.relpath, key)
        assert episode.episode_id == ref.episode_id
        assert episode.source == name and 1 <= episode.level <= 6


def test_arrays_are_float32_and_aligned(built):
    name, root, spec = built
    reader = get_source(name)(root)
    for ref in reader.discover():
        if ref.relpath in spec.corrupt:
            continue
        episode = reader.read(ref)
        for array, names in ((episode.state, episode.state_names), (episode.actions, episode.action_names)):
            if array is None:
                continue
            assert array.dtype == np.float32 and array.ndim == 2
            assert array.shape[0] == episode.num_frames
            assert len(names) == array.shape[1]
            assert np.isfinite(array).all()


def test_frames_decode_lazily_to_rgb(built):
    name, root, spec = built
    reader = get_source(name)(root)
    ref = next(r for r in reader.discover() if r.relpath not in spec.corrupt)
    episode = pickle.loads(pickle.dumps(reader.read(ref)))  # episodes travel between Ray workers
    last = episode.num_frames - 1
    frames = episode.frames(indices=[0, last])
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[0] == 2 and frames.shape[-1] == 3
    for camera in episode.cameras:
        one = episode.frames(camera, [0])
        assert one.shape[0] == 1 and one.shape[-1] == 3
    with pytest.raises(EpisodeError):
        episode.frames(indices=[episode.num_frames])


def test_corrupt_episodes_raise_one_line_errors_naming_the_file(built):
    name, root, spec = built
    reader = get_source(name)(root)
    refs = {ref.relpath: ref for ref in reader.discover()}
    for relpath, fragment in spec.corrupt.items():
        with pytest.raises(EpisodeError) as caught:
            episode = reader.read(refs[relpath])
            episode.frames(indices=[0])
        message = str(caught.value)
        assert "\n" not in message and fragment in message


def test_episode_ids_are_stable(built):
    name, root, _ = built
    first = [ref.episode_id for ref in get_source(name)(root).discover()]
    second = [ref.episode_id for ref in get_source(name)(root).discover()]
    assert first == second and len(set(first)) == len(first)
    assert all("." not in eid and "/" not in eid for eid in first)


def test_discovery_order_does_not_depend_on_the_order_a_directory_lists_its_files(tmp_path):
    """'1' and '01' are one number: they are ordered by name, not left in the directory's listing order, which
    differs between file systems and copies (and would change a build's shard contents)."""
    from pyramid.sources.base import _natural_key, walk_files

    expected = ["001.mp4", "01.mp4", "1.mp4", "2.mp4", "10.mp4", "episode9.mp4", "episode10.mp4"]
    for listed in (expected, expected[::-1], expected[3:] + expected[:3]):  # as scandir might list them
        assert sorted(listed, key=_natural_key) == expected
    for name in expected:
        (tmp_path / name).write_bytes(b"")
    assert [path.name for path in walk_files(tmp_path, lambda name: name.endswith(".mp4"))] == expected
