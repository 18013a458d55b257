"""`sample-data --sim metaworld`: rendered Sawyer episodes that the LeRobot reader loads, upright, deterministic."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("metaworld")
pytest.importorskip("mujoco")

from pyramid.cli import app  # noqa: E402
from pyramid.sim_metaworld import ACTION_NAMES, STATE_NAMES, instruction, write_metaworld_sample  # noqa: E402
from pyramid.sources import open_source  # noqa: E402

TASKS, CAMERAS, STEPS, HEIGHT, WIDTH = ("pick-place-v3", "reach-v3"), ("corner", "corner2"), 15, 192, 160
SEED = 7  # its pick-place goal sits well off the centre lines of both cameras
SMALL = dict(variations=1, max_steps=STEPS, height=HEIGHT, width=WIDTH, seed=SEED, progress=False)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_metaworld_sample(tmp_path_factory.mktemp("sim"), tasks=TASKS, cameras=CAMERAS, workers=1, **SMALL)


def load_all(root):
    reader = open_source(root)
    return [reader.load(ref) for ref in reader.discover()]


def test_episodes_load_through_the_lerobot_reader(sample):
    assert sample.root.name == "metaworld" and [o.task for o in sample.outcomes] == list(TASKS)
    assert sample.summary().startswith(f"2 episodes, {2 * STEPS} frames, 0/2 reached success")
    info = json.loads((sample.root / "meta/info.json").read_text())
    assert info["robot_type"] == "sawyer" and info["fps"] == 30
    assert [key for key in info["features"] if key.startswith("observation.images.")] == [f"observation.images.{c}" for c in CAMERAS]
    episodes = load_all(sample.root)
    assert [episode.task for episode in episodes] == [instruction(task) for task in TASKS]
    assert episodes[0].task == "pick up the puck and place it at the goal"
    for episode in episodes:
        assert episode.fps == 30 and episode.num_frames == STEPS and list(episode.cameras) == list(CAMERAS)
        assert episode.state_names == STATE_NAMES and episode.action_names == ACTION_NAMES
        assert episode.state.shape == (STEPS, 4) and episode.actions.shape == (STEPS, 4)
        assert np.isfinite(episode.actions).all() and np.abs(episode.actions).max() <= 1
        for camera in CAMERAS:
            frames = episode.frames(camera)
            assert frames.shape == (STEPS, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
        # The expert moves the hand: the recorded state is the simulation's, not a constant.
        assert np.abs(episode.state[-1, :3] - episode.state[0, :3]).max() > 0.01


def expected_pixel(env, camera, point, height, width):
    """(col, row) of a world point in the image of `camera` turned so that world up is image up.

    MuJoCo cameras look along their -z axis with x to the right and y up (mujoco.readthedocs.io, "camera").
    """
    import mujoco

    camera_id = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    axes = env.data.cam_xmat[camera_id].reshape(3, 3)
    right, up, backward = axes[:, 0], axes[:, 1], axes[:, 2]
    if up[2] < 0:
        right, up = -right, -up
    focal = height / 2 / np.tan(np.radians(env.model.cam_fovy[camera_id]) / 2)
    offset = np.asarray(point) - env.data.cam_xpos[camera_id]
    depth = -offset @ backward
    return np.array([width / 2 + focal * (offset @ right) / depth, height / 2 - focal * (offset @ up) / depth])


@pytest.mark.parametrize("camera", CAMERAS)
def test_frames_are_upright_and_not_mirrored(sample, camera):
    import metaworld

    placements = metaworld.MT1("pick-place-v3", seed=SEED)
    env = placements.train_classes["pick-place-v3"]()
    env.set_task(placements.train_tasks[0])
    env.reset()
    goal = np.array(env._target_pos)
    expected = expected_pixel(env, camera, goal, HEIGHT, WIDTH)
    above = expected_pixel(env, camera, goal + [0, 0, 0.05], HEIGHT, WIDTH)
    env.close()
    assert above[1] < expected[1] - 3, "the expected image must show up in the world as up"
    turned = np.array([WIDTH, HEIGHT]) - expected
    assert np.abs(turned - expected).min() > 12, "the goal must be off-centre, so that a flip or mirror moves it"

    frame = load_all(sample.root)[0].frames(camera, [0])[0].astype(int)
    blueness = frame[..., 2] - np.maximum(frame[..., 0], frame[..., 1])  # the goal marker is the only blue object
    rows, cols = np.nonzero(blueness > 80)
    assert len(rows) >= 4, "the goal marker should be visible"
    found = np.array([cols.mean() + 0.5, rows.mean() + 0.5])
    np.testing.assert_allclose(found, expected, atol=2.5)


def test_same_seed_same_episode_in_worker_processes(sample, tmp_path):
    # Only the reach task, one camera and two processes: the episode must not depend on any of that.
    again = write_metaworld_sample(tmp_path, tasks=("reach-v3",), cameras=("corner",), workers=2, **SMALL)
    first, second = load_all(sample.root)[1], load_all(again.root)[0]
    np.testing.assert_array_equal(second.actions, first.actions)
    np.testing.assert_array_equal(second.state, first.state)
    assert list(second.cameras) == ["corner"]


def test_missing_simulator_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # import metaworld now raises ImportError
    with pytest.raises(ValueError, match=r"pip install -e '\.\[sim\]'"):
        write_metaworld_sample(tmp_path)


def test_bad_arguments_are_reported_together(tmp_path):
    with pytest.raises(ValueError, match="unknown MetaWorld task.*no-such-v3.*unknown camera.*sideways.*max_steps"):
        write_metaworld_sample(tmp_path, tasks=("no-such-v3",), cameras=("sideways",), max_steps=0)
    assert not (tmp_path / "metaworld").exists()


def test_cli_writes_the_sim_sample(tmp_path):
    runner = CliRunner()
    args = ["sample-data", str(tmp_path), "--sim", "metaworld", "--task", "reach-v3", "--variations", "1",
            "--max-steps", "5", "--workers", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"metaworld: {tmp_path / 'metaworld'}" in result.output
    assert "1 episodes, 5 frames, 0/1 reached success" in result.output
    assert [episode.num_frames for episode in load_all(tmp_path / "metaworld")] == [5]
    assert runner.invoke(app, ["sample-data", str(tmp_path), "--sim", "bullet"]).exit_code == 2
    assert runner.invoke(app, ["sample-data", str(tmp_path), "--variations", "2"]).exit_code == 2
