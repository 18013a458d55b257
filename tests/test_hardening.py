"""What a user meets on bad input outside the readers: ids on deep paths, episode checks, CLI errors,
preflight before Ray, stale outputs of another recipe, --retry-failed on a finished build, unsafe export keys."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import lance
import numpy as np
import pytest
import yaml

from pyramid.episode import Episode, VideoCamera, make_episode_id
from pyramid.errors import EpisodeError
from pyramid.sinks.lance_sink import written_by
from pyramid.validate import check_episode
from tests.fixtures import builder

CLI = [sys.executable, "-m", "pyramid"]
ROBOMIND_PATH = "benchmark1_0_release/h5_agilex_3rgb/10_packplate/success_episodes/train/1014_155232/data/trajectory.hdf5"


def run(*args: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_ids_of_the_deepest_release_paths_are_bounded_readable_and_distinct():
    first = make_episode_id("robomind", ROBOMIND_PATH)
    second = make_episode_id("robomind", ROBOMIND_PATH.replace("h5_agilex_3rgb", "h5_franka_3rgb"))
    assert first != second and len(first) <= 90 and len(second) <= 90
    assert "1014_155232_data_trajectory_hdf5" in first
    assert all(ch.isalnum() or ch in "_-" for ch in first)
    assert len(make_episode_id("robomind", ROBOMIND_PATH, "a_dataset_folder_named_at_length")) <= 110


def test_two_datasets_of_one_kind_give_their_first_episodes_different_ids(tmp_path):
    from pyramid.sources import open_source

    ids = []
    for name in ("lab_a", "lab_b"):
        builder("lerobot")(tmp_path / name)
        ids.append([ref.episode_id for ref in open_source(tmp_path / name, "lerobot").discover()])
    assert ids[0][0].startswith("lerobot-lab_a-") and ids[1][0].startswith("lerobot-lab_b-")
    assert not set(ids[0]) & set(ids[1])
    moved = tmp_path / "elsewhere" / "lab_a"
    shutil.copytree(tmp_path / "lab_a", moved)
    assert [ref.episode_id for ref in open_source(moved, "lerobot").discover()] == ids[0]  # the folder name, not the path


def _episode(**changes) -> Episode:
    fields = dict(episode_id="e", source="videos", embodiment="arm", level=5, instructions=[], fps=30.0, num_frames=4,
                  cameras={"cam": VideoCamera("cam", "/x.mp4", 4, 8, 8, 30.0)}, state=np.zeros((4, 2)), path="/data/ep.hdf5")
    return Episode(**{**fields, **changes})


@pytest.mark.parametrize("changes, words", [
    ({"actions": np.array([[0.0], [1.0], [np.nan], [0.0]])}, "actions holds a non-finite value (nan) at frame 2"),
    ({"state": np.array([[0.0, 0.0], [0.0, np.inf], [0.0, 0.0], [0.0, 0.0]])}, "state holds a non-finite value (inf) at frame 1"),
    ({"metadata": {"intrinsics": [[1.0, np.nan], [0.0, 1.0]]}}, "metadata.intrinsics holds a non-finite value"),
    ({"fps": 1e9}, "fps 1e+09 is implausible (expected 1-1000)"),
    ({"fps": 0.0}, "fps 0 is implausible"),
    ({"fps": 0.001}, "fps 0.001 is implausible"),
    ({"num_frames": 0, "state": None}, "episode has no frames"),
    ({"state": np.zeros((3, 2))}, "state has 3 rows, the episode 4 frames"),
    ({"num_frames": 5, "state": np.zeros((5, 2))}, "camera 'cam' has 4 frames, the episode 5"),
])
def test_every_episode_is_checked_whatever_its_reader(changes, words):
    with pytest.raises(EpisodeError) as caught:
        check_episode(_episode(**changes))
    assert str(caught.value).startswith("/data/ep.hdf5: ") and words in str(caught.value)


def test_a_plausible_episode_passes():
    assert check_episode(_episode(actions=np.ones((4, 3)))).num_frames == 4


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    builder("videos")(root)
    return root


def write_recipe(path: Path, roots: list[Path], output: Path, **extra) -> Path:
    recipe = {"sources": [{"kind": "videos", "root": str(root)} for root in roots], "output": str(output),
              "video_size": [64, 96], "fps": 10, "clip_frames": 4, "shard_size_mb": 0.05, "max_failed_fraction": 0.6,
              "filters": {"min_frames": 3, "static_motion_threshold": 0.0}, **extra}
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, videos):
    assert "cannot read recipe" in one_error_line(result := run("build", str(tmp_path / "none.yaml")))
    assert result.returncode == 2
    (tmp_path / "bad.yaml").write_text("sources: [}")
    assert run("build", str(tmp_path / "bad.yaml")).returncode == 2
    result = run("inspect", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "not a directory" in one_error_line(result)
    result = run("export-motus", str(tmp_path), str(tmp_path / "export"))
    assert result.returncode == 2 and "no WebDataset shards" in one_error_line(result)


@pytest.mark.parametrize("manifest, problem", [("{garb", "unreadable (JSONDecodeError)"),
                                               ("[1]", "not a build manifest"), ('{"recipe": 3}', "not a build manifest")])
def test_an_export_of_a_damaged_manifest_names_it(tmp_path, manifest, problem):
    build = tmp_path / "build"
    (build / "webdataset" / "level1").mkdir(parents=True)
    (build / "webdataset" / "level1" / "shard-000000.tar").write_bytes(b"")
    (build / "manifest.json").write_text(manifest)
    result = run("export-lerobot", str(build), str(tmp_path / "export"))
    line = one_error_line(result)
    assert result.returncode == 2 and f"{build / 'manifest.json'}: {problem}" in line
    assert not (tmp_path / "export").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = run("--debug", "build", str(tmp_path / "none.yaml"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_a_missing_source_root_fails_before_ray_starts_and_creates_nothing(tmp_path, videos):
    recipe = write_recipe(tmp_path / "r.yaml", [videos, tmp_path / "missing"], tmp_path / "out")
    started = time.perf_counter()
    result = run("build", str(recipe), "--quiet")
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"{tmp_path / 'missing'}: not a directory" in line and "shared filesystem" not in line
    assert time.perf_counter() - started < 20, "the check must not wait for Ray"
    assert not (tmp_path / "out").exists()
    (tmp_path / "a_file").write_text("")
    result = run("build", str(write_recipe(tmp_path / "f.yaml", [tmp_path / "a_file"], tmp_path / "out")), "--quiet")
    assert result.returncode == 2 and "a_file: not a directory" in one_error_line(result)


def test_a_source_with_no_episode_fails_before_ray_starts_and_creates_nothing(tmp_path, videos):
    """A root one folder off (or an empty download) built "0 built, 0 quarantined" with exit 0, a success."""
    (tmp_path / "empty").mkdir()
    recipe = write_recipe(tmp_path / "r.yaml", [videos, tmp_path / "empty"], tmp_path / "out")
    result = run("build", str(recipe), "--quiet")
    assert result.returncode == 2 and one_error_line(result) == (
        f"error: source 'videos' at {tmp_path / 'empty'}: no episode found: is it the dataset's root?")
    assert not (tmp_path / "out").exists()


def test_workers_that_cannot_start_stop_the_build_in_one_line_naming_why(tmp_path, videos):
    """A stage that fails in its constructor (here learned flow without weights) is no episode's fault: the build
    stops and says why, instead of quarantining every episode as 'worker died'."""
    recipe = write_recipe(tmp_path / "r.yaml", [videos], tmp_path / "out", flow={"backend": "ptlflow:dpflow"})
    result = run("build", str(recipe), "--quiet")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: a build worker could not start: CheckpointError: ptlflow:dpflow: no checkpoint given"), last
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_an_output_under_a_regular_file_is_one_line(tmp_path, videos):
    (tmp_path / "blocker").write_text("")
    result = run("build", str(write_recipe(tmp_path / "r.yaml", [videos], tmp_path / "blocker" / "out")), "--quiet")
    assert result.returncode == 2 and "is a file" in one_error_line(result)


def test_a_read_only_output_is_one_line(tmp_path, videos):
    output = tmp_path / "readonly"
    output.mkdir()
    output.chmod(0o555)
    read_only = not _writable(output) or subprocess.run(["chattr", "+i", str(output)], capture_output=True).returncode == 0
    try:
        if _writable(output) or not read_only:
            pytest.skip("cannot make a folder read-only for this user (root without chattr)")
        result = run("build", str(write_recipe(tmp_path / "r.yaml", [videos], output)), "--quiet")
        assert result.returncode == 2 and "cannot write the output here" in one_error_line(result)
    finally:
        subprocess.run(["chattr", "-i", str(output)], capture_output=True)
        output.chmod(0o755)


def _writable(folder: Path) -> bool:
    try:
        (folder / "probe").write_text("")
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


def test_another_recipes_outputs_are_rebuilt_not_kept(tmp_path, videos):
    """After an interrupted build, deleting _staging and building another recipe into the same output."""
    output = tmp_path / "out"
    first = run("build", str(write_recipe(tmp_path / "a.yaml", [videos], output, clip_frames=3)), "--quiet", "--workers", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    first_keys = _shard_keys(output)
    (output / "manifest.json").unlink()  # as if killed before the manifest; the user then deletes _staging too
    (output / ".manifest.tmp99999999.json").write_text('{"cut')  # ... while writing it
    second = run("build", str(write_recipe(tmp_path / "b.yaml", [videos], output, clip_frames=4)), "--quiet", "--workers", "1")
    assert second.returncode == 0, second.stderr[-2000:]
    manifest = json.loads((output / "manifest.json").read_text())
    assert not (output / ".manifest.tmp99999999.json").exists()
    keys = _shard_keys(output)
    assert keys != first_keys and len(keys) == sum(row["clips"] for row in manifest["by_source"].values())
    clips = lance.dataset(str(output / "clips.lance"))
    assert sorted(clips.to_table(columns=["key"]).column("key").to_pylist()) == sorted(keys)
    assert written_by(output / "clips.lance") == written_by(output / "flow.lance") == manifest["recipe_fingerprint"]
    flow_ids = set(lance.dataset(str(output / "flow.lance")).to_table(columns=["episode_id"]).column("episode_id").to_pylist())
    assert flow_ids == {key.rsplit("_c", 1)[0] for key in keys}


def _shard_keys(output: Path) -> list[str]:
    keys = []
    for shard in sorted(output.glob("webdataset/level*/shard-*.tar")):
        with tarfile.open(shard) as tar:
            keys += [m.name.partition(".")[0] for m in tar if m.name.endswith(".json")]
    return keys


def test_retry_failed_on_a_finished_build_says_why_it_cannot(tmp_path, videos):
    recipe = write_recipe(tmp_path / "r.yaml", [videos], tmp_path / "out")
    assert run("build", str(recipe), "--quiet", "--workers", "1").returncode == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["episodes"]["failed"] >= 1  # the fixture's broken.mp4
    result = run("build", str(recipe), "--quiet", "--retry-failed")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "--retry-failed works on an unfinished build" in line and "quarantined" in line


def test_a_pylance_too_old_for_the_lance_format_is_refused_before_writing(monkeypatch):
    from pyramid import schema
    from pyramid.errors import BuildError

    schema.check_pylance()  # the installed one is new enough
    monkeypatch.setattr(schema, "MIN_PYLANCE", "999.0")
    with pytest.raises(BuildError, match=r"pylance .* is older than 999.0, which a build's Lance datasets need: pip install 'pylance>=999.0'"):
        schema.check_pylance()


def test_ctrl_c_is_one_line_an_exit_code_and_no_temporary(tmp_path):
    """typer turns a KeyboardInterrupt into exit code 130 without a word; the user is told, and the writer's
    temporary folder goes."""
    import signal

    out = tmp_path / "sample"
    # Python's Ctrl-C handler, as at a terminal: a test run started in the background inherits SIGINT ignored
    as_at_a_terminal = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                        "sys.argv = ['pyramid', *sys.argv[1:]]; runpy.run_module('pyramid', run_name='__main__')")
    process = subprocess.Popen([sys.executable, "-c", as_at_a_terminal, "sample-data", str(out), "--episodes", "400"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # seconds of writing to stop
    deadline = time.monotonic() + 300
    while not list(out.glob(".lerobot.tmp*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()  # stopped while writing, not after
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and stderr.strip().splitlines() == ["error: interrupted"], stderr
    assert sorted(path.name for path in out.iterdir()) == []
