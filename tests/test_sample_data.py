"""The sample datasets: real LeRobot v3.0 and plain clips, deterministic, with motion that follows the actions."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pyramid.sample_data import GAP_CLOSED, GAP_OPEN, MAX_SPEED, gripper_boxes, gripper_centroid, render_episode, write_sample_data
from pyramid.sources import get_source
from pyramid.video_io import probe

EPISODES, CLIPS, FRAMES = 3, 2, 24


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    paths = write_sample_data(root, robot_episodes=EPISODES, video_clips=CLIPS, seed=0, num_frames=FRAMES)
    return root, paths


def read_episodes(root):
    reader = get_source("lerobot")(root)
    return [reader.read(ref) for ref in reader.discover()]


def test_layout_is_lerobot_v3_and_captioned_clips(sample):
    root, paths = sample
    assert paths == {"lerobot": root / "lerobot", "videos": root / "videos"}
    info = json.loads((root / "lerobot/meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "sample_arm" and info["fps"] == 10
    assert info["features"]["observation.state"]["names"] == ["x", "y", "grip"]
    video = probe(root / "lerobot/videos/observation.images.top/chunk-000/file-000.mp4")
    assert (video.height, video.width, video.num_frames) == (384, 320, EPISODES * FRAMES)
    assert video.codec in ("libdav1d", "av1", "libaom-av1")
    clips = sorted((root / "videos").iterdir())
    assert [p.name for p in clips] == ["clip_000.mp4", "clip_000.txt", "clip_001.mp4", "clip_001.txt"]
    assert probe(clips[0]).codec == "h264"
    reader = get_source("videos")(root / "videos")
    episode = reader.read(next(reader.discover()))
    assert episode.actions is None and episode.task.startswith("move the gripper")


def test_actions_are_the_next_state_minus_this_one(sample):
    root, _ = sample
    for episode in read_episodes(root / "lerobot"):
        assert episode.num_frames == FRAMES and episode.action_names == ["x", "y", "grip"]
        np.testing.assert_allclose(episode.actions[:-1], np.diff(episode.state, axis=0), atol=1e-4)
        assert np.abs(episode.actions[:, :2]).max() <= MAX_SPEED + 1e-4
        assert 0 <= episode.state[:, 2].min() and episode.state[:, 2].max() <= 1
        assert np.abs(episode.actions[:, :2]).mean() > 1.0, "the gripper should actually move"


def test_decoded_motion_follows_the_actions(sample):
    root, _ = sample
    position_errors, motion_errors = [], []
    for episode in read_episodes(root / "lerobot"):
        centres = np.array([gripper_centroid(frame) for frame in episode.frames()])
        position_errors.append(np.abs(centres - episode.state[:, :2]).ravel())
        motion_errors.append(np.abs(np.diff(centres, axis=0) - episode.actions[:-1, :2]).ravel())
    position_errors, motion_errors = np.concatenate(position_errors), np.concatenate(motion_errors)
    assert motion_errors.mean() < 0.3 and np.percentile(motion_errors, 99) < 1.0 and motion_errors.max() < 1.5
    assert position_errors.mean() < 0.3 and position_errors.max() < 1.5


def test_jaw_texture_moves_with_the_jaws():
    # Same centre, the jaws 4 px further apart: each jaw is the same picture, moved 4 px outwards.
    span = GAP_OPEN - GAP_CLOSED
    closed, opened = render_episode(np.random.default_rng(0), np.array([[160, 192, 1 / span], [160, 192, 5 / span]]))
    _, left_jaw, right_jaw = gripper_boxes(160, 192, 1 / span)
    left, right, rows = int(left_jaw[0]), int(right_jaw[0]), slice(172, 212)
    np.testing.assert_array_equal(opened[rows, left - 4 : left + 4], closed[rows, left : left + 8])
    np.testing.assert_array_equal(opened[rows, right + 4 : right + 12], closed[rows, right : right + 8])
    assert not np.array_equal(opened[rows, left : left + 8], closed[rows, left : left + 8])


def test_optical_flow_sees_the_jaws_open_and_close(sample):
    import flow

    root, _ = sample
    spreads, grips = [], []
    for episode in read_episodes(root / "lerobot"):
        flows = flow.estimate(episode.frames(), backend="dis")
        for pair, (state, action) in enumerate(zip(episode.state[:-1], episode.actions[:-1])):
            _, left_jaw, right_jaw = [[int(round(v)) for v in box] for box in gripper_boxes(*state)]
            mean_u = lambda box: flows[pair, box[2] : box[3], box[0] : box[1], 0].mean()  # noqa: E731
            spreads.append((mean_u(right_jaw) - mean_u(left_jaw)) / 2)
            grips.append(action[2] * (GAP_OPEN - GAP_CLOSED))
    # DIS smooths across the small gap between hub and jaws, so it sees most, not all, of the jaw motion.
    slope, _ = np.polyfit(grips, spreads, 1)
    assert np.corrcoef(spreads, grips)[0, 1] > 0.95 and slope > 0.6


def test_same_seed_same_data_other_seed_other_data(sample, tmp_path):
    root, _ = sample
    write_sample_data(tmp_path / "again", robot_episodes=EPISODES, video_clips=1, seed=0, num_frames=FRAMES)
    write_sample_data(tmp_path / "other", robot_episodes=EPISODES, video_clips=1, seed=1, num_frames=FRAMES)
    data = "lerobot/data/chunk-000/file-000.parquet"
    first = pq.read_table(root / data)
    assert pq.read_table(tmp_path / "again" / data).equals(first)
    assert not pq.read_table(tmp_path / "other" / data).equals(first)
    assert (tmp_path / "again/videos/clip_000.txt").read_text() == (root / "videos/clip_000.txt").read_text()


def test_rewriting_replaces_the_previous_sample(tmp_path):
    write_sample_data(tmp_path, robot_episodes=2, video_clips=2, seed=0, num_frames=6)
    write_sample_data(tmp_path, robot_episodes=1, video_clips=1, seed=0, num_frames=6)
    info = json.loads((tmp_path / "lerobot/meta/info.json").read_text())
    assert info["total_episodes"] == 1 and len(list((tmp_path / "videos").glob("*.mp4"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lerobot", "videos"]


@pytest.mark.parametrize("folder", ["lerobot", "videos"])
def test_sample_data_never_replaces_a_dataset_it_did_not_write(tmp_path, folder):
    (tmp_path / folder / "meta").mkdir(parents=True)
    (tmp_path / folder / "meta/info.json").write_text(json.dumps({"robot_type": "aloha"}))
    with pytest.raises(ValueError, match=rf"{folder}: exists and is not sample data this command wrote"):
        write_sample_data(tmp_path, robot_episodes=1, video_clips=1, seed=0, num_frames=6)
    assert json.loads((tmp_path / folder / "meta/info.json").read_text()) == {"robot_type": "aloha"}
