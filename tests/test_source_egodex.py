"""EgoDex specifics: camera-frame state, instruction choice, intrinsics and confidence quirks, layouts."""

from __future__ import annotations

import numpy as np
import pytest

from pyramid.errors import EpisodeError, SourceError
from pyramid.sources import detect_source, get_source
from pyramid.sources.egodex import DEFAULT_INTRINSICS, STATE_NAMES
from pyramid.video_io import write_video
from tests.fixtures import egodex as fixture
from tests.fixtures.media import moving_square_frames
from tests.hostile import check_hostile_corpus


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("egodex")
    fixture.build(root)
    return root


def read(root, relpath):
    reader = get_source("egodex")(root)
    return reader.read(reader.ref(relpath))


def identity_transforms(num_frames):
    return {name: np.tile(np.eye(4), (num_frames, 1, 1)) for name in ["camera", *fixture.joint_names()]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_is_expressed_in_the_camera_frame(tmp_path, dtype):
    num_frames = 4
    transforms = identity_transforms(num_frames)
    # The camera turns 90 degrees about z and walks along x; the left wrist walks with it.
    transforms["camera"] = np.stack([fixture.pose(fixture.rotation_z(np.pi / 2), [1.0 + t, 2.0, 3.0]) for t in range(num_frames)])
    transforms["leftHand"] = np.stack([fixture.pose(np.eye(3), [1.0 + t, 3.0, 3.0]) for t in range(num_frames)])
    transforms["rightIndexFingerTip"] = np.tile(fixture.pose(fixture.rotation_z(0.3), [1.0, 2.0, 5.0]), (num_frames, 1, 1))
    fixture.write_hdf5(tmp_path / "task/0.hdf5", transforms, {"llm_description": "wave"}, dtype=dtype)
    write_video(tmp_path / "task/0.mp4", moving_square_frames(num_frames, 36, 64), fps=30.0)

    episode = read(tmp_path, "task/0.hdf5")
    state = episode.state
    left = STATE_NAMES.index("leftHand.x")
    # world offset (0, 1, 0) from the camera, seen through a camera rotated +90 deg about z, is +x
    np.testing.assert_allclose(state[:, left : left + 3], np.tile([1.0, 0.0, 0.0], (num_frames, 1)), atol=1e-5)
    tip = STATE_NAMES.index("rightIndexFingerTip.x")
    np.testing.assert_allclose(state[0, tip : tip + 3], [0.0, 0.0, 2.0], atol=1e-5)
    np.testing.assert_allclose(state[3, tip : tip + 3], [0.0, 3.0, 2.0], atol=1e-5)  # camera moved 3 m along world x
    identity = STATE_NAMES.index("rightHand.x")
    np.testing.assert_allclose(state[0, identity : identity + 3], [-2.0, 1.0, -3.0], atol=1e-5)


def test_state_names_and_shape(dataset):
    episode = read(dataset, "test/add_remove_lid/0.hdf5")
    assert episode.state.shape == (8, 36) and episode.state.dtype == np.float32
    assert episode.state_names[:3] == ["leftHand.x", "leftHand.y", "leftHand.z"]
    assert episode.state_names[3:6] == ["rightHand.x", "rightHand.y", "rightHand.z"]
    assert {"leftThumbTip.x", "leftLittleFingerTip.z", "rightRingFingerTip.y"} <= set(episode.state_names)
    assert episode.actions is None and episode.embodiment == "human" and episode.level == 2


def test_instruction_follows_which_llm_description(dataset):
    assert read(dataset, "test/add_remove_lid/0.hdf5").instructions == ["Put the lid on the jar."]
    assert read(dataset, "test/add_remove_lid/1.hdf5").instructions == ["Take the lid off the jar."]
    # not reversible: llm_description even though which_llm_description says "2"
    assert read(dataset, "part1/wipe_screen/0.hdf5").instructions == ["Wipe the screen with a cloth."]


def test_attributes_stored_as_bytes_are_decoded(tmp_path):
    attrs = {"llm_type": np.bytes_(b"reversible"), "which_llm_description": np.bytes_(b"2"),
             "llm_description": b"Open the box.", "llm_description2": b"Close the box.",
             "llm_objects": np.array([b"box", b"lid"])}
    fixture.write_episode(tmp_path / "task/3", 5, attrs)
    episode = read(tmp_path, "task/3.hdf5")
    assert episode.instructions == ["Close the box."]
    assert episode.metadata["attrs"]["llm_objects"] == ["box", "lid"]


def test_a_reversible_task_never_takes_the_reverse_sentence(tmp_path):
    """which_llm_description '2' names llm_description2; llm_description describes the opposite motion."""
    for number, second in enumerate([None, "  "]):
        attrs = fixture.reversible("2", "Put the lid on the jar.", second or "")
        if second is None:
            del attrs["llm_description2"]
        fixture.write_episode(tmp_path / f"part2/add_remove_lid/{number}", 5, attrs)
        episode = read(tmp_path, f"part2/add_remove_lid/{number}.hdf5")
        assert episode.instructions == []
        assert "llm_description2 is missing or empty" in episode.metadata["instruction_missing"]


def test_a_sentence_stored_as_an_array_or_with_spaces_is_the_sentence(tmp_path):
    import h5py

    cases = {"array": (np.array(["Wipe the screen."], dtype=h5py.string_dtype()), ["Wipe the screen."]),
             "padded": ("  Wipe the screen.\n", ["Wipe the screen."]),
             "empty": (h5py.Empty("S10"), []),
             "several": (np.array(["Wipe.", "Dry."], dtype=h5py.string_dtype()), [])}
    for name, (value, instructions) in cases.items():
        fixture.write_episode(tmp_path / f"part1/wipe_screen_{name}/0", 5, {"llm_description": value})
        assert read(tmp_path, f"part1/wipe_screen_{name}/0.hdf5").instructions == instructions, name


def test_unknown_confidences_and_attributes_leave_the_episode_readable(tmp_path):
    """Metadata is a record, not data a build writes: a NaN there is an unknown, not a broken episode."""
    import h5py

    fixture.write_episode(tmp_path / "part3/wave_hello/0", 5, {"llm_description": "Wave.", "annotator_version": np.nan})
    with h5py.File(tmp_path / "part3/wave_hello/0.hdf5", "r+") as file:
        file["confidences/leftHand"][1] = np.nan
        file["confidences/rightHand"][...] = np.nan
        kept = np.delete(file["confidences/leftHand"][...], 1)
    metadata = read(tmp_path, "part3/wave_hello/0.hdf5").metadata
    assert metadata["mean_confidence"]["leftHand"] == pytest.approx(float(kept.mean()))
    assert metadata["mean_confidence"]["rightHand"] is None and metadata["attrs"]["annotator_version"] is None


def test_empty_intrinsics_fall_back_to_the_constant(dataset):
    fallback = read(dataset, "part1/wipe_screen/0.hdf5").metadata
    np.testing.assert_allclose(fallback["intrinsics"], DEFAULT_INTRINSICS)
    assert fallback["intrinsics_source"].startswith("default") and "(0, 3)" in fallback["intrinsics_source"]
    stored = read(dataset, "test/add_remove_lid/0.hdf5").metadata
    assert stored["intrinsics_source"] == "file"
    np.testing.assert_allclose(stored["intrinsics"], fixture.INTRINSICS, rtol=1e-6)


def test_missing_confidences_are_unknown_not_zero(dataset):
    missing = read(dataset, "test/add_remove_lid/1.hdf5").metadata
    assert missing["confidences"] == "unknown" and missing["mean_confidence"] is None
    present = read(dataset, "test/add_remove_lid/0.hdf5").metadata
    assert present["confidences"] == "present"
    assert len(present["mean_confidence"]) == 12 and all(0.0 <= v <= 1.0 for v in present["mean_confidence"].values())


def test_video_size_is_taken_from_the_file(dataset):
    episode = read(dataset, "test/add_remove_lid/0.hdf5")
    assert episode.frames(indices=[0, 7]).shape == (2, 36, 64, 3)
    assert episode.fps == pytest.approx(30.0)


def test_a_single_split_or_task_folder_is_a_root_too(dataset):
    split = dataset / "test"
    assert detect_source(split).name == "egodex"
    assert [ref.relpath for ref in get_source("egodex")(split).discover()] == ["add_remove_lid/0.hdf5", "add_remove_lid/1.hdf5"]
    task = dataset / "test/add_remove_lid"
    assert detect_source(task).name == "egodex"


def test_parts_unzipped_each_into_its_own_folder_are_detected(tmp_path):
    # `unzip part1.zip -d part1`: the zip's own top folder puts episodes three levels down
    for part in ("part1", "test"):
        fixture.write_episode(tmp_path / part / part / "add_remove_lid/0", 6, {"llm_description": "Put the lid on."})
    assert detect_source(tmp_path).name == "egodex"
    assert [ref.relpath for ref in get_source("egodex")(tmp_path).discover()] == [
        "part1/part1/add_remove_lid/0.hdf5", "test/test/add_remove_lid/0.hdf5"]


def test_frame_count_mismatch_names_the_video(dataset):
    with pytest.raises(EpisodeError, match=r"4\.mp4: video has 9 frames but 4\.hdf5 has 6"):
        read(dataset, "part1/wipe_screen/4.hdf5")


def test_hostile_release_dump(tmp_path):
    spec = check_hostile_corpus("egodex", tmp_path / "egodex", fixture.build_hostile(tmp_path / "egodex"))
    assert {bad.fault for bad in spec.bad} >= {"truncated", "empty", "implausible_fps", "nan", "inf", "wrong_shape",
                                                "wrong_dtype", "mismatched_lengths", "symlink_loop", "symlink_out"}


def test_non_finite_intrinsics_are_reported_not_replaced(tmp_path):
    fixture.write_episode(tmp_path / "task/0", 6, {"llm_description": "wave"},
                          intrinsic=np.full((3, 3), np.nan, np.float32))
    assert read(tmp_path, "task/0.hdf5").metadata["intrinsics_source"] == "file"
    reader = get_source("egodex")(tmp_path)
    with pytest.raises(EpisodeError, match=r"metadata\.intrinsics holds a non-finite value"):
        reader.load(reader.ref("task/0.hdf5"))


def test_detection_does_not_enter_symlink_loops(tmp_path):
    fixture.write_episode(tmp_path / "part1/lid/0", 6, {"llm_description": "wave"})
    (tmp_path / "part1/loop").symlink_to(tmp_path / "part1", target_is_directory=True)
    assert detect_source(tmp_path).name == "egodex"
    assert [ref.relpath for ref in get_source("egodex")(tmp_path).discover()] == ["part1/lid/0.hdf5", "part1/loop"]


def test_a_split_kept_on_another_disk_is_named_where_detection_cannot_look(tmp_path):
    """EgoDex is terabytes: a part symlinked in from another disk is read only where the source allows it."""
    fixture.write_episode(tmp_path / "disk2" / "part1" / "wipe_screen" / "0", 5, {"llm_description": "Wipe."})
    (tmp_path / "egodex").mkdir()
    (tmp_path / "egodex" / "part1").symlink_to(tmp_path / "disk2" / "part1")
    with pytest.raises(SourceError, match="part1 is a symlink out of it, not looked into: to read them, give the source "
                                          "in a recipe its kind and options: {follow_symlinks: true}"):
        detect_source(tmp_path / "egodex")
    reader = get_source("egodex")(tmp_path / "egodex", follow_symlinks=True)
    assert [reader.load(ref).instructions for ref in reader.discover()] == [["Wipe."]]
