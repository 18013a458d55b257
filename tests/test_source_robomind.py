"""RoboMIND v1 reader: colour conventions, per-embodiment state/action roots, simulation alignment, layouts, side files."""

from __future__ import annotations

import numpy as np
import pytest

from pyramid.errors import EpisodeError
from pyramid.sources import detect_source, get_source
from pyramid.sources.robomind import SCHEMAS
from tests.fixtures import robomind as fixture
from tests.fixtures.media import solid_frames
from tests.hostile import check_hostile_corpus

RED = (255, 0, 0)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("robomind")
    spec = fixture.build(root)
    return root, spec


def read(root, relpath, **options):
    reader = get_source("robomind")(root, **options)
    ref = next(ref for ref in reader.discover() if ref.relpath == relpath)
    return reader.read(ref)


def write_single(root, embodiment, spec=None, episode="0101_120000", **fields):
    relpath = f"benchmark1_0_release/h5_{embodiment}/some_task/success_episodes/train/{episode}/data/trajectory.hdf5"
    given = fixture.write_trajectory(root / relpath, spec or fixture.Trajectory(embodiment, **fields))
    return relpath, given


def test_fixture_covers_every_embodiment_folder_of_the_release():
    assert set(SCHEMAS) == set(fixture.LAYOUTS) == {
        "franka_3rgb", "franka_1rgb", "ur_1rgb", "agilex_3rgb", "tienkung_gello_1rgb", "tienkung_prod1_gello_1rgb",
        "tienkung_xsens_1rgb", "franka_fr3_dual", "simulation", "sim_franka_3rgb", "sim_tienkung_1rgb",
    }


@pytest.mark.parametrize("embodiment", sorted(fixture.LAYOUTS))
def test_a_red_frame_decodes_to_red_whatever_the_embodiment_jpeg_convention(tmp_path, embodiment):
    layout = fixture.LAYOUTS[embodiment]
    red = {camera: solid_frames(fixture.T, fixture.HEIGHT, fixture.WIDTH, RED) for camera in layout.cameras}
    relpath, _ = write_single(tmp_path, embodiment, frames=red)
    episode = read(tmp_path, relpath)
    assert list(episode.cameras) and set(episode.cameras) == set(layout.cameras)
    for camera in episode.cameras:
        pixels = episode.frames(camera, [0, fixture.T - 1]).reshape(-1, 3).astype(int)
        assert np.abs(pixels - RED).max() <= 6, (embodiment, camera, pixels.mean(axis=0))


def test_the_two_conventions_store_different_bytes_for_the_same_picture():
    red = solid_frames(1, 8, 8, RED)[0]
    assert not np.array_equal(fixture.encode_jpeg(red, standard_jpeg=True), fixture.encode_jpeg(red, standard_jpeg=False))
    assert not SCHEMAS["agilex_3rgb"].standard_jpeg and SCHEMAS["ur_1rgb"].standard_jpeg


def test_decoded_frames_match_what_was_recorded(tmp_path):
    for embodiment in ("ur_1rgb", "agilex_3rgb", "sim_tienkung_1rgb"):
        relpath, given = write_single(tmp_path, embodiment)
        episode = read(tmp_path, relpath)
        for camera, frames in given.items():
            decoded = episode.frames(camera).astype(int)
            assert decoded.shape == frames.shape
            # JPEG blurs the 8px texture by ~6 levels on average; swapped channels would be off by ~40
            assert np.abs(decoded - frames).mean() < 12, (embodiment, camera)
            assert np.abs(decoded[..., ::-1] - frames).mean() > 25, (embodiment, camera)


def test_state_is_the_follower_and_actions_follow_the_official_action_root(built):
    root, _ = built
    ur = read(root, fixture.UR)
    puppet = fixture.array_values("puppet/joint_position", fixture.T, 7)
    np.testing.assert_allclose(ur.state, puppet)
    np.testing.assert_allclose(ur.actions, puppet)
    assert ur.state_names == [f"joint_{i}" for i in range(6)] + ["gripper"]
    assert ur.metadata["action_root"] == "puppet"

    agilex = read(root, fixture.AGILEX)
    halves = [fixture.array_values(f"{root_}/joint_position_{side}", fixture.T, 7) for root_ in ("puppet", "master") for side in ("left", "right")]
    np.testing.assert_allclose(agilex.state, np.concatenate(halves[:2], axis=1))
    np.testing.assert_allclose(agilex.actions, np.concatenate(halves[2:], axis=1))
    assert agilex.state_names[6] == "left_gripper" and agilex.state_names[-1] == "right_gripper"
    assert agilex.metadata["action_root"] == "master"

    xsens = read(root, fixture.XSENS)
    assert xsens.state_names[:7] == [f"left_arm_{i}" for i in range(7)]
    assert xsens.state_names[14:20] == ["left_little_finger", "left_ring_finger", "left_middle_finger",
                                        "left_index_finger", "left_thumb_bend", "left_thumb_rotation"]
    np.testing.assert_allclose(xsens.state[:, 14:], fixture.array_values("puppet/end_effector", fixture.T, 12))


def test_every_embodiment_reads_with_its_widths(tmp_path):
    widths = {"franka_3rgb": 8, "franka_1rgb": 8, "ur_1rgb": 7, "franka_fr3_dual": 16, "agilex_3rgb": 14,
              "tienkung_gello_1rgb": 16, "tienkung_prod1_gello_1rgb": 16, "tienkung_xsens_1rgb": 26,
              "simulation": 8, "sim_franka_3rgb": 8, "sim_tienkung_1rgb": 38}
    for embodiment, width in widths.items():
        relpath, _ = write_single(tmp_path, embodiment, episode=embodiment)
        episode = read(tmp_path, relpath)
        assert (episode.embodiment, episode.state.shape, episode.actions.shape) == (embodiment, (fixture.T, width), (fixture.T, width))
        assert len(episode.state_names) == width and len(set(episode.state_names)) == width


def test_simulation_arrays_are_resampled_to_the_rgb_frames(built):
    root, _ = built
    episode = read(root, fixture.SIMULATION)
    rows = fixture.array_rows(fixture.LAYOUTS["simulation"], "franka/joint_position")
    assert rows > fixture.T and episode.num_frames == fixture.T
    picked = np.rint(np.linspace(0, rows - 1, fixture.T)).astype(int)
    np.testing.assert_allclose(episode.state, fixture.array_values("franka/joint_position", rows, 8)[picked])
    assert episode.metadata["alignment"]["rows"] == {"franka/joint_position": rows}
    assert episode.metadata["alignment"]["frames"] == fixture.T
    assert episode.metadata["attrs"] == {"compress": True, "sim": True}


def test_a_real_robot_file_with_misaligned_arrays_is_an_error_not_a_resample(tmp_path):
    relpath, _ = write_single(tmp_path, "ur_1rgb", frames={"camera_top": solid_frames(fixture.T - 2, 32, 40, RED)})
    with pytest.raises(EpisodeError, match="has 6 rows but the cameras have 4 frames"):
        read(tmp_path, relpath)


def test_empty_placeholder_cameras_are_skipped_and_the_top_camera_is_primary(built):
    root, _ = built
    assert list(read(root, fixture.FRANKA_1RGB).cameras) == ["camera_top"]
    franka = read(root, fixture.FRANKA)
    assert franka.primary_camera == "camera_top" and set(franka.cameras) == {"camera_top", "camera_left", "camera_right"}
    assert read(root, fixture.AGILEX).primary_camera == "camera_front"


def test_failed_episodes_are_skipped_unless_asked_for(built):
    root, spec = built
    default = [ref.relpath for ref in get_source("robomind")(root).discover()]
    assert fixture.FAILED not in default
    with_failed = [ref.relpath for ref in get_source("robomind")(root, include_failed=True).discover()]
    assert set(with_failed) == set(default) | {fixture.FAILED}
    assert read(root, fixture.FAILED, include_failed=True).metadata["outcome"] == "failed"


@pytest.mark.parametrize("below", ["benchmark1_0_release", "benchmark1_0_release/h5_ur_1rgb",
                                   "benchmark1_0_release/h5_ur_1rgb/pick_up_plastic_bottle"])
def test_the_root_may_be_a_benchmark_an_embodiment_or_a_task_folder(built, below):
    root, _ = built
    sub = root / below
    assert detect_source(sub).name == "robomind"
    relpaths = [ref.relpath for ref in get_source("robomind")(sub).discover()]
    inside = fixture.UR[len(below) + 1:]
    assert inside in relpaths and all(not p.startswith("/") for p in relpaths)
    episode = read(sub, inside)
    assert episode.embodiment == "ur_1rgb" and episode.task == "pick up the plastic bottle"


def _levels_below_the_dataset_root(relpath):
    """The benchmark, embodiment and task folders on an episode's path."""
    return ["/".join(relpath.split("/")[:depth]) for depth in (1, 2, 3)]


@pytest.mark.parametrize("relpath, below", [
    pytest.param(relpath, below, id=below)
    for relpath in (fixture.AGILEX, fixture.XSENS) for below in _levels_below_the_dataset_root(relpath)
])
def test_side_files_above_a_benchmark_embodiment_or_task_root_still_give_instructions(built, relpath, below):
    root, spec = built
    episode = read(root / below, relpath[len(below) + 1:])
    assert episode.instructions == [spec.expected[relpath]["task"]]
    if relpath == fixture.XSENS:
        assert episode.metadata["annotation"]["steps"] == ["grasp the cup", "pour"]


def test_side_files_are_looked_for_no_higher_than_above_the_benchmark_folder(tmp_path):
    (tmp_path / "RoboMIND_v1_2_instr.csv").write_text(",task,instruction\n0,some_task,Do the task.\n")
    relpath, _ = write_single(tmp_path / "downloads", "agilex_3rgb")  # the CSV is one level too high
    episode = read(tmp_path / "downloads/benchmark1_0_release", relpath.split("/", 1)[1])
    assert episode.instructions == []


def test_a_symlinked_side_file_above_the_root_is_refused_unless_links_are_followed(tmp_path):
    outside = tmp_path / "elsewhere.csv"
    outside.write_text(",task,instruction\n0,some_task,Do the task.\n")
    relpath, _ = write_single(tmp_path / "release", "agilex_3rgb")
    (tmp_path / "release/RoboMIND_v1_2_instr.csv").symlink_to(outside)
    benchmark, inside = tmp_path / "release/benchmark1_0_release", relpath.split("/", 1)[1]
    with pytest.raises(EpisodeError, match=r"RoboMIND_v1_2_instr\.csv: .*symlink"):
        read(benchmark, inside)
    assert read(benchmark, inside, follow_symlinks=True).instructions == ["Do the task."]


def test_paths_are_parsed_around_the_success_anchor(built):
    root, _ = built
    xsens = read(root, fixture.XSENS)
    assert (xsens.metadata["split"], xsens.metadata["episode_folder"]) == (None, "2024-11-13-16-52-40")
    franka = read(root, fixture.FRANKA)
    assert (franka.metadata["task_folder"], franka.metadata["split"], franka.metadata["outcome"]) == (
        "apples_placed_on_a_ceramic_plate", "val", "success")


def test_instructions_fall_back_to_the_side_files(built):
    root, _ = built
    assert read(root, fixture.UR).instructions == ["pick up the plastic bottle"]  # language_raw wins over the CSV
    assert read(root, fixture.AGILEX).instructions == [fixture.CSV_INSTRUCTION]
    xsens = read(root, fixture.XSENS)
    assert xsens.instructions == [fixture.ANNOTATION_SUMMARY]
    assert xsens.metadata["annotation"]["steps"] == ["grasp the cup", "pour"]
    assert read(root, fixture.SIMULATION).instructions == []


def test_side_files_are_read_once_per_reader(built, monkeypatch):
    root, _ = built
    import pyramid.sources.robomind as robomind

    calls = []
    original = robomind._read_instruction_csv
    monkeypatch.setattr(robomind, "_read_instruction_csv", lambda path: calls.append(path) or original(path))
    reader = get_source("robomind")(root)
    refs = {ref.relpath: ref for ref in reader.discover()}
    for _ in range(3):
        reader.read(refs[fixture.AGILEX])
    assert len(calls) == 1


def test_fps_is_30_unless_configured(built):
    root, _ = built
    assert read(root, fixture.UR).fps == 30.0
    assert read(root, fixture.UR, fps=10).fps == 10.0


def test_uncompressed_raw_frames_are_reshaped(tmp_path):
    frames = {"camera_top": np.stack([np.full((480, 640, 3), (10, 20, 3 * t), np.uint8) for t in range(fixture.T)])}
    spec = fixture.Trajectory("tienkung_gello_1rgb", frames=frames, raw_frames=True)
    relpath = "h5_tienkung_gello_1rgb/task/success_episodes/train/1/data/trajectory.hdf5"
    fixture.write_trajectory(tmp_path / relpath, spec)
    episode = read(tmp_path, relpath, level=6)
    assert episode.metadata["attrs"]["compress"] is False and episode.level == 6
    np.testing.assert_array_equal(episode.frames(indices=[1])[0], frames["camera_top"][1])


def test_without_an_embodiment_folder_the_embodiment_must_be_given(tmp_path):
    relpath = "my_task/success_episodes/0001/data/trajectory.hdf5"
    fixture.write_trajectory(tmp_path / relpath, fixture.Trajectory("ur_1rgb"))
    with pytest.raises(EpisodeError, match="pass embodiment="):
        read(tmp_path, relpath)
    assert read(tmp_path, relpath, embodiment="ur_1rgb").state_dim == 7


def test_corrupt_files_name_the_problem(built):
    root, _ = built
    with pytest.raises(EpisodeError, match=r"'puppet/joint_position' has shape \(6, 5\), expected \(T, 7\)"):
        read(root, fixture.UR_BAD_SHAPE)
    with pytest.raises(EpisodeError, match="missing dataset 'puppet/joint_position_right'"):
        read(root, fixture.AGILEX_NO_PUPPET)
    episode = read(root, fixture.FRANKA_BAD_JPEG)  # frames decode lazily: the bad one fails only when decoded
    assert episode.frames(indices=[1]).shape == (1, fixture.HEIGHT, fixture.WIDTH, 3)
    with pytest.raises(EpisodeError, match=r"camera_top'\[0\] is not a decodable image"):
        episode.frames(indices=[0])


def test_robomind_2_files_are_refused_with_a_reason(tmp_path):
    relpath, _ = write_single(tmp_path, "ur_1rgb")
    import h5py

    with h5py.File(tmp_path / relpath, "a") as file:
        file.create_dataset("puppet/arm_joint_position", data=np.zeros((fixture.T, 6), np.float32))
    with pytest.raises(EpisodeError, match="RoboMIND 2.0 schema"):
        read(tmp_path, relpath)


@pytest.mark.parametrize("dataset, key", [("Single_Arm_UR_5e", "puppet/arm_joint_position"),
                                          ("Tien_Kung_2.0", "camera_observations/timestamp")])
def test_robomind_2_folders_are_refused_as_2_0_not_for_a_missing_embodiment(tmp_path, dataset, key):
    """2.0 datasets are named without v1's `h5_` prefix: the reason must be the schema, not the folder name."""
    import h5py

    relpath = f"{dataset}/pick_up_the_cup/success_episodes/train/0312_101500/data/trajectory.hdf5"
    (tmp_path / relpath).parent.mkdir(parents=True)
    with h5py.File(tmp_path / relpath, "w") as file:
        file.create_dataset(key, data=np.zeros((fixture.T, 6), np.float32))
        file.create_dataset("is_intervene", data=np.zeros(fixture.T, np.int64))
    with pytest.raises(EpisodeError, match="RoboMIND 2.0 schema") as raised:
        get_source("robomind")(tmp_path).read(get_source("robomind")(tmp_path).ref(relpath))
    assert "h5_" not in str(raised.value)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "robomind"
    root.mkdir()
    return root, fixture.build_hostile(root)


def test_hostile_corpus_sorts_good_episodes_from_one_line_reasons(hostile):
    root, spec = hostile
    check_hostile_corpus("robomind", root, spec)
    reader = get_source("robomind")(root)
    refs = {ref.relpath: ref for ref in reader.discover()}
    # the malformed row of another task leaves this task's instruction usable
    assert reader.load(refs[fixture.HOSTILE_AGILEX]).instructions == [fixture.PACKPLATE_INSTRUCTION]
    assert reader.load(refs[fixture.HOSTILE_XSENS]).instructions == [fixture.ANNOTATION_SUMMARY]
    assert {case.fault for case in spec.bad} >= {
        "truncated", "empty", "nan", "inf", "wrong_shape", "wrong_dtype", "mismatched_lengths", "undecodable_image",
        "missing_feature", "bad_metadata_line", "symlink_loop", "symlink_out"}


def test_a_broken_side_file_is_parsed_once_and_fails_each_episode_that_needs_it(hostile, monkeypatch):
    root, spec = hostile
    import pyramid.sources.robomind as robomind

    calls = []
    original = robomind._read_annotations
    monkeypatch.setattr(robomind, "_read_annotations", lambda path: calls.append(path) or original(path))
    reader = get_source("robomind")(root)
    case = next(case for case in spec.bad if "h5_franka_3rgb.json" in case.words)
    ref = next(ref for ref in reader.discover() if ref.relpath == case.relpath)
    for _ in range(2):
        with pytest.raises(EpisodeError, match="line 3: invalid JSON"):
            reader.load(ref)
    assert len([path for path in calls if path.name == "h5_franka_3rgb.json"]) == 1


def test_an_fps_option_of_zero_is_implausible_not_a_crash(built):
    root, _ = built
    reader = get_source("robomind")(root, fps=0)
    ref = next(ref for ref in reader.discover() if ref.relpath == fixture.UR)
    with pytest.raises(EpisodeError, match="fps 0 is implausible"):
        reader.load(ref)


def test_a_side_file_linked_outside_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "elsewhere.csv"
    outside.write_text(",task,instruction\n0,some_task,Do the task.\n")
    relpath, _ = write_single(root, "agilex_3rgb")  # no language_raw: the instruction comes from the CSV
    (root / "RoboMIND_v1_2_instr.csv").symlink_to(outside)
    reader = get_source("robomind")(root)
    ref = next(reader.discover())
    with pytest.raises(EpisodeError, match="outside the dataset root"):
        reader.load(ref)
    assert get_source("robomind")(root, follow_symlinks=True).load(ref).instructions == ["Do the task."]
    assert ref.relpath == relpath


def test_an_annotation_file_nested_too_deep_fails_its_episodes_in_one_line(tmp_path):
    """json.loads raises RecursionError on lists nested thousands deep: it became an "unexpected error"."""
    spec = fixture.build_hostile(tmp_path)
    (tmp_path / "language_description_annotation_json/h5_tienkung_xsens_1rgb.json").write_text("[" * 100_000)
    reader = get_source("robomind")(tmp_path)
    ref = next(ref for ref in reader.discover() if ref.relpath == fixture.HOSTILE_XSENS)
    with pytest.raises(EpisodeError, match=r"h5_tienkung_xsens_1rgb\.json: unreadable JSON \(RecursionError: "):
        reader.load(ref)
    assert spec.good
