"""One pass per episode: what a worker stages is what finalize commits, and a damaged staged file is redone.

The workers run in this process (the same EpisodeWorker a Ray actor runs), on real fixture videos.
"""

from __future__ import annotations

import json
import tarfile

import lance
import numpy as np
import pytest

from flow.storage import as_stored, unpack
from latent_action.images import resize_images
from latent_action.pairs import LancePairs, flow_to_rgb

from pyramid.errors import BuildError
from pyramid.finalize import finalize
from pyramid.pipeline import discover
from pyramid.recipe import Recipe
from pyramid.stages import EpisodeWorker
from pyramid.staging import Staging
from tests.fixtures import builder


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    builder("videos")(root)
    return root


def staged_build(videos, output, **extra) -> Recipe:
    recipe = Recipe(sources=[{"kind": "videos", "root": str(videos)}], output=str(output), video_size=(64, 96), fps=10,
                    clip_frames=4, filters={"min_frames": 3, "static_motion_threshold": 0.0}, max_failed_fraction=0.6, **extra)
    worker = EpisodeWorker(recipe)
    for row in Staging(output).record_episodes(discover(recipe)):
        worker(row)
    return recipe


def test_staged_members_become_the_shards_and_staged_rows_the_lance_datasets(videos, tmp_path):
    recipe = staged_build(videos, tmp_path / "out")
    staging = Staging(tmp_path / "out")
    statuses = [staging.status(row["episode_id"]) for row in staging.episodes()]
    built = [s for s in statuses if s["status"] == "ok"]
    staged_members = b"".join(staging.path(s["episode_id"], "tar").read_bytes() for s in built)
    manifest = finalize(recipe, recipe.content_fingerprint(), {}, progress=False)
    (shard,) = (tmp_path / "out").glob("webdataset/level2/shard-*.tar")
    assert shard.read_bytes().startswith(staged_members) and len(shard.read_bytes()) % tarfile.RECORDSIZE == 0
    with tarfile.open(shard) as tar:
        assert len({m.name.split(".")[0] for m in tar}) == sum(s["clips"] for s in built) == manifest["by_level"]["level2"]["clips"]
    assert lance.dataset(str(tmp_path / "out" / "clips.lance")).count_rows() == sum(s["clips"] for s in built)
    assert lance.dataset(str(tmp_path / "out" / "flow.lance")).count_rows() == sum(s["flow_pairs"] for s in built)
    assert manifest["timings_s"]["worker_flow"] > 0 and manifest["episodes_by_node"] == {"driver": len(built)}
    pairs = LancePairs(tmp_path / "out" / "flow.lance", image_size=32)  # what the VAE trains on
    assert len(pairs.table.episode_id) == sum(s["flow_pairs"] for s in built)
    stored = unpack(lance.dataset(str(tmp_path / "out" / "flow.lance")).take([0], columns=["flow_npy_zst"]).column(0)[0].as_py())
    assert stored.shape == (64, 96, 2) and np.array_equal(stored, as_stored(stored))
    assert np.array_equal(pairs.images([0]), resize_images(flow_to_rgb(stored[None], None), 32, 32))


def test_without_stored_flow_there_is_no_flow_lance(videos, tmp_path):
    recipe = staged_build(videos, tmp_path / "out", flow={"store": False})
    manifest = finalize(recipe, recipe.content_fingerprint(), {}, progress=False)
    assert manifest["outputs"]["lance"] == ["clips.lance"] and not (tmp_path / "out" / "flow.lance").exists()
    assert Recipe(sources=[{"kind": "videos", "root": "x"}], output="o").content_fingerprint() == \
        Recipe(sources=[{"kind": "videos", "root": "x"}], output="o", flow={"store": True}).content_fingerprint()


@pytest.mark.parametrize("suffix", ["tar", "clips.arrow"])
def test_a_staged_file_cut_short_is_named_and_its_episode_redone(videos, tmp_path, suffix):
    recipe = staged_build(videos, tmp_path / "out")
    staging = Staging(tmp_path / "out")
    victim = next(s for s in (staging.status(r["episode_id"]) for r in staging.episodes()) if s["status"] == "ok")
    path = staging.path(victim["episode_id"], suffix)
    path.write_bytes(path.read_bytes()[:100])  # what a power cut can leave of a file written without fsync
    with pytest.raises(BuildError, match=f"{path.name}: staged file has 100 bytes, its status recorded"):
        finalize(recipe, recipe.content_fingerprint(), {}, progress=False)
    assert staging.status(victim["episode_id"]) is None  # the next run processes it again
    worker = EpisodeWorker(recipe)
    for row in discover(recipe):
        if staging.status(row["episode_id"]) is None:
            worker(row)
    finalize(recipe, recipe.content_fingerprint(), {}, progress=False)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["episodes"]["ok"] == 3



def test_a_staging_directory_without_a_finished_episode_is_taken_over_by_the_next_recipe(tmp_path):
    from pyramid.pipeline import _claim_staging

    staging = tmp_path / "_staging"
    staging.mkdir()
    (staging / "recipe.json").write_text(json.dumps({"fingerprint": "misspelt-preset"}))
    (staging / "lerobot-a-1.started").touch()  # begun by a worker that then failed to start its backend
    _claim_staging(tmp_path, "corrected", retry_failed=False)
    assert json.loads((staging / "recipe.json").read_text()) == {"fingerprint": "corrected"}
    assert not (staging / "lerobot-a-1.started").exists()
    (staging / "lerobot-a-1.json").write_text(json.dumps({"episode_id": "lerobot-a-1", "status": "ok"}))
    with pytest.raises(BuildError, match="holds an unfinished build of a different recipe"):
        _claim_staging(tmp_path, "another", retry_failed=False)
    (staging / "recipe.json").write_text("{cut")  # unreadable: it vouches for no recipe, and work is staged
    with pytest.raises(BuildError, match="holds an unfinished build of a different recipe"):
        _claim_staging(tmp_path, "corrected", retry_failed=False)


def test_a_status_torn_by_a_kill_before_its_rename_counts_for_nothing(tmp_path):
    """A worker killed while writing a status leaves it under its temporary name, hidden but matched by `*.json`."""
    from pyramid.pipeline import _claim_staging

    staging = tmp_path / "_staging"
    staging.mkdir()
    (staging / "recipe.json").write_text(json.dumps({"fingerprint": "first"}))
    (staging / ".lerobot-a-1.tmp4242.json").write_text("{cut")
    _claim_staging(tmp_path, "second", retry_failed=False)  # no finished episode: taken over
    assert json.loads((staging / "recipe.json").read_text()) == {"fingerprint": "second"}
    (staging / "lerobot-a-2.json").write_text(json.dumps({"episode_id": "lerobot-a-2", "status": "failed"}))
    (staging / ".lerobot-a-3.tmp4243.json").write_text("")
    _claim_staging(tmp_path, "second", retry_failed=True)
    assert not (staging / "lerobot-a-2.json").exists()


@pytest.mark.parametrize("content", ["{cut", "[1, 2]", "\xff"])
def test_an_unreadable_manifest_is_one_line_naming_it(tmp_path, content):
    from pyramid.pipeline import _read_manifest

    path = tmp_path / "manifest.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(BuildError, match=r"manifest\.json: (unreadable|not a build manifest)"):
        _read_manifest(path)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """One 4 s video with motion throughout: 40 stored frames at 10 fps, ten clips of 4."""
    from pyramid.video_io import write_video

    root = tmp_path_factory.mktemp("long")
    texture = np.random.default_rng(3).integers(0, 255, (160, 200, 3)).astype(np.uint8).repeat(2, 0).repeat(2, 1)
    frames = np.stack([texture[40 + i // 3 : 40 + i // 3 + 96, i : i + 128] for i in range(120)])
    write_video(root / "long.mp4", frames, fps=30)
    return root


def staged_files(output) -> dict:
    staging = Staging(output)
    (status,) = [staging.status(row["episode_id"]) for row in staging.episodes()]
    assert status["status"] == "ok", status
    files = {suffix: staging.path(status["episode_id"], suffix) for suffix in ("tar", "clips.arrow", "flow.arrow")}
    import pyarrow as pa

    tables = {suffix: pa.ipc.open_file(pa.memory_map(str(path))).read_all() for suffix, path in files.items() if suffix != "tar"}
    status.pop("stage_seconds")
    status.pop("staged_bytes")  # an Arrow file of five parts has five record batches, the rows are the same
    return {"tar": files["tar"].read_bytes(), **{suffix: table.to_pylist() for suffix, table in tables.items()}, "status": status}


def test_a_long_episode_is_processed_in_parts_with_the_same_outputs(long_video, tmp_path, monkeypatch):
    """A worker holds a part of a long episode at a time: clips, flow rows (pairs across parts included), statistics
    and previews are those of the episode processed whole."""
    import pyramid.stages

    whole = staged_files(staged_build(long_video, tmp_path / "whole").output)
    monkeypatch.setattr(pyramid.stages, "PART_FRAMES", 8)  # two clips of 4 frames a part: five parts
    parted = staged_files(staged_build(long_video, tmp_path / "parted").output)
    assert whole["status"]["clips"] == 10 and whole["status"]["flow_pairs"] == 39
    assert [row["pair_index"] for row in parted["flow.arrow"]] == list(range(39))
    for key in ("tar", "clips.arrow", "flow.arrow", "status"):
        assert parted[key] == whole[key], key
    assert not list((tmp_path / "parted" / "_staging").glob(".*.tmp*"))  # every part's file renamed into place


def test_clip_parts_hold_whole_clips_and_their_pairs_tile_the_episode():
    from pyramid.clips import clip_parts, clip_spans, stored_frame_indices

    spans = clip_spans(stored_frame_indices(300, 30.0, 10.0), 4, 3, 300)  # 100 stored frames: 25 clips of 4
    for part_frames, stride in ((8, 1), (10, 2), (3, 1), (None, 3)):
        parts = clip_parts(spans, stride, part_frames)
        assert [span for clips, _, _ in parts for span in clips] == spans
        pairs = [t for _, lo, hi in parts for t in range(lo, hi - stride)]
        assert pairs == list(range(spans[-1].stop - stride))
        if part_frames is None:
            assert len(parts) == 1
        else:
            assert all(len(clips) == 1 or clips[-1].stop - lo <= part_frames for clips, lo, _ in parts)
            assert len(parts) == -(-len(spans) // max(1, part_frames // 4))  # as many whole clips in each as fit


def test_parts_decoded_in_one_pass_are_the_frames_decoded_at_once(long_video):
    from pyramid.clips import decode_stored, decode_stored_parts, stored_frame_indices
    from pyramid.episode import VideoCamera

    camera = VideoCamera.open("video", long_video / "long.mp4")
    from pyramid.episode import Episode

    episode = Episode(episode_id="e", source="videos", embodiment="video", level=2, instructions=[], fps=camera.fps,
                      num_frames=camera.num_frames, cameras={"video": camera}, path=str(long_video / "long.mp4"))
    indices = stored_frame_indices(camera.num_frames, camera.fps, 10.0)
    at_once = decode_stored(episode, indices, (48, 64))
    bounds = [(0, 9), (8, 17), (16, 30), (29, 40)]
    for (lo, hi), part in zip(bounds, decode_stored_parts(episode, indices, bounds, (48, 64), chunk=5), strict=True):
        np.testing.assert_array_equal(part, at_once[lo:hi])
    with pytest.raises(ValueError, match="does not follow on"):
        list(decode_stored_parts(episode, indices, [(0, 9), (12, 20)], (48, 64)))


def test_a_discarded_episode_leaves_no_staged_file(tmp_path):
    import pyarrow as pa

    staging = Staging(tmp_path)
    staged = staging.begin_episode("ep")
    staged.add(b"members", {"clips.arrow": pa.table({"a": [1, 2]}), "flow.arrow": None})
    staged.discard()
    assert sorted(path.name for path in staging.dir.iterdir()) == []


def gpu_stage_parts(long_video, output, monkeypatch) -> tuple[Recipe, list[dict]]:
    """The rows the GPU stages pass to the writers for the long video's one episode: five parts, through flow."""
    import pyramid.stages
    from pyramid.stages import FlowStage, decode_parts

    monkeypatch.setattr(pyramid.stages, "PART_FRAMES", 8)  # two clips of 4 frames a part: five parts
    recipe = Recipe(sources=[{"kind": "videos", "root": str(long_video)}], output=str(output), video_size=(64, 96),
                    fps=10, clip_frames=4, filters={"min_frames": 3, "static_motion_threshold": 0.0}, max_failed_fraction=0.6)
    (row,) = list(Staging(output).record_episodes(discover(recipe)))
    flow = FlowStage(recipe)
    return recipe, [flow(part) for part in decode_parts(row, recipe)]


def part_files(output) -> list[str]:
    return sorted(path.name for path in (output / "_staging").iterdir() if ".p0" in path.name or path.name.endswith(".join"))


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4], [4, 2, 0, 3, 1]])
def test_the_gpu_stages_stage_what_the_cpu_worker_stages(long_video, tmp_path, monkeypatch, order):
    """With GPUs a build runs decode, flow and the writer as separate Ray Data stages, the payload pickled between
    them, one row per part of an episode. Writers stage the parts they are given alone, in whatever order Ray hands
    them out; the one that stages the last joins them: the episode EpisodeWorker stages, and no part left."""
    from pyramid.stages import StageWriter

    whole = staged_files(staged_build(long_video, tmp_path / "worker").output)
    recipe, parts = gpu_stage_parts(long_video, tmp_path / "stages", monkeypatch)
    assert len(parts) == 5 and all(part["status"] == "ok" for part in parts)
    writers = [StageWriter(recipe), StageWriter(recipe)]
    written = [writers[i % 2](parts[k])["status"] for i, k in enumerate(order)]
    assert written == ["part staged"] * 4 + ["ok"]
    staged = staged_files(tmp_path / "stages")
    for key in ("tar", "clips.arrow", "flow.arrow", "status"):
        assert staged[key] == whole[key], key
    assert part_files(tmp_path / "stages") == []


@pytest.mark.parametrize("failed_at", [0, 2, 4])
def test_a_part_that_fails_quarantines_its_episode_and_no_part_of_it_stays(long_video, tmp_path, monkeypatch, failed_at):
    """A step failing on one part (the row RowStage marks failed) quarantines the episode with its reason, whether
    the other parts were staged before the failure reached a writer or arrive after it."""
    from pyramid.stages import StageWriter, failure

    recipe, parts = gpu_stage_parts(long_video, tmp_path / "stages", monkeypatch)
    parts[failed_at] = failure(parts[failed_at], ValueError("flow: CUDA error: an illegal memory access was encountered"))
    writer = StageWriter(recipe)
    for part in parts:  # the parts before the failure are staged, those after it arrive to find the episode quarantined
        writer(part)
    staging = Staging(tmp_path / "stages")
    status = staging.status(parts[0]["episode_id"])
    assert status["status"] == "failed" and "illegal memory access" in status["reason"]
    assert part_files(tmp_path / "stages") == [] and not staging.path(parts[0]["episode_id"], "tar").exists()
