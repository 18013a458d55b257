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


@pytest.mark.parametrize("content", ["{cut", "[1, 2]", "\xff"])
def test_an_unreadable_manifest_is_one_line_naming_it(tmp_path, content):
    from pyramid.pipeline import _read_manifest

    path = tmp_path / "manifest.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(BuildError, match=r"manifest\.json: (unreadable|not a build manifest)"):
        _read_manifest(path)
