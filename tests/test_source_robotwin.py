"""RoboTwin 2.0 reader: both file formats, colours, the shifted action convention, side files, embodiment names."""

from __future__ import annotations

import numpy as np
import pytest

from pyramid.errors import EpisodeError
from pyramid.sources import detect_source, get_source
from tests.fixtures import robotwin as fixture
from tests.fixtures.media import solid_frames
from tests.hostile import check_hostile_corpus

RED = (255, 0, 0)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("robotwin")
    spec = fixture.build(root)
    return root, spec


def read(root, relpath, **options):
    reader = get_source("robotwin")(root, **options)
    ref = next(ref for ref in reader.discover() if ref.relpath == relpath)
    return reader.read(ref)


def test_discovery_finds_both_formats_in_natural_order_and_skips_side_folders(built):
    root, spec = built
    relpaths = [ref.relpath for ref in get_source("robotwin")(root).discover()]
    assert relpaths == [fixture.LEGACY, fixture.LEGACY_NO_VECTOR, fixture.LEGACY_TRUNCATED, fixture.XPOLICYLAB, fixture.FRANKA]
    assert not any("_traj_data" in p or p.endswith(".mp4") for p in relpaths)


@pytest.mark.parametrize("writer", ["legacy", "xpolicylab"])
def test_a_red_frame_decodes_to_red(tmp_path, writer):
    frames = {name: solid_frames(fixture.T + 1, fixture.HEIGHT, fixture.WIDTH, RED) for name in fixture.LEGACY_CAMERAS}
    relpath = "data/task/demo_clean/data/episode0.hdf5" if writer == "legacy" else "data/demo_clean/task/aloha_agilex/data/episode_0000000.hdf5"
    (fixture.write_legacy_episode if writer == "legacy" else fixture.write_xpolicylab_episode)(tmp_path / relpath, frames)
    episode = read(tmp_path, relpath)
    for camera in episode.cameras:
        pixels = episode.frames(camera, [0, episode.num_frames - 1]).reshape(-1, 3).astype(int)
        assert np.abs(pixels - RED).max() <= 6, (camera, pixels.mean(axis=0))


def test_decoded_frames_match_what_was_recorded(tmp_path):
    frames = fixture.camera_frames(fixture.LEGACY_CAMERAS, seed=4)
    relpath = "data/task/demo_clean/data/episode3.hdf5"
    fixture.write_legacy_episode(tmp_path / relpath, frames)
    episode = read(tmp_path, relpath)
    for camera, given in frames.items():
        given = given[:-1]  # the last saved frame has no next target: left out
        decoded = episode.frames(camera).astype(int)  # every frame, so NUL-padded shorter JPEGs are covered too
        assert decoded.shape == given.shape
        assert np.abs(decoded - given).mean() < 12 < 25 < np.abs(decoded[..., ::-1] - given).mean()


def test_legacy_state_is_the_joint_vector_and_the_action_is_the_next_one(built):
    root, _ = built
    episode = read(root, fixture.LEGACY)
    vector = fixture.joint_vector(fixture.T + 1, 6)
    np.testing.assert_allclose(episode.state, vector[:-1], rtol=1e-6)
    np.testing.assert_allclose(episode.actions, vector[1:], rtol=1e-6)  # none made up for the last frame
    assert episode.num_frames == fixture.T and all(camera.num_frames == fixture.T for camera in episode.cameras.values())
    assert episode.state_names == [f"left_arm_{i}" for i in range(6)] + ["left_gripper"] + [f"right_arm_{i}" for i in range(6)] + ["right_gripper"]
    assert episode.metadata["format"] == "robotwin-legacy"


def test_franka_vectors_are_sixteen_wide_with_seven_joints_per_arm(built):
    root, _ = built
    episode = read(root, fixture.FRANKA)
    assert episode.state_names[7] == "left_gripper" and episode.state_names[-2] == "right_arm_6"
    assert episode.metadata["embodiment_from"] == "folder name"


def test_xpolicylab_files_keep_their_stored_pairs(built):
    root, _ = built
    episode = read(root, fixture.XPOLICYLAB)
    vector = fixture.joint_vector(fixture.T + 1, 6)
    np.testing.assert_allclose(episode.state, vector[:-1], rtol=1e-6)
    np.testing.assert_allclose(episode.actions, vector[1:], rtol=1e-6)
    assert episode.state_names[6] == "left_gripper" and episode.state_names[:2] == ["left_arm_0", "left_arm_1"]
    assert episode.metadata["format"] == "robotwin-xpolicylab" and episode.metadata["data_format_version"] == "v1.0"
    assert episode.fps == pytest.approx(250 / 15)  # the stored 15 is RoboTwin's save_freq, physics steps per frame
    assert episode.metadata["fps_from"].startswith("250 Hz physics / additional_info/frequency (15 steps per frame")


def test_a_legacy_file_and_its_xpolicylab_conversion_read_alike(tmp_path):
    frames = fixture.camera_frames(fixture.LEGACY_CAMERAS, seed=8)
    legacy, converted = "data/task/demo_clean/data/episode0.hdf5", "data/RoboTwin/task/aloha_agilex/data/episode_0000000.hdf5"
    fixture.write_legacy_episode(tmp_path / legacy, frames)
    fixture.write_xpolicylab_episode(tmp_path / converted, frames, instructions="array")
    one, other = read(tmp_path, legacy), read(tmp_path, converted)
    assert one.num_frames == other.num_frames == fixture.T and one.fps == pytest.approx(other.fps)
    np.testing.assert_allclose(one.state, other.state, rtol=1e-6)
    np.testing.assert_allclose(one.actions, other.actions, rtol=1e-6)
    np.testing.assert_array_equal(one.frames("head_camera"), other.frames("cam_head"))


def test_the_converters_array_of_instructions_is_read(tmp_path):
    relpath = "data/RoboTwin/beat_block_hammer/aloha_agilex/data/episode_0000000.hdf5"
    fixture.write_xpolicylab_episode(tmp_path / relpath, fixture.camera_frames(fixture.LEGACY_CAMERAS), instructions="array")
    assert read(tmp_path, relpath).instructions == fixture.XPOLICYLAB_INSTRUCTIONS
    import h5py

    with h5py.File(tmp_path / relpath, "a") as file:
        del file["instructions"]  # only the single instruction left
    assert read(tmp_path, relpath).instructions == fixture.XPOLICYLAB_INSTRUCTIONS[:1]


def test_another_writers_frequency_is_taken_as_hz(tmp_path):
    relpath = "data/RoboTwin/beat_block_hammer/aloha_agilex/data/episode_0000000.hdf5"
    fixture.write_xpolicylab_episode(tmp_path / relpath, fixture.camera_frames(fixture.LEGACY_CAMERAS), frequency=30)
    import h5py

    with h5py.File(tmp_path / relpath, "a") as file:
        del file.attrs["source_format"]
    episode = read(tmp_path, relpath)
    assert episode.fps == 30.0 and episode.metadata["fps_from"] == "additional_info/frequency"


def test_instructions_seen_then_unseen(built):
    root, _ = built
    assert read(root, fixture.LEGACY).instructions == fixture.SEEN + fixture.UNSEEN
    assert read(root, fixture.FRANKA).instructions == []
    assert read(root, fixture.XPOLICYLAB).instructions == fixture.XPOLICYLAB_INSTRUCTIONS


def test_legacy_side_files_land_in_metadata(built):
    root, _ = built
    metadata = read(root, fixture.LEGACY).metadata
    assert (metadata["seed"], metadata["episode_index"], metadata["task_folder"], metadata["config_folder"]) == (
        0, 0, "beat_block_hammer", "demo_clean")
    assert metadata["scene_info"]["info"] == {"{A}": "020_hammer/base0", "{a}": "left"}
    assert metadata["video"] == "data/beat_block_hammer/demo_clean/video/episode0.mp4"


def test_fps_is_nominal_for_legacy_files_and_configurable(built):
    root, _ = built
    assert read(root, fixture.LEGACY).fps == pytest.approx(250 / 15)
    assert read(root, fixture.LEGACY, fps=30).fps == 30.0
    assert read(root, fixture.XPOLICYLAB, fps=50).fps == 50.0


def test_embodiment_comes_from_the_folder_or_the_option(built):
    root, _ = built
    legacy = read(root, fixture.LEGACY)
    assert legacy.embodiment == "aloha-agilex" and legacy.metadata["embodiment_from"] == "default"
    assert read(root, fixture.XPOLICYLAB).metadata["embodiment_from"] == "folder name"
    assert read(root, fixture.LEGACY, embodiment="arx-x5").embodiment == "arx-x5"


@pytest.mark.parametrize("folder, arm_joints, embodiment, told", [
    ("aloha_agilex", 7, "franka-panda", "state width (the folder says aloha-agilex)"),
    ("franka-panda_clean_50", 6, "aloha-agilex", "default (the folder says franka-panda)"),
    ("franka-panda_clean_50", 7, "franka-panda", "folder name"),
])
def test_a_folder_name_that_the_state_width_contradicts_is_not_taken(tmp_path, folder, arm_joints, embodiment, told):
    """XPolicyLab's converter writes to `aloha_agilex/` whatever the robot unless told otherwise: 16 joint values a
    frame (7 + 1 per arm) are franka-panda's, whatever the folder says, and 14 are not franka-panda's."""
    relpath = f"data/demo_clean/beat_block_hammer/{folder}/data/episode_0000000.hdf5"
    fixture.write_xpolicylab_episode(tmp_path / relpath, fixture.camera_frames(fixture.XPOLICYLAB_CAMERAS),
                                     arm_joints=arm_joints)
    episode = read(tmp_path, relpath)
    assert (episode.embodiment, episode.metadata["embodiment_from"], episode.state_dim) == (embodiment, told, 2 * arm_joints + 2)


@pytest.mark.parametrize("below", ["data", "data/beat_block_hammer/demo_clean", "data/demo_clean/beat_block_hammer/aloha_agilex"])
def test_the_root_may_be_any_folder_above_the_episodes(built, below):
    root, _ = built
    assert detect_source(root / below).name == "robotwin"
    assert list(get_source("robotwin")(root / below).discover())


def test_a_camera_with_fewer_frames_than_joint_rows_is_an_error(tmp_path):
    frames = fixture.camera_frames(fixture.LEGACY_CAMERAS)
    relpath = "data/task/demo_clean/data/episode0.hdf5"
    fixture.write_legacy_episode(tmp_path / relpath, frames)
    import h5py

    with h5py.File(tmp_path / relpath, "a") as file:
        rgb = file["observation/left_camera/rgb"][:-1]
        del file["observation/left_camera/rgb"]
        file.create_dataset("observation/left_camera/rgb", data=rgb)
    with pytest.raises(EpisodeError, match="'observation/left_camera/rgb' has 6 frames but the joint arrays have 7 rows"):
        read(tmp_path, relpath)


def test_corrupt_files_name_the_problem(built):
    root, _ = built
    with pytest.raises(EpisodeError, match="missing dataset 'joint_action/vector'"):
        read(root, fixture.LEGACY_NO_VECTOR)
    with pytest.raises(EpisodeError, match="episode2.hdf5: not a readable HDF5 file"):
        read(root, fixture.LEGACY_TRUNCATED)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "robotwin2"
    root.mkdir()
    return root, fixture.build_hostile(root)


def test_hostile_corpus_sorts_good_episodes_from_one_line_reasons(hostile):
    root, spec = hostile
    check_hostile_corpus("robotwin", root, spec)
    reader = get_source("robotwin")(root)
    refs = {ref.relpath: ref for ref in reader.discover()}
    # a bad seed token costs only the episode at its position
    assert reader.load(refs[spec.good[1]]).metadata["seed"] == 3
    assert {case.fault for case in spec.bad} >= {
        "truncated", "empty", "nan", "inf", "wrong_shape", "wrong_dtype", "mismatched_lengths", "undecodable_image",
        "missing_feature", "bad_metadata_line", "implausible_fps", "path_escape", "symlink_loop", "symlink_out"}


@pytest.mark.parametrize("relpath", [fixture.LEGACY, fixture.XPOLICYLAB])
def test_an_fps_option_of_zero_is_implausible_not_the_stored_rate(built, relpath):
    root, _ = built
    reader = get_source("robotwin")(root, fps=0)
    ref = next(ref for ref in reader.discover() if ref.relpath == relpath)
    with pytest.raises(EpisodeError, match="fps 0 is implausible"):
        reader.load(ref)


def test_a_side_file_linked_outside_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "scene_info.json"
    outside.write_text('{"episode_0": {"info": {}}}')
    relpath = "beat_block_hammer/demo_clean/data/episode0.hdf5"
    fixture.write_legacy_episode(root / relpath, fixture.camera_frames(fixture.LEGACY_CAMERAS))
    (root / "beat_block_hammer/demo_clean/scene_info.json").symlink_to(outside)
    reader = get_source("robotwin")(root)
    ref = next(reader.discover())
    assert ref.relpath == relpath
    with pytest.raises(EpisodeError, match="scene_info.json: resolves to .*, outside the dataset root"):
        reader.load(ref)
    assert get_source("robotwin")(root, follow_symlinks=True).load(ref).metadata["scene_info"] == {"info": {}}


def test_an_episode_file_linked_outside_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "episode0.hdf5"
    fixture.write_legacy_episode(outside, fixture.camera_frames(fixture.LEGACY_CAMERAS))
    link = root / "task/demo_clean/data/episode0.hdf5"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    ref = next(get_source("robotwin")(root).discover())
    with pytest.raises(EpisodeError, match="leaves the dataset root"):
        get_source("robotwin")(root).load(ref)
    # read() itself confines the path too, whatever ref it is handed
    with pytest.raises(EpisodeError, match="outside the dataset root"):
        get_source("robotwin")(root).read(get_source("robotwin")(root).ref(ref.relpath))


def test_invalid_scene_info_fails_each_episode_of_its_folder_naming_the_line(tmp_path):
    config = tmp_path / "beat_block_hammer/demo_clean"
    for number in (0, 1):
        fixture.write_legacy_episode(config / f"data/episode{number}.hdf5", fixture.camera_frames(fixture.LEGACY_CAMERAS))
    (config / "scene_info.json").write_text('{"episode_0": {"info": {}},\n "episode_1": {"info": }}\n')
    reader = get_source("robotwin")(tmp_path)
    for ref in reader.discover():
        with pytest.raises(EpisodeError, match=r"scene_info\.json: line 2: invalid JSON"):
            reader.load(ref)


def test_scene_info_nested_too_deep_fails_its_episodes_in_one_line(tmp_path):
    """json.loads raises RecursionError on lists nested thousands deep: it became an "unexpected error"."""
    config = tmp_path / "beat_block_hammer/demo_clean"
    fixture.write_legacy_episode(config / "data/episode0.hdf5", fixture.camera_frames(fixture.LEGACY_CAMERAS))
    (config / "scene_info.json").write_text("[" * 100_000)
    reader = get_source("robotwin")(tmp_path)
    with pytest.raises(EpisodeError, match=r"scene_info\.json: unreadable JSON \(RecursionError: "):
        reader.load(next(reader.discover()))
