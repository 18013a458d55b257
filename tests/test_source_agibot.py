"""AgiBot World specifics: state/action layout, rebuilt short actions, instructions, cameras, dexhand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyramid.errors import EpisodeError
from pyramid.sources import get_source
from pyramid.video_io import write_video
from tests.fixtures import agibot as fixture
from tests.fixtures.media import moving_square_frames
from tests.hostile import check_hostile_corpus

JOINT, EFFECTOR, HEAD, WAIST, ROBOT = slice(0, 14), slice(14, 16), slice(16, 18), slice(18, 20), slice(20, 22)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("agibot")
    fixture.build(root)
    return root


def read(root, relpath):
    reader = get_source("agibot")(root)
    return reader.read(reader.ref(relpath))


def one_episode(root, arrays, task_info=None, num_frames=8):
    """A one-episode tree (task 1, episode 5) with a single h264 head camera."""
    write_video(root / "observations/1/5/videos/head_color.mp4", moving_square_frames(num_frames, 48, 64), 30.0)
    fixture.write_proprio(root / "proprio_stats/1/5/proprio_stats.h5", arrays)
    if task_info is not None:
        (root / "task_info").mkdir()
        (root / "task_info/task_1.json").write_text(json.dumps(task_info))
    return read(root, "observations/1/5")


def test_state_and_actions_follow_the_official_converter_layout(dataset):
    episode = read(dataset, "observations/327/648642")
    raw = fixture.proprio_arrays(8)
    expected_state = np.hstack([raw[f"state/{part}/position"] for part in ("joint", "effector", "head", "waist")])
    np.testing.assert_allclose(episode.state, expected_state, rtol=1e-6)
    expected_actions = np.hstack([raw[f"action/{part}/position"] for part in ("joint", "effector", "head", "waist")]
                                 + [raw["action/robot/velocity"]])
    np.testing.assert_allclose(episode.actions, expected_actions, rtol=1e-6)
    assert episode.state.shape == (8, 20) and episode.actions.shape == (8, 22)
    assert episode.state_names[0] == "joint.left_arm_0" and episode.state_names[13] == "joint.right_arm_6"
    assert episode.state_names[14:] == ["effector.left_gripper", "effector.right_gripper", "head.yaw", "head.pitch",
                                        "waist.pitch", "waist.lift"]
    assert episode.action_names == episode.state_names + ["robot.linear_velocity_x", "robot.yaw_rate"]
    assert episode.embodiment == "agibot_g1" and episode.metadata["actions_filled"] == {}
    assert episode.metadata["depth_images"] == 8


def test_short_actions_are_scattered_into_the_state(dataset):
    episode = read(dataset, "observations/327/648649")
    state, actions = episode.state, episode.actions
    # joint commands only on frames 0, 3, 5, 7; elsewhere the action holds the current joint state
    assert actions[[0, 3, 5, 7], JOINT][:, 0].tolist() == [100.0, 101.0, 102.0, 103.0]
    np.testing.assert_array_equal(actions[[1, 2, 4, 6], JOINT], state[[1, 2, 4, 6], JOINT])
    # gripper commands (0 open .. 1 closed) sent on frames 2 and 6, each held until the next; never the state,
    # an opening in mm
    np.testing.assert_array_equal(actions[:6, EFFECTOR], [[1.0, 0.0]] * 6)
    np.testing.assert_array_equal(actions[6:, EFFECTOR], [[0.0, 1.0]] * 2)
    assert state[5, EFFECTOR].tolist() == [50.0, 51.0]  # gripper opening in mm, 10 * t + side
    assert episode.metadata["actions_filled"]["effector"] == "held 2 commands over 8 rows at action/effector/index"
    # the base velocity has no state to fall back on: frames without a command move nothing
    np.testing.assert_allclose(actions[:, ROBOT], [[0, 0], [0.3, 0.1], [0.3, 0.2], [0.3, 0.3], [0, 0], [0, 0], [0, 0], [0, 0]], atol=1e-6)
    np.testing.assert_allclose(actions[:, HEAD], state[:, HEAD] + 0.01, atol=1e-6)  # full length, kept as is
    assert episode.metadata["actions_filled"]["joint"] == "scattered 4 of 8 rows at action/joint/index"


def test_instructions_come_from_task_info(dataset):
    episode = read(dataset, "observations/327/648642")
    assert episode.instructions == [
        "Pickup items in the supermarket.The robot is positioned in front of the fruit stand in the supermarket environment.",
        "Retrieve cucumber from the shelf.",
        "Place the held cucumber into the cart.",
    ]
    assert episode.metadata["segments"] == [
        {"start_frame": 0, "end_frame": 4, "text": "Retrieve cucumber from the shelf."},
        {"start_frame": 4, "end_frame": 8, "text": "Place the held cucumber into the cart."},
    ]


def test_dexhand_episode_without_task_info(dataset):
    episode = read(dataset, "observations/475/700001")
    assert episode.embodiment == "agibot_g1_dexhand"
    assert episode.state.shape == (6, 30) and episode.actions.shape == (6, 32)
    assert episode.state_names[14:26] == [f"effector.left_hand_{i}" for i in range(6)] + [f"effector.right_hand_{i}" for i in range(6)]
    assert episode.instructions == [] and episode.metadata["task_info"] == "episode not listed"
    np.testing.assert_allclose(episode.actions[:, 14:26], episode.state[:, 14:26] + 0.1, atol=1e-6)


def test_cameras_head_first_and_av1_head_decodes(dataset):
    episode = read(dataset, "observations/327/648642")
    assert list(episode.cameras) == ["head", "hand_left", "hand_right"]
    assert episode.cameras["head"].codec in {"libdav1d", "av1", "libaom-av1"}
    frames = episode.frames("head", [0, 7])
    assert frames.shape == (2, 48, 64, 3) and frames.dtype == np.uint8
    written = moving_square_frames(8, 48, 64, seed=648642 % 7)[0]
    assert np.abs(frames[0].astype(int) - written).mean() < 6  # lossy yuv420p, but the same picture


def test_missing_action_is_filled_from_state(tmp_path):
    arrays = fixture.proprio_arrays(8)
    del arrays["action/head/position"]
    episode = one_episode(tmp_path, arrays)
    np.testing.assert_array_equal(episode.actions[:, HEAD], episode.state[:, HEAD])
    assert episode.metadata["actions_filled"] == {"head": "missing: filled from state"}


def test_missing_gripper_command_is_not_its_state_in_mm(tmp_path):
    arrays = fixture.proprio_arrays(8)
    del arrays["action/effector/position"]
    episode = one_episode(tmp_path, arrays)
    np.testing.assert_array_equal(episode.actions[:, EFFECTOR], np.zeros((8, 2)))
    assert episode.metadata["actions_filled"] == {"effector": "missing: no gripper command, zeros (open)"}


def test_short_action_without_any_index_is_an_error(tmp_path):
    arrays = fixture.proprio_arrays(8)
    arrays["action/waist/position"] = arrays["action/waist/position"][:3]
    arrays["action/waist/index"] = np.zeros((0,), np.int64)
    arrays["action/joint/index"] = np.zeros((0,), np.int64)
    with pytest.raises(EpisodeError, match="action/waist' is shorter than the episode and has no frame index"):
        one_episode(tmp_path, arrays)


@pytest.mark.parametrize("part, columns", [("head", HEAD), ("waist", WAIST)])
def test_a_short_part_is_scattered_at_its_own_index_not_the_joints(tmp_path, part, columns):
    arrays = fixture.proprio_arrays(8)
    commands = np.array([[7.0, 8.0], [9.0, 10.0]])
    arrays[f"action/{part}/position"] = commands
    arrays[f"action/{part}/index"] = np.array([2, 6], np.int64)
    arrays["action/joint/index"] = np.array([0, 1], np.int64)  # as many entries, other frames
    episode = one_episode(tmp_path, arrays)
    expected = episode.state[:, columns].copy()
    expected[[2, 6]] = commands
    np.testing.assert_array_equal(episode.actions[:, columns], expected)
    assert episode.metadata["actions_filled"] == {part: f"scattered 2 of 8 rows at action/{part}/index"}


@pytest.mark.parametrize("part", ["effector", "head", "waist"])
def test_a_short_part_whose_index_is_empty_does_not_borrow_the_joint_index(tmp_path, part):
    """FORMATS.md replaces only an empty `end/index` by `joint/index` (the arm controller commands both);
    the gripper, head and waist have controllers of their own, whose commands need not fall on the joints' frames."""
    arrays = fixture.proprio_arrays(8)
    arrays[f"action/{part}/position"] = arrays[f"action/{part}/position"][:4]
    arrays[f"action/{part}/index"] = np.zeros((0,), np.int64)
    arrays["action/joint/index"] = np.array([0, 3, 5, 7], np.int64)  # as many entries as the short part
    with pytest.raises(EpisodeError, match=f"'action/{part}' is shorter than the episode and has no frame index"):
        one_episode(tmp_path, arrays)


def test_english_fields_are_preferred(tmp_path):
    entry = {"episode_id": 5, "task_name": "超市取物", "english_task_name": "Pick up items",
             "init_scene_text": "", "label_info": {"action_config": [
                 {"start_frame": 0, "end_frame": 8, "action_text": "拿黄瓜", "english_action_text": "Take the cucumber"}]}}
    episode = one_episode(tmp_path, fixture.proprio_arrays(8), task_info=[entry])
    assert episode.instructions == ["Pick up items", "Take the cucumber"]


@pytest.mark.parametrize("label_info", [[{"action_config": []}], "segments", {"action_config": {"start_frame": 0}}])
def test_malformed_label_info_is_an_episode_error_naming_task_info(tmp_path, label_info):
    entry = {"episode_id": 5, "task_name": "Pick up items", "init_scene_text": "", "label_info": label_info}
    with pytest.raises(EpisodeError, match=r"task_1\.json: episode 5: label_info must be an object holding an action_config list"):
        one_episode(tmp_path, fixture.proprio_arrays(8), task_info=[entry])


def test_wrong_state_width_is_an_error(tmp_path):
    arrays = fixture.proprio_arrays(8)
    arrays["state/joint/position"] = arrays["state/joint/position"][:, :7]
    with pytest.raises(EpisodeError, match=r"'state/joint/position' has shape \(8, 7\)"):
        one_episode(tmp_path, arrays)


def test_hostile_release_dump(tmp_path):
    spec = check_hostile_corpus("agibot", tmp_path / "agibot", fixture.build_hostile(tmp_path / "agibot"))
    assert {bad.fault for bad in spec.bad} >= {"truncated", "empty", "implausible_fps", "nan", "inf", "wrong_shape", "wrong_dtype",
                                                "mismatched_lengths", "bad_metadata_line", "symlink_loop", "symlink_out"}


def test_a_bad_task_info_json_spoils_only_its_own_task(tmp_path):
    fixture.build_hostile(tmp_path)
    refs = {ref.relpath: ref for ref in get_source("agibot")(tmp_path).discover()}
    assert refs["observations/328/800001"].error and "task_328.json" in refs["observations/328/800001"].error
    assert refs["observations/327/648642"].error is None and refs["observations/475/700001"].error is None


def test_symlinked_episode_folders_are_read_when_allowed(tmp_path):
    fixture.build_hostile(tmp_path / "release")
    reader = get_source("agibot")(tmp_path / "release", follow_symlinks=True)
    refs = {ref.relpath: ref for ref in reader.discover()}
    assert reader.load(refs["observations/327/650015"]).num_frames == 8
    assert reader.load(refs["observations/327/650016"]).num_frames == 8
    assert "symlink loop" in refs["observations/327/650014"].error


def test_a_stray_folder_with_a_non_ascii_digit_does_not_stop_discovery(tmp_path):
    one_episode(tmp_path, fixture.proprio_arrays(8))
    (tmp_path / "observations/1/5²").mkdir()  # '²'.isdigit() is True, int('²') raises
    relpaths = [ref.relpath for ref in get_source("agibot")(tmp_path).discover()]
    assert relpaths == ["observations/1/5", "observations/1/5²"]


@pytest.mark.parametrize("index, words", [
    ([0, 2, 9], r"'action/joint/index' points outside the 8 frames"),
    ([0, 2], r"'action/joint/position' has 3 rows but 'action/joint/index' has 2 entries"),
])
def test_a_short_action_whose_index_does_not_fit_is_an_error(tmp_path, index, words):
    arrays = fixture.proprio_arrays(8)
    arrays["action/joint/position"] = arrays["action/joint/position"][:3]
    arrays["action/joint/index"] = np.asarray(index, np.int64)
    with pytest.raises(EpisodeError, match=words):
        one_episode(tmp_path, arrays)


def test_task_info_that_is_not_a_list_fails_its_task_with_a_reason(tmp_path):
    one_episode(tmp_path, fixture.proprio_arrays(8))
    (tmp_path / "task_info").mkdir()
    (tmp_path / "task_info/task_1.json").write_text(json.dumps({"episode_id": 5}))
    (ref,) = get_source("agibot")(tmp_path).discover()
    assert ref.relpath == "observations/1/5" and "task_1.json: task_info must be a JSON list, got dict" in ref.error


def test_a_task_info_entry_that_is_not_an_object_is_listed_alone(tmp_path):
    one_episode(tmp_path, fixture.proprio_arrays(8), task_info=["episode 5", fixture._task_entry(5)])
    refs = {ref.relpath: ref for ref in get_source("agibot")(tmp_path).discover()}
    assert refs["observations/1/5"].error is None
    assert "task_info entry 0 is a str, expected an object" in refs["task_info/task_1.json#0"].error


def test_a_malformed_segment_fails_its_episode_naming_it(tmp_path):
    entry = {**fixture._task_entry(5), "label_info": {"action_config": [{"start_frame": 0, "action_text": "Take it."}]}}
    with pytest.raises(EpisodeError, match=r"task_1\.json: malformed action_config entry \{'start_frame': 0"):
        one_episode(tmp_path, fixture.proprio_arrays(8), task_info=[entry])


def test_task_info_nested_too_deep_is_named_by_discovery_and_load(tmp_path):
    """json.loads raises RecursionError on lists nested thousands deep: it escaped inspect's discovery."""
    write_video(tmp_path / "observations/1/5/videos/head_color.mp4", moving_square_frames(8, 48, 64), 30.0)
    fixture.write_proprio(tmp_path / "proprio_stats/1/5/proprio_stats.h5", fixture.proprio_arrays(8))
    (tmp_path / "task_info").mkdir()
    (tmp_path / "task_info/task_1.json").write_text("[" * 100_000)
    reader = get_source("agibot")(tmp_path)
    (ref,) = reader.discover()
    words = f"{tmp_path / 'task_info/task_1.json'}: unreadable JSON (RecursionError: "
    assert ref.error.startswith(words) and "\n" not in ref.error
    with pytest.raises(EpisodeError, match=r"task_1\.json: unreadable JSON \(RecursionError: "):
        reader.load(ref)
