"""`pyramid inspect`: one JSON line per episode with exactly the documented keys; errors don't stop the listing."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pyramid.cli import app
from pyramid.sources import SOURCES
from tests.fixtures import builder

KEYS = ["episode_id", "source", "embodiment", "level", "task", "fps", "num_frames", "cameras", "state_dim", "action_dim", "camera_sizes"]
runner = CliRunner()


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_inspect_json_lists_every_episode_and_reports_corrupt_ones(kind, tmp_path):
    spec = builder(kind)(tmp_path)
    result = runner.invoke(app, ["inspect", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    good = [row for row in rows if "error" not in row]
    bad = [row for row in rows if "error" in row]
    reader = SOURCES[kind](tmp_path)
    ids = {ref.relpath: ref.episode_id for ref in reader.discover()}
    assert len(rows) == len(spec.expected) + len(spec.corrupt)
    assert {ids[relpath] for relpath in spec.expected} <= {row["episode_id"] for row in good}
    # inspect reads metadata, not pixels: an undecodable image only shows when frames are decoded
    assert {row["episode_id"] for row in bad} <= {ids[relpath] for relpath in spec.corrupt}
    assert bool(bad) == bool(spec.corrupt)
    for row in good:
        assert list(row) == KEYS
        assert row["source"] == kind
        assert list(row["camera_sizes"]) == row["cameras"]
        assert all(size is None or (len(size) == 2 and min(size) > 0) for size in row["camera_sizes"].values())
    for row in bad:
        assert set(row) == {"episode_id", "error"} and ": " in row["error"] and "\n" not in row["error"]


def test_inspect_takes_the_kind_and_prints_a_table(tmp_path):
    builder("videos")(tmp_path)
    result = runner.invoke(app, ["inspect", str(tmp_path), "--source", "videos"])
    assert result.exit_code == 0
    assert "ERROR" in result.stdout and "fps" in result.stdout


@pytest.mark.parametrize("args", [["/nonexistent/root"], ["{tmp}", "--source", "nope"], ["{tmp}"]])
def test_unusable_root_exits_non_zero_with_one_line(args, tmp_path):
    result = runner.invoke(app, ["inspect", *[a.format(tmp=tmp_path) for a in args]])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")


@pytest.mark.parametrize("args, words", [(["build", "--workers", "abc", "x.yaml"], "pyramid build: Invalid value for '--workers'"),
                                         (["sample-data", "out", "--episodes", "0"], "pyramid sample-data: Invalid value for '--episodes'"),
                                         (["nosuch"], "pyramid: No such command 'nosuch'")])
def test_a_usage_error_is_one_line_and_exit_code_2(args, words):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pyramid", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {words}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout
    command = [] if args[0] == "nosuch" else args[:1]
    help_text = subprocess.run([sys.executable, "-m", "pyramid", *command, "--help"], capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0 and "Usage:" in help_text.stdout


def test_a_root_with_no_readable_episode_lists_them_and_exits_1(tmp_path):
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"not a video at all" * 64)
    result = runner.invoke(app, ["inspect", str(tmp_path), "--source", "videos", "--json"])
    assert result.exit_code == 1, result.output
    assert [json.loads(line)["error"] for line in result.stdout.splitlines()] and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path}: none of the 2 videos episodes is readable"


@pytest.mark.parametrize("kind", ["videos", "egodex"])
def test_a_root_with_no_episode_at_all_exits_1(kind, tmp_path):
    """A root one folder off (or an empty download) listed nothing and exited 0, as if it were fine."""
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["inspect", str(tmp_path / "empty"), "--source", kind])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines()[-1] == (f"error: {tmp_path / 'empty'}: no {kind} episode found: "
                                                      "is it the dataset's root?")


def test_inspect_gives_each_camera_the_size_a_player_shows(tmp_path):
    from fractions import Fraction

    from tests.fixtures import videos
    from tests.fixtures.media import moving_square_frames

    videos.write_portrait_clip(tmp_path / "phone/upright.mp4", moving_square_frames(6, 96, 64))
    videos.write_anamorphic(tmp_path / "dv/take.mp4", moving_square_frames(6, 64, 120), Fraction(4, 3))
    result = runner.invoke(app, ["inspect", str(tmp_path), "--source", "videos", "--json"])
    sizes = {row["episode_id"]: row["camera_sizes"] for row in map(json.loads, result.stdout.splitlines())}
    ids = {ref.relpath: ref.episode_id for ref in SOURCES["videos"](tmp_path).discover()}
    assert sizes == {ids["phone/upright.mp4"]: {"video": [96, 64]}, ids["dv/take.mp4"]: {"video": [64, 120]}}, result.output
    table = runner.invoke(app, ["inspect", str(tmp_path), "--source", "videos"])
    assert "cameras=video 96x64" in table.stdout and "cameras=video 64x120" in table.stdout
