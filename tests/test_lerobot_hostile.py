"""The LeRobot reader on hostile dumps: a v2.1 and a v3.0 root with a corrupt twin per fault, and small
datasets whose meta/info.json is wrong for every episode (a template leaving the root, an implausible fps)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyramid.errors import EpisodeError, SourceError
from pyramid.sources import get_source
from pyramid.sources.base import DuplicateIds
from tests.fixtures import lerobot as fixtures
from tests.hostile import load_and_decode

HOSTILE = {"v2.1": fixtures.build_hostile, "v3.0": fixtures.build_hostile_v3}
DECODE_TIME_WORDS = "cannot decode video"  # the only fault `load` lets through: frames() finds it


@pytest.fixture(scope="module", params=list(HOSTILE))
def hostile(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param.replace(".", "_")) / "dataset"
    spec = HOSTILE[request.param](root)
    return root, spec


def refs_by_relpath(reader) -> dict:
    refs = {}
    for ref in reader.discover():
        refs.setdefault(ref.relpath, ref)
    return refs


def test_discovery_never_raises_and_yields_every_listed_relpath(hostile):
    root, spec = hostile
    relpaths = [ref.relpath for ref in get_source("lerobot")(root).discover()]
    assert set(spec.good) | {bad.relpath for bad in spec.bad} <= set(relpaths)
    for bad in spec.bad:
        assert relpaths.count(bad.relpath) == (2 if bad.fault == "duplicate_id" else 1), bad


def test_good_episodes_load_and_decode_with_motion(hostile):
    root, spec = hostile
    reader = get_source("lerobot")(root)
    refs = refs_by_relpath(reader)
    for relpath in spec.good:
        episode = load_and_decode(reader, refs[relpath])
        frames = episode.frames().astype(int)
        assert episode.num_frames >= 6 and frames.shape[0] == episode.num_frames
        assert np.abs(np.diff(frames, axis=0)).mean() > 0.5, relpath
        assert episode.state_dim == 4 and episode.action_dim == 4


def test_every_corrupt_twin_fails_with_its_one_line_reason(hostile):
    root, spec = hostile
    reader = get_source("lerobot")(root)
    refs = refs_by_relpath(reader)
    for bad in spec.bad:
        if bad.fault == "duplicate_id":
            continue
        with pytest.raises(EpisodeError) as caught:
            load_and_decode(reader, refs[bad.relpath])
        message = str(caught.value)
        assert "\n" not in message and bad.words in message, (bad, message)
        assert str(root) in message


def test_only_the_faststart_mp4_gets_past_load(hostile):
    root, spec = hostile
    reader = get_source("lerobot")(root)
    refs = refs_by_relpath(reader)
    late = [bad for bad in spec.bad if bad.words == DECODE_TIME_WORDS]
    assert len(late) == 1
    episode = reader.load(refs[late[0].relpath])  # probes fine: 8 frames in the index
    assert episode.cameras["top"].num_frames == 8


def test_the_duplicate_is_named_by_the_build_layer(hostile):
    root, spec = hostile
    duplicate = next(bad for bad in spec.bad if bad.fault == "duplicate_id")
    seen, problems = DuplicateIds(), []
    for ref in get_source("lerobot")(root).discover():
        if (problem := seen.problem(ref.episode_id, ref.relpath)) is not None:
            problems.append((ref.relpath, problem))
    assert len(problems) == 1 and problems[0][0] == duplicate.relpath and duplicate.words in problems[0][1]


def test_the_latent_action_reader_names_the_duplicate_too(hostile):
    """`train-vae`, `label` and `eval-latents` read episodes through `read_episodes`: a duplicated entry is one
    episode skipped with its reason, as in a build, not a second copy drawn into the split and the label share."""
    from latent_action.pairs import UnreadableEpisode, read_episodes

    root, spec = hostile
    read = list(read_episodes(root, "lerobot"))
    ids = [episode.episode_id for episode in read if not isinstance(episode, UnreadableEpisode)]
    assert len(ids) == len(set(ids)) and len(ids) >= len(spec.good)
    duplicate = next(bad for bad in spec.bad if bad.fault == "duplicate_id")
    named = [e for e in read if isinstance(e, UnreadableEpisode) and "duplicate episode: same id" in str(e.error)]
    assert len(named) == 1 and duplicate.words in str(named[0].error) and named[0].episode_id.endswith(" (duplicate)")


def test_follow_symlinks_reads_the_video_outside_the_root_but_never_a_loop(hostile):
    root, spec = hostile
    reader = get_source("lerobot")(root, follow_symlinks=True)
    refs = refs_by_relpath(reader)
    linked = next(bad for bad in spec.bad if bad.fault == "symlink_out")
    assert load_and_decode(reader, refs[linked.relpath]).num_frames == 8
    for loop in [bad for bad in spec.bad if bad.fault == "symlink_loop"]:
        with pytest.raises(EpisodeError, match="symlink loop"):
            reader.load(refs[loop.relpath])


# --- meta/info.json wrong for the whole dataset -----------------------------------------------------

def edit_info(root, **changes):
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "video_fps":
            for feature in info["features"].values():
                if feature["dtype"] == "video":
                    feature["info"]["video.fps"] = value
        else:
            info[key] = value
    path.write_text(json.dumps(info))


def every_load_error(root, relpaths=None) -> list[str]:
    reader = get_source("lerobot")(root)
    problems = []
    for ref in reader.discover():
        if relpaths is not None and ref.relpath not in relpaths:
            continue
        with pytest.raises(EpisodeError) as caught:
            reader.load(ref)
        problems.append(str(caught.value))
    assert problems
    return problems


@pytest.mark.parametrize("key, template", [
    ("data_path", "../elsewhere/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"),
    ("data_path", "/srv/other/episode_{episode_index:06d}.parquet"),
    ("video_path", "../../videos/{video_key}/episode_{episode_index:06d}.mp4"),
])
def test_v2_templates_leaving_the_root_fail_every_episode(tmp_path, key, template):
    fixtures.build_v2(tmp_path / "dataset", "v2.0")
    edit_info(tmp_path / "dataset", **{key: template})
    for message in every_load_error(tmp_path / "dataset"):
        assert "leaves the dataset root" in message and "\n" not in message


def test_v3_template_leaving_the_root_fails_every_episode(tmp_path):
    spec = fixtures.build(tmp_path / "dataset")
    edit_info(tmp_path / "dataset", data_path="../data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet")
    for message in every_load_error(tmp_path / "dataset", set(spec.expected)):
        assert "leaves the dataset root" in message


@pytest.mark.parametrize("fps, words", [(0, "fps 0 is implausible"), (1e9, "fps 1e+09 is implausible"),
                                        (0.001, "fps 0.001 is implausible")])
@pytest.mark.parametrize("version", ["v2.0", "v3.0"])
def test_implausible_fps_fails_every_episode_without_crashing(tmp_path, version, fps, words):
    root = tmp_path / "dataset"
    spec = fixtures.build_v2(root, "v2.0") if version == "v2.0" else fixtures.build(root)
    edit_info(root, fps=fps, video_fps=fps)  # the v3 reader places episodes in the mp4 by frame rate
    for message in every_load_error(root, set(spec.expected)):
        assert words in message and "\n" not in message


def test_missing_episodes_jsonl_is_a_source_error_naming_it(tmp_path):
    fixtures.build_v2(tmp_path, "v2.0")
    (tmp_path / "meta/episodes.jsonl").unlink()
    with pytest.raises(SourceError, match="episodes.jsonl"):
        next(get_source("lerobot")(tmp_path).discover())


@pytest.mark.parametrize("kept_lines", [0, 2])
def test_episodes_jsonl_cut_at_a_line_boundary_is_reported_not_built_in_part(tmp_path, kept_lines):
    fixtures.build_v2(tmp_path, "v2.1")
    path = tmp_path / "meta/episodes.jsonl"
    total = len(path.read_text().splitlines())
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:kept_lines]))
    refs = list(get_source("lerobot")(tmp_path).discover())
    assert [ref.error for ref in refs[:kept_lines]] == [None] * kept_lines
    (unlisted,) = refs[kept_lines:]
    assert unlisted.relpath == "meta/episodes.jsonl:unlisted"
    assert unlisted.error == (f"meta/info.json counts {total} episodes (total_episodes) but meta/episodes.jsonl lists "
                              f"{kept_lines}: {total - kept_lines} missing (a download cut short?)")
    with pytest.raises(EpisodeError, match="total_episodes"):
        get_source("lerobot")(tmp_path).load(unlisted)


def test_a_missing_v3_episode_metadata_shard_is_reported(tmp_path):
    import pyarrow.parquet as pq

    fixtures.build(tmp_path)
    meta = tmp_path / "meta/episodes/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(meta).slice(0, 2), meta)  # episode 2's rows were in a shard that never arrived
    refs = list(get_source("lerobot")(tmp_path).discover())
    assert [ref.relpath for ref in refs] == ["episodes/000000", "episodes/000001", "meta/episodes:unlisted"]
    assert "counts 3 episodes (total_episodes) but meta/episodes lists 2: 1 missing" in refs[-1].error


def test_v3_without_episode_metadata_is_a_source_error(tmp_path):
    fixtures.build(tmp_path)
    (tmp_path / "meta/episodes/chunk-000/file-000.parquet").unlink()
    with pytest.raises(SourceError, match="meta/episodes"):
        next(get_source("lerobot")(tmp_path).discover())


@pytest.mark.parametrize("content, words", [
    ("{not json", "line 1: invalid JSON (Expecting property name enclosed in double quotes)"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"codebase_version": "v2.1", "fps": "thirty", "features": {}}), "'fps' must be a number"),
    (json.dumps({"codebase_version": "v2.1", "fps": 30, "features": {}, "chunks_size": 0}), "chunks_size"),
    (json.dumps({"codebase_version": "v2.1", "fps": 30, "features": {},
                 "data_path": "data/{chunk_index:03d}.parquet"}), "not a usable path template"),
])
def test_unusable_info_json_is_a_source_error_naming_it(tmp_path, content, words):
    fixtures.build_v2(tmp_path, "v2.0")
    (tmp_path / "meta/info.json").write_text(content)
    with pytest.raises(SourceError) as caught:
        next(get_source("lerobot")(tmp_path).discover())
    assert words in str(caught.value) and "info.json" in str(caught.value)


@pytest.mark.parametrize("version, linked", [("v2.0", "meta/info.json"), ("v2.0", "meta/episodes.jsonl"),
                                             ("v3.0", "meta/episodes")])
def test_metadata_linked_from_outside_the_root_is_refused_unless_allowed(tmp_path, version, linked):
    root = tmp_path / "dataset"
    fixtures.build_v2(root, "v2.0") if version == "v2.0" else fixtures.build(root)
    outside = tmp_path / "elsewhere" / linked
    outside.parent.mkdir(parents=True)
    (root / linked).rename(outside)
    (root / linked).symlink_to(outside)
    with pytest.raises(SourceError, match=rf"{linked}: resolves to .*outside the dataset root"):
        next(get_source("lerobot")(root).discover())
    assert next(get_source("lerobot")(root, follow_symlinks=True).discover()).episode_id


@pytest.mark.parametrize("version", ["v2.0", "v3.0"])
@pytest.mark.parametrize("depth_feature", [
    {"dtype": "video", "shape": [48, 64, 3], "info": {"video.is_depth_map": True, "video.codec": "hevc"}},
    {"dtype": "image", "shape": [48, 64, 1]},  # depth in metres as a one-channel image, as AgiBot's converter writes
])
def test_a_depth_feature_is_not_a_camera(tmp_path, version, depth_feature):
    root = tmp_path / "dataset"
    fixtures.build_v2(root, "v2.0") if version == "v2.0" else fixtures.build(root)
    cameras = list(get_source("lerobot")(root).load(next(get_source("lerobot")(root).discover())).cameras)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.images.depth"] = depth_feature  # its files are absent: reading it would fail
    (root / "meta/info.json").write_text(json.dumps(info))
    reader = get_source("lerobot")(root)
    episode = reader.load(next(reader.discover()))
    assert list(episode.cameras) == cameras and "observation.images.depth" not in cameras


def _rewrite_jsonl(path, edit) -> None:
    """Each line of a JSON-lines file through `edit(number, line) -> line` (1-based line numbers)."""
    lines = path.read_text().splitlines()
    path.write_text("".join(edit(number, line) + "\n" for number, line in enumerate(lines, 1)))


def test_a_bad_tasks_jsonl_line_fails_only_the_episodes_whose_task_it_gives(tmp_path):
    """One torn line of meta/tasks.jsonl used to fail every episode taking its task from there (and the file was read
    again for each one)."""
    fixtures.build_v2(tmp_path, "v2.0")  # episode i has task_index i % 2
    _rewrite_jsonl(tmp_path / "meta/episodes.jsonl", lambda _, line: json.dumps({**json.loads(line), "tasks": []}))
    _rewrite_jsonl(tmp_path / "meta/tasks.jsonl", lambda number, line: '{"task_index": 1, "task": "op' if number == 2 else line)
    reader = get_source("lerobot")(tmp_path)
    first, second = list(reader.discover())
    assert reader.load(first).instructions == [fixtures.TASKS[0]]
    with pytest.raises(EpisodeError) as caught:
        reader.load(second)
    assert str(caught.value).startswith(f"{tmp_path / 'meta/tasks.jsonl'}: line 2 is not JSON (")
    assert str(caught.value).endswith("and no other line gives the episode's task_index 1")


@pytest.mark.parametrize("line, words", [
    ('{"episode_index": ' + "9" * 5000 + "}", "line 1 is not JSON (ValueError: Exceeds the limit"),
    ("[" * 100_000, "line 1 is not JSON (RecursionError: "),
])
def test_a_line_json_refuses_beyond_its_grammar_is_one_unreadable_episode(tmp_path, line, words):
    """Lines that json.loads refuses with other errors than JSONDecodeError used to end discovery (exit 1)."""
    fixtures.build_v2(tmp_path, "v2.0")
    _rewrite_jsonl(tmp_path / "meta/episodes.jsonl", lambda number, kept: line if number == 1 else kept)
    refs = list(get_source("lerobot")(tmp_path).discover())
    assert refs[0].error.startswith(words) and "\n" not in refs[0].error
    assert len(refs) == 2 and refs[1].error is None


def test_ragged_list_rows_are_refused_not_slid_across_frames(tmp_path):
    """Rows of 3, 5, 4, 4... values flatten to as many values as rows of 4: they were reshaped into the wrong frames."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fixtures.build_v2(tmp_path, "v2.0")
    path = tmp_path / "data/chunk-000/episode_000000.parquet"
    table = pq.read_table(path)
    lengths = [3, 5] + [4] * (table.num_rows - 2)
    ragged = pa.array([[float(i)] * n for i, n in enumerate(lengths)], pa.list_(pa.float32()))
    pq.write_table(table.set_column(table.column_names.index("action"), "action", ragged), path)
    (message,) = every_load_error(tmp_path, {"data/chunk-000/episode_000000.parquet"})
    assert message == f"{path}: 'action' rows have different lengths"


@pytest.mark.parametrize("version", ["v2.0", "v3.0"])
@pytest.mark.parametrize("at_another_rate", ["video", "rows"])
def test_a_video_or_rows_at_another_rate_than_declared_are_refused(tmp_path, version, at_another_rate):
    """Frames are paired with rows by index: a 10 fps video read as 30 fps data played three times slow, unsaid.
    Rows whose timestamps run at 10 fps in a dataset declared at 30 are refused alike."""
    import pyarrow.parquet as pq

    root = tmp_path / "dataset"
    spec = fixtures.build_v2(root, "v2.0") if version == "v2.0" else fixtures.build(root)
    edit_info(root, fps=3 * fixtures.FPS, video_fps=3 * fixtures.FPS)
    if at_another_rate == "video":  # the rows' timestamps at the declared rate: only the video contradicts it
        for path in (root / "data").rglob("*.parquet"):
            table = pq.read_table(path)
            _set_timestamps(path, table.column("frame_index").to_numpy() / (3 * fixtures.FPS))
        words = f"video runs at {fixtures.FPS} fps, meta/info.json declares {3 * fixtures.FPS} fps for 'observation.images."
    else:
        words = f"rows are 0.1 s apart ({fixtures.FPS} fps), meta/info.json declares {3 * fixtures.FPS} fps"
    for message in every_load_error(root, set(spec.expected)):
        assert words in message, message


def test_two_features_naming_one_camera_are_a_source_error(tmp_path):
    """`observation.images.top` and `observation.top` are both camera 'top': one silently took the other's place."""
    fixtures.build_v2(tmp_path, "v2.0")
    info = json.loads((tmp_path / "meta/info.json").read_text())
    info["features"]["observation.top"] = info["features"]["observation.images.top"]
    (tmp_path / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(SourceError, match="features 'observation.images.top' and 'observation.top' both name camera 'top'"):
        next(get_source("lerobot")(tmp_path).discover())


def test_a_duplicated_entry_does_not_hide_a_missing_one(tmp_path):
    """Episode 1's line overwritten by a copy of episode 0's: the lines still numbered total_episodes, so episode 1,
    whose files are there, was neither read nor named."""
    fixtures.build_v2(tmp_path, "v2.0")
    _rewrite_jsonl(tmp_path / "meta/episodes.jsonl", lambda number, line: '{"episode_index": 0, "tasks": [], "length": 8}'
                   if number == 2 else line)
    refs = list(get_source("lerobot")(tmp_path).discover())
    assert refs[-1].relpath == "meta/episodes.jsonl:unlisted" and "lists 1: 1 missing" in refs[-1].error


def test_a_byte_order_mark_and_a_task_that_is_no_text(tmp_path):
    """A BOM (a file saved by a Windows editor) lost episode 0, or the whole dataset in info.json; a null task became
    the instruction 'None'."""
    fixtures.build_v2(tmp_path, "v2.0")
    _rewrite_jsonl(tmp_path / "meta/episodes.jsonl", lambda _, line: json.dumps({**json.loads(line), "tasks": []}))
    _rewrite_jsonl(tmp_path / "meta/tasks.jsonl", lambda number, line: '{"task_index": 1, "task": null}' if number == 2 else line)
    for name in ("info.json", "episodes.jsonl"):
        path = tmp_path / "meta" / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    reader = get_source("lerobot")(tmp_path)
    first, second = list(reader.discover())
    assert first.error is None and reader.load(first).instructions == [fixtures.TASKS[0]]
    with pytest.raises(EpisodeError, match="line 2 has no integer 'task_index' and text 'task', and no other line gives"):
        reader.load(second)


def _set_timestamps(path, times, dtype=np.float32) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    column = table.column_names.index("timestamp")
    pq.write_table(table.set_column(column, "timestamp", pa.array(np.asarray(times, dtype))), path)


def test_rows_starting_after_the_video_are_read_from_their_timestamp(tmp_path):
    """LeRobot finds a row's frame at its timestamp: an episode whose rows start 0.2 s into its mp4 (frames before
    them kept) was read from the mp4's first frame, every row two frames early."""
    from tests.fixtures.media import moving_square_frames
    from pyramid.video_io import write_video

    fixtures.build_v2(tmp_path, "v2.0")
    length, lead = 8, 2
    frames = moving_square_frames(length, fixtures.HEIGHT, fixtures.WIDTH, seed=0)
    earlier = moving_square_frames(lead, fixtures.HEIGHT, fixtures.WIDTH, seed=7)
    for camera in ("top", "wrist"):
        write_video(tmp_path / f"videos/chunk-000/observation.images.{camera}/episode_000000.mp4",
                    np.concatenate([earlier, frames]), fps=fixtures.FPS)
    _set_timestamps(tmp_path / "data/chunk-000/episode_000000.parquet", (np.arange(length) + lead) / fixtures.FPS)
    reader = get_source("lerobot")(tmp_path)
    episode = reader.load(next(reader.discover()))
    assert episode.cameras["top"].frame_offset == lead and episode.num_frames == length
    read = episode.frames("top").astype(int)
    two_early = np.concatenate([earlier, frames])[:length]
    assert np.abs(read - frames).mean() < np.abs(read - two_early).mean() / 3


@pytest.mark.parametrize("times, words", [
    (1.7e9 + np.arange(8) / fixtures.FPS, "video has 8 frames, episode needs 17000000008 (its rows start at 1.7e+09 s)"),
    ([0, 0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6], "row 3's timestamp 0.2 s is frame 2 of the episode (dropped or repeated"),
    ([0, 0.1, np.nan, 0.3, 0.4, 0.5, 0.6, 0.7], "'timestamp' of row 2 is nan, not a time in seconds"),
])
def test_timestamps_that_no_frame_matches_are_refused(tmp_path, times, words):
    """Seconds since the epoch and a repeated row: LeRobot's own loader finds no frame for them (or another one)."""
    fixtures.build_v2(tmp_path, "v2.0")
    path = tmp_path / "data/chunk-000/episode_000000.parquet"
    _set_timestamps(path, times, np.float64)  # as a port may write them: float32 would round 1.7e9 s to 128 s steps
    (message,) = every_load_error(tmp_path, {"data/chunk-000/episode_000000.parquet"})
    assert words in message and "\n" not in message


@pytest.mark.parametrize("version", ["v2.0", "v3.0"])
@pytest.mark.parametrize("tasks_file", ["lacks_the_task", "missing"])
def test_a_task_index_no_task_gives_is_refused_not_left_without_instruction(tmp_path, version, tasks_file):
    """An episode whose metadata lists no task and whose rows' task_index the tasks table does not give was built with
    no instruction, without a word."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = tmp_path / "dataset"
    if version == "v2.0":
        fixtures.build_v2(root, version)  # episode i has task_index i % 2
        _rewrite_jsonl(root / "meta/episodes.jsonl", lambda _, line: json.dumps({**json.loads(line), "tasks": []}))
        tasks = root / "meta/tasks.jsonl"
        _rewrite_jsonl(tasks, lambda number, line: "" if number == 2 else line)
    else:
        fixtures.build(root)
        (meta,) = (root / "meta/episodes").rglob("*.parquet")
        table = pq.read_table(meta)
        empty = pc.list_slice(table.column("tasks"), 0, 0)
        pq.write_table(table.set_column(table.column_names.index("tasks"), "tasks", empty), meta)
        tasks = root / "meta/tasks.parquet"
        table = pq.read_table(tasks)
        pq.write_table(table.filter(pc.not_equal(table.column("task_index"), 1)), tasks)
    if tasks_file == "missing":
        tasks.unlink()
    reader = get_source("lerobot")(root)
    first, second = list(reader.discover())[:2]
    if tasks_file == "lacks_the_task":
        assert reader.load(first).instructions == [fixtures.TASKS[0]]
    with pytest.raises(EpisodeError) as caught:
        reader.load(second)
    state = "gives no task" if tasks_file == "lacks_the_task" else "is missing, so there is no task"
    assert str(caught.value) == (f"{tasks}: {state} for task_index 1 of episode 1's rows, and its metadata lists none")
