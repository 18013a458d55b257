"""`pyramid build` end to end on real-format fixtures of several sources, with a real local Ray."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import lance
import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from safetensors.torch import save_file

from flow.storage import unpack
from pyramid.recipe import load_recipe
from pyramid.video_io import read_frames
from tests.fixtures import builder

CLI = [sys.executable, "-m", "pyramid"]


def make_recipe(tmp_path: Path, roots: dict[str, Path], output: str, **extra) -> Path:
    recipe = {
        "sources": [{"kind": kind, "root": str(root)} for kind, root in roots.items()],
        "output": output, "video_size": [64, 96], "fps": 10, "clip_frames": 4,
        "filters": {"min_frames": 3, "static_motion_threshold": 0.0}, "shard_size_mb": 0.05,
        "max_failed_fraction": 0.6, **extra,
    }
    path = tmp_path / f"{output}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    roots = {}
    for kind in ("videos", "agibot", "egodex"):
        roots[kind] = tmp_path_factory.mktemp(kind)
        builder(kind)(roots[kind])
    return roots


@pytest.fixture(scope="module")
def built(fixtures, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    recipe_path = make_recipe(tmp, fixtures, "out")
    result = subprocess.run([*CLI, "build", str(recipe_path), "--quiet", "--workers", "2"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (tmp / "build.stderr").write_text(result.stderr)
    return load_recipe(recipe_path), tmp / "out"


def read_shards(output: Path) -> dict[str, dict]:
    samples = {}
    for shard in sorted(output.glob("webdataset/level*/shard-*.tar")):
        for sample in wds.WebDataset(str(shard), shardshuffle=False):
            samples[sample["__key__"]] = sample
    return samples


def test_manifest_counts_sources_levels_and_quarantine(built):
    recipe, output = built
    manifest = json.loads((output / "manifest.json").read_text())
    assert set(manifest["by_source"]) == {"videos", "agibot", "egodex"}
    assert set(manifest["by_level"]) == {"level2", "level5"}
    assert manifest["episodes"]["failed"] == len(manifest["quarantined"]) > 0
    for item in manifest["quarantined"]:
        assert item["reason"] and "\n" not in item["reason"]
    assert "agibot_g1" in manifest["normalization"]
    stats = manifest["normalization"]["agibot_g1"]["actions"]
    assert len(stats["q01"]) == len(stats["q99"]) == 22 and stats["count"] > 0
    assert manifest["recipe"]["video_size"] == [64, 96]
    assert (output / "report.html").read_text().count("<img") >= 2
    assert not (output / "_staging").exists()


def test_shards_hold_every_clip_with_frames_matching_the_episode(built):
    recipe, output = built
    samples = read_shards(output)
    manifest = json.loads((output / "manifest.json").read_text())
    assert len(samples) == sum(row["clips"] for row in manifest["by_source"].values())
    from pyramid.sources import get_source

    for key, sample in samples.items():
        meta = json.loads(sample["json"])
        assert key == f"{meta['episode_id']}_c{meta['clip_index']:04d}"
        assert (meta["height"], meta["width"]) == (64, 96)
        if meta["has_actions"]:
            actions = np.load(io.BytesIO(sample["actions.npy"]))
            assert actions.shape[0] == meta["end_frame"] - meta["start_frame"] and actions.dtype == np.float32
    # decoded frames of one clip equal the source frames resized, up to compression
    key, sample = next((k, s) for k, s in sorted(samples.items()) if json.loads(s["json"])["source"] == "videos")
    meta = json.loads(sample["json"])
    clip = output / "clip.mp4"
    clip.write_bytes(sample["mp4"])
    frames = read_frames(clip)
    assert frames.shape == (meta["num_frames"], 64, 96, 3)
    spec = recipe.sources[[s.kind for s in recipe.sources].index("videos")]
    reader = get_source("videos")(spec.root)
    ref = next(r for r in reader.discover() if r.episode_id == meta["episode_id"])
    from pyramid.clips import resize_frames

    episode = reader.read(ref)
    source = resize_frames(episode.frames(), (64, 96)).astype(int)
    errors = [np.abs(frames[0].astype(int) - frame).mean() for frame in source]
    assert int(np.argmin(errors)) == meta["start_frame"] and errors[meta["start_frame"]] < 4, errors


def test_lance_datasets_match_the_shards(built):
    _, output = built
    samples = read_shards(output)
    clips = lance.dataset(str(output / "clips.lance"))
    assert clips.count_rows() == len(samples)
    table = clips.to_table(columns=["key", "episode_id", "level", "num_frames"]).to_pylist()
    assert {row["key"] for row in table} == set(samples)
    row = 1
    key = table[row]["key"]
    blob = clips.take([row], columns=["video"])["video"][0].as_py()
    assert blob == samples[key]["mp4"]
    flow = lance.dataset(str(output / "flow.lance"))
    pairs = flow.to_table(columns=["episode_id", "pair_index"]).to_pylist()
    assert len(pairs) > 0 and all(p["pair_index"] >= 0 for p in pairs)


def test_lance_datasets_open_in_duckdb_and_pandas_with_bytes_and_join_on_one_key(built):
    import duckdb

    _, output = built
    samples = read_shards(output)
    clips = lance.dataset(str(output / "clips.lance"))
    flow = lance.dataset(str(output / "flow.lance"))
    rows = duckdb.sql("SELECT * FROM clips").fetchall()
    names = [column[0] for column in duckdb.sql("SELECT * FROM clips LIMIT 0").description]
    by_key = {row[names.index("key")]: row for row in rows}
    assert set(by_key) == set(samples)
    for key, row in by_key.items():
        assert bytes(row[names.index("video")]) == samples[key]["mp4"]
    frame = clips.to_table().to_pandas()
    assert all(isinstance(video, bytes) and video == samples[key]["mp4"] for key, video in zip(frame["key"], frame["video"]))
    pairs = flow.to_table().to_pandas()
    assert all(unpack(blob).shape == (64, 96, 2) for blob in pairs["flow_npy_zst"])
    joined = duckdb.sql("SELECT clips.key, count(*) FROM clips JOIN flow ON flow.clip_key = clips.key GROUP BY clips.key").fetchall()
    assert {key: n for key, n in joined} == {key: json.loads(s["json"])["num_frames"] - 1 for key, s in samples.items()}


def test_shards_md_is_the_schema_the_writers_use(built):
    from pyramid import schema

    assert schema.documented(schema.SHARDS_MD.read_text()) == schema.markdown(), "run python -m pyramid.schema --write"
    _, output = built
    for sample in read_shards(output).values():
        assert set(json.loads(sample["json"])) == set(schema.CLIP_JSON)
    for name, expected in (("clips.lance", schema.CLIP_SCHEMA), ("flow.lance", schema.FLOW_SCHEMA)):
        written = lance.dataset(str(output / name))
        assert [(f.name, f.type) for f in written.schema] == [(f.name, f.type) for f in expected]
        assert written.data_storage_version == schema.LANCE_STORAGE_VERSION


def test_a_quiet_build_prints_no_log_lines_of_rays(built):
    _, output = built
    stderr = (output.parent / "build.stderr").read_text()
    assert "built," in stderr  # the summary
    ray_lines = [line for line in stderr.splitlines() if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+[A-Z]+ ", line)]
    assert not ray_lines, ray_lines


def test_rerunning_a_finished_build_does_nothing(built):
    _, output = built
    before = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}
    recipe_path = output.parent / "out.yaml"
    result = subprocess.run([*CLI, "build", str(recipe_path), "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "nothing to do" in result.stderr
    after = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}
    assert before == after


def test_killed_build_resumes_to_the_same_content(fixtures, built, tmp_path):
    _, reference = built
    recipe_path = make_recipe(tmp_path, fixtures, "resumed")
    output = tmp_path / "resumed"
    process = subprocess.Popen([*CLI, "build", str(recipe_path), "--quiet", "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len([p for p in (output / "_staging").glob("*.json") if p.name != "recipe.json"]) < 3:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (output / "manifest.json").exists(), "the build finished before it could be killed"
    result = subprocess.run([*CLI, "build", str(recipe_path), "--quiet", "--workers", "2"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in output.glob("webdataset/*/*")) == sorted(p.name for p in reference.glob("webdataset/*/*"))
    for shard in reference.glob("webdataset/*/*.tar"):
        twin = output / shard.relative_to(reference)
        assert _members(twin) == _members(shard), _debug_diff(twin, shard)
    assert not list(output.rglob("*.tmp*"))


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def _debug_diff(a, b):
    for (na, da), (nb, db) in zip(_members(a), _members(b)):
        if na != nb or da != db:
            return na, nb, len(da), len(db), da[:300], db[:300]


def test_too_many_failures_fail_the_build_but_keep_its_output(fixtures, tmp_path):
    recipe_path = make_recipe(tmp_path, {"videos": fixtures["videos"]}, "strict", max_failed_fraction=0.1, formats=["webdataset"])
    result = subprocess.run([*CLI, "build", str(recipe_path), "--quiet", "--workers", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert "25% of episodes failed (limit 10%)" in result.stderr
    manifest = json.loads((tmp_path / "strict" / "manifest.json").read_text())
    assert [q["path"].split("/")[-1] for q in manifest["quarantined"]] == ["broken.mp4"]
    assert manifest["outputs"]["lance"] == ["flow.lance"]  # flow.lance feeds VAE training whatever the formats
    assert list((tmp_path / "strict").glob("webdataset/level2/shard-*.tar"))


def test_two_sources_of_one_kind_keep_their_episodes_apart(fixtures, tmp_path):
    import shutil as sh

    roots = {}
    for name in ("site_a", "site_b"):
        roots[name] = tmp_path / name
        sh.copytree(fixtures["videos"], roots[name])
    recipe = {"sources": [{"kind": "videos", "root": str(root)} for root in roots.values()], "output": str(tmp_path / "twice"),
              "video_size": [64, 96], "fps": 10, "clip_frames": 4, "formats": ["webdataset"],
              "filters": {"min_frames": 3, "static_motion_threshold": 0.0}, "max_failed_fraction": 0.5}
    (tmp_path / "twice.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run([*CLI, "build", str(tmp_path / "twice.yaml"), "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "twice" / "manifest.json").read_text())
    assert manifest["episodes"]["ok"] == 2 * 3 and manifest["episodes"]["failed"] == 2
    samples = read_shards(tmp_path / "twice")
    assert len(samples) == manifest["by_source"]["videos"]["clips"]
    assert len({json.loads(s["json"])["episode_id"] for s in samples.values()}) == 6


def test_two_sources_of_one_kind_in_folders_of_one_name_are_refused_before_ray_starts(fixtures, tmp_path):
    import shutil as sh

    twin = tmp_path / "elsewhere" / fixtures["videos"].name
    sh.copytree(fixtures["videos"], twin)
    for second, words in [(twin, f"are both 'videos' in folders named '{twin.name}': their episode ids would collide"),
                          (fixtures["videos"], "is listed twice")]:
        recipe = {"sources": [{"kind": "videos", "root": str(root)} for root in (fixtures["videos"], second)],
                  "output": str(tmp_path / "out"), "formats": ["webdataset"]}
        (tmp_path / "twice.yaml").write_text(yaml.safe_dump(recipe))
        result = subprocess.run([*CLI, "build", str(tmp_path / "twice.yaml"), "--quiet"], capture_output=True, text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and words in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_a_build_refuses_before_ray_starts_what_would_hang_or_write_into_a_source(fixtures, tmp_path):
    videos = fixtures["videos"]
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"foo": 1}')
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"))
    shutil.copytree(tmp_path / "vae", tmp_path / "torn")
    (tmp_path / "torn" / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 64)
    cases = [
        ({"output": str(videos / "pyramid")}, [], f"{videos / 'pyramid'}: the output overlaps the input {videos}"),
        ({"output": str(videos.parent)}, [], "the output overlaps the input"),
        ({}, ["--workers", "0"], "--workers: a build needs at least 1 worker per stage, got 0"),
        ({}, ["--address", "127.0.0.1:9"], "--address 127.0.0.1:9: no Ray answers there"),
        ({"vae": str(tmp_path / "vae")}, [], f"{tmp_path / 'vae' / 'config.json'}: not a latent-action VAE's config (AttributeError"),
        ({"vae": str(tmp_path / "torn")}, [], "diffusion_pytorch_model.safetensors: not a readable safetensors file ("),
    ]
    before = sorted(videos.rglob("*"))
    for changes, options, words in cases:
        recipe = {"sources": [{"kind": "videos", "root": str(videos)}], "output": str(tmp_path / "out"),
                  "video_size": [64, 96], "formats": ["webdataset"], **changes}
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        result = subprocess.run([*CLI, "build", str(tmp_path / "recipe.yaml"), "--quiet", *options], capture_output=True,
                                text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and lines[-1].startswith("error: ") and words in lines[-1], result.stderr
        assert len(lines) == 1, result.stderr
    assert sorted(videos.rglob("*")) == before and not (tmp_path / "out").exists()


def test_an_episode_that_kills_its_worker_is_quarantined_and_the_build_goes_on(fixtures, tmp_path):
    import shutil as sh

    from tests.fixtures.crashing_source import KIND

    root = tmp_path / "clips"
    sh.copytree(fixtures["videos"], root)
    victim = next(path for path in sorted(root.rglob("*.mp4")) if path.name != "broken.mp4")
    (root / "a_first").mkdir()
    victim.rename(root / "a_first" / "crash_me.mp4")  # first in discovery order: the rest of the window is unfinished
    for index in range(8):
        sh.copy(root / "kitchen/clip_h264.mp4", root / "kitchen" / f"more_{index}.mp4")
    recipe = {"sources": [{"kind": KIND, "root": str(root)}], "output": str(tmp_path / "out"),
              "video_size": [64, 96], "fps": 10, "clip_frames": 4, "formats": ["webdataset"],
              "filters": {"min_frames": 3, "static_motion_threshold": 0.0}, "max_failed_fraction": 0.6}
    (tmp_path / "crash.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run([*CLI, "build", str(tmp_path / "crash.yaml"), "--quiet", "--workers", "2"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    reasons = {Path(q["path"]).name: q["reason"] for q in manifest["quarantined"]}
    assert set(reasons) == {"crash_me.mp4", "broken.mp4"}
    assert "worker died while processing" in reasons["crash_me.mp4"]
    assert manifest["episodes"]["ok"] == 10
    assert len({json.loads(s["json"])["episode_id"] for s in read_shards(tmp_path / "out").values()}) == 10
    # Only the episodes the workers had begun ran alone (one per worker at most), not every unfinished one.
    alone = [int(n) for n in re.findall(r"a worker died; running alone each of the (\d+) episode", result.stderr)]
    assert alone and max(alone) <= 2, result.stderr[-2000:]


def test_a_window_gives_each_worker_of_a_large_cluster_many_episodes():
    """An actor pool starts once per window and its tail waits for the slowest worker: on 1000 workers a window of
    2048 episodes would be two per worker, mostly start-up and tail."""
    from pyramid.pipeline import WINDOW_EPISODES, WINDOW_EPISODES_PER_WORKER, window_episodes

    assert window_episodes(2) == WINDOW_EPISODES
    assert window_episodes(1000) == WINDOW_EPISODES_PER_WORKER * 1000 >= 32 * 1000


def test_a_folder_of_other_files_is_refused_as_the_output_and_left_as_it_was(fixtures, tmp_path):
    output = tmp_path / "mine"
    (output / "webdataset" / "old").mkdir(parents=True)
    (output / "webdataset" / "old" / "data.tar").write_bytes(b"a user's shard")
    (output / "notes.txt").write_text("keep me")
    (output / "clips.lance").mkdir()
    (output / "clips.lance" / "keep.txt").write_text("not a Lance dataset")
    before = {path: path.read_bytes() for path in output.rglob("*") if path.is_file()}
    recipe_path = make_recipe(tmp_path, {"videos": fixtures["videos"]}, "mine", formats=["webdataset"])
    result = subprocess.run([*CLI, "build", str(recipe_path), "--quiet"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"error: {output}: holds files no build wrote (clips.lance, notes.txt, webdataset/old); " in result.stderr
    assert {path: path.read_bytes() for path in output.rglob("*") if path.is_file()} == before


def test_a_build_that_finishes_while_another_waits_to_start_is_not_built_again(fixtures, tmp_path, monkeypatch):
    """The finished-build check is made again once the lock is held: between the first check and the lock (the
    preflight opens every source) another build of the recipe may have finished there."""
    from pyramid import pipeline

    recipe_path = make_recipe(tmp_path, {"videos": fixtures["videos"]}, "raced", formats=["webdataset"])
    output = tmp_path / "raced"
    preflight = pipeline.preflight

    def preflight_while_another_build_runs(recipe):
        preflight(recipe)
        other = subprocess.run([*CLI, "build", str(recipe_path), "--quiet", "--workers", "1"], capture_output=True, text=True, timeout=600)
        assert other.returncode == 0, other.stderr[-2000:]

    monkeypatch.setattr(pipeline, "preflight", preflight_while_another_build_runs)
    result = pipeline.build(load_recipe(recipe_path), workers=1, progress=False)
    assert result.up_to_date
    assert not (output / "_staging").exists() and (output / "manifest.json").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 40 KiB file system (tmpfs), grown by calling the fixture's value; skipped where mounting is not allowed."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mount)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount, lambda: subprocess.run(["mount", "-o", "remount,size=20m", str(mount)], check=True)
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_build_without_quarantining_and_a_rerun_finishes_it(fixtures, small_disk, tmp_path):
    mount, make_room = small_disk
    recipe_path = make_recipe(tmp_path, {"videos": fixtures["videos"]}, str(mount / "out"), formats=["webdataset"])
    result = subprocess.run([*CLI, "build", str(recipe_path), "--quiet", "--workers", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"error: {mount / 'out'}: cannot write the build here (No space left on device); make room and run the "
                    f"same command again: the build resumes where it stopped, and no episode was quarantined for this"), result.stderr
    assert "worker died" not in result.stderr and "An exception was raised" not in result.stderr  # nor Ray Data's ERROR line
    statuses = [json.loads(p.read_text()) for p in (mount / "out" / "_staging").glob("*.json") if p.name != "recipe.json"]
    assert not [s for s in statuses if "space" in s.get("reason", "")], statuses
    make_room()
    result = subprocess.run([*CLI, "build", str(recipe_path), "--quiet", "--workers", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((mount / "out" / "manifest.json").read_text())
    assert [Path(q["path"]).name for q in manifest["quarantined"]] == ["broken.mp4"] and manifest["episodes"]["ok"] == 3


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_worker_that_finds_the_disk_full_records_no_status_for_its_episode(fixtures, tmp_path, wrapped):
    """Where a file system cannot be mounted: the writer given a part that fails as a full disk fails (ENOSPC raised
    where the part is made, as a write would raise it) leaves the episode without a status and without staged files."""
    import errno

    from pyramid.errors import EpisodeError, OutputFullError
    from pyramid.stages import StageWriter

    recipe = load_recipe(make_recipe(tmp_path, {"videos": fixtures["videos"]}, "full", formats=["webdataset"]))
    writer = StageWriter(recipe)

    def parts():
        full = OSError(errno.ENOSPC, "No space left on device")
        if wrapped:  # as a writer that names its file would raise it
            raise EpisodeError(tmp_path / "full" / "x.tar", "cannot write") from full
        raise full
        yield

    row = {"order": 0, "episode_id": "videos-x", "source": "videos", "path": "x.mp4", "status": "ok", "level": 2}
    with pytest.raises(OutputFullError, match="No space left on device"):
        writer.write(row, parts())
    assert sorted(p.name for p in (tmp_path / "full" / "_staging").iterdir()) == []


class _StopBeforeFlow(Exception):
    """Stands for a kill of the driver once finalize has packed the shards and committed clips.lance."""


@pytest.mark.parametrize("between", ["retry_failed_of_a_repaired_episode", "an_episode_added_to_the_sources"])
def test_a_finalize_stopped_midway_then_rerun_holds_the_same_episodes_in_every_output(fixtures, tmp_path, monkeypatch, between):
    """A finalize stopped after clips.lance, then rerun with --retry-failed of an episode repaired meanwhile (or after
    a video was added to the sources): the shards kept what they had packed and clips.lance, written under the same
    recipe, was kept whole, so the manifest counted an episode that neither held (exit 0)."""
    from pyramid import pipeline
    from pyramid.sinks import lance_sink

    root = tmp_path / "videos"
    shutil.copytree(fixtures["videos"], root)
    recipe = load_recipe(make_recipe(tmp_path, {"videos": root}, "stopped"))

    def stop(*args, **kwargs):
        raise _StopBeforeFlow

    monkeypatch.setattr(lance_sink, "write_flow", stop)
    with pytest.raises(_StopBeforeFlow):
        pipeline.build(recipe, workers=1, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "stopped" / "clips.lance").exists() and not (tmp_path / "stopped" / "manifest.json").exists()
    if between == "retry_failed_of_a_repaired_episode":
        shutil.copyfile(root / "kitchen/clip_h264.mp4", root / "kitchen/broken.mp4")
    else:
        shutil.copytree(root / "outdoor", root / "zzz_added_later")
    result = pipeline.build(recipe, workers=1, progress=False, retry_failed=between.startswith("retry"))
    reference = pipeline.build(load_recipe(make_recipe(tmp_path, {"videos": root}, "reference")), workers=1, progress=False)

    manifests = [json.loads((output / "manifest.json").read_text()) for output in (result.output, reference.output)]
    assert manifests[0]["episodes"] == manifests[1]["episodes"]
    assert manifests[0]["episodes"]["failed"] == (0 if between.startswith("retry") else 1)  # the broken video
    assert read_shards(result.output).keys() == read_shards(reference.output).keys()
    for name in ("clips.lance", "flow.lance"):
        rows = [lance.dataset(str(output / name)).to_table(columns=["episode_id"]).column(0).to_pylist()
                for output in (result.output, reference.output)]
        assert rows[0] == rows[1], name
