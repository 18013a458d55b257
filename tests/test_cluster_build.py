"""`pyramid build --address` on a real two-node Ray cluster started on this machine, as a cluster user runs it.

Two `ray start` nodes of one CPU each, each with its own resource label; the build must use both and
write what a local build writes: the same shards byte for byte, the same Lance rows (Lance data files
are named by random UUIDs, so their contents are compared, not their bytes).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import lance
import numpy as np
import pytest

from tests.fixtures import builder
from tests.fixtures.ray_cluster import LocalCluster
from tests.test_build import CLI, make_recipe


def shard_bytes(output: Path) -> dict[str, bytes]:
    return {str(p.relative_to(output)): p.read_bytes() for p in sorted(output.glob("webdataset/*/*.tar"))}


def lance_rows(output: Path, name: str) -> list[dict]:
    return lance.dataset(str(output / name)).to_table().to_pylist()


@pytest.mark.timeout(900)
def test_a_two_node_cluster_build_uses_both_nodes_and_writes_what_a_local_build_writes(tmp_path):
    """Also: a build without --address reuses the cluster `ray start` left running on this machine."""
    root = tmp_path / "videos"
    spec = builder("videos")(root)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    local_recipe = make_recipe(tmp_path, {"videos": root}, "local")
    result = subprocess.run([*CLI, "build", str(local_recipe), "--quiet", "--workers", "2"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    with LocalCluster(tmp_path) as cluster:
        nodes = cluster.nodes()
        assert sorted(label for node in nodes for label in node["labels"]) == ["node_head", "node_second"]
        cluster_recipe = make_recipe(tmp_path, {"videos": root}, "cluster")
        result = subprocess.run([*CLI, "build", str(cluster_recipe), "--quiet", "--address", cluster.address],
                                capture_output=True, text=True, timeout=600, env=cluster.env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"Ray at {cluster.address} (--address)" in result.stderr
        # No --address: the build finds the Ray that `ray start` left running, and says so.
        reuse_recipe = make_recipe(tmp_path, {"videos": root}, "reused")
        result = subprocess.run([*CLI, "build", str(reuse_recipe), "--quiet"], capture_output=True, text=True, timeout=600, env=cluster.env)
        assert result.returncode == 0, result.stderr[-3000:]
        said = next(line for line in result.stderr.splitlines() if line.startswith("pyramid build: "))
        assert "reusing the local Ray at" in said and said.split()[7].endswith(f":{cluster.address.rpartition(':')[2]}"), said
        # One episode on two one-CPU nodes: its worker asked for both CPUs, which no node has, and the build waited
        # ten minutes for such a node (as a --retry-failed of one episode, or crash isolation, did).
        single = tmp_path / "single"
        single.mkdir()
        good = root / next(iter(spec.expected))
        (single / f"one{good.suffix}").write_bytes(good.read_bytes())
        result = subprocess.run([*CLI, "build", str(make_recipe(tmp_path, {"videos": single}, "one")), "--quiet",
                                 "--address", cluster.address], capture_output=True, text=True, timeout=240, env=cluster.env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads((tmp_path / "one" / "manifest.json").read_text())["episodes"]["ok"] == 1
    assert all(process.poll() is not None for process in cluster.processes)  # both nodes stopped

    local = tmp_path / "local"
    assert shard_bytes(local)
    for name in ("cluster", "reused"):
        built = tmp_path / name
        by_node = json.loads((built / "manifest.json").read_text())["episodes_by_node"]
        assert set(by_node) == {node["id"] for node in nodes}, (by_node, nodes)  # both nodes processed episodes
        assert shard_bytes(built) == shard_bytes(local)
        for dataset in ("clips.lance", "flow.lance"):
            assert lance_rows(built, dataset) == lance_rows(local, dataset)


@pytest.mark.timeout(900)
def test_with_a_gpu_the_stages_run_apart_and_write_what_the_cpu_build_writes(tmp_path):
    """A cluster with a GPU runs decode, learned flow and staging as separate Ray Data stages, flow on the GPU (here a
    GPU Ray only counts, so the model runs on the CPU): the same episodes, clips, videos and flow pairs as the
    one-actor CPU build. (The flow itself is compared for its shape only: random weights are drawn in each process.)
    The GPU build runs a longer video in three parts of two clips, which different writers stage and one joins."""
    from pyramid.video_io import write_video
    from tests.fixtures.media import moving_square_frames

    root = tmp_path / "videos"
    builder("videos")(root)
    write_video(root / "kitchen/long.mp4", moving_square_frames(60, 64, 96), fps=30.0)  # 20 stored frames, 5 clips
    flow = {"backend": "ptlflow:dpflow", "options": {"random_weights": True, "device": "cpu", "batch_size": 4}}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([*CLI, "build", str(make_recipe(tmp_path, {"videos": root}, "cpu", flow=flow)), "--quiet", "--workers", "1"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GPU" not in result.stderr
    # CPUs as Ray counts them: the flow actor and a staging actor hold one each, and decoding needs one
    with LocalCluster(tmp_path, labels=("node_gpu",), cpus=4, gpus=1, env={"PYRAMID_PART_FRAMES": "8"}) as cluster:
        result = subprocess.run([*CLI, "build", str(make_recipe(tmp_path, {"videos": root}, "gpu", flow=flow)), "--quiet",
                                 "--address", cluster.address], capture_output=True, text=True, timeout=600, env=cluster.env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("pyramid build: learned flow on the cluster's GPUs, decoding and staging on CPU workers, episodes in "
                "parts of 8 stored frames") in result.stderr
    cpu, gpu = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("cpu", "gpu"))
    assert gpu["episodes"] == cpu["episodes"] and gpu["by_level"] == cpu["by_level"] and cpu["episodes"]["ok"] == 4
    clips = {name: lance.dataset(str(tmp_path / name / "clips.lance")).to_table(columns=["key", "video", "num_frames"]).to_pylist()
             for name in ("cpu", "gpu")}
    assert clips["gpu"] == clips["cpu"] and clips["cpu"]
    pairs = {name: lance.dataset(str(tmp_path / name / "flow.lance")).to_table(columns=["episode_id", "pair_index", "clip_key"]).to_pylist()
             for name in ("cpu", "gpu")}
    assert pairs["gpu"] == pairs["cpu"]
    from flow.storage import unpack

    stored = unpack(lance.dataset(str(tmp_path / "gpu" / "flow.lance")).take([0], columns=["flow_npy_zst"]).column(0)[0].as_py())
    assert stored.shape == (64, 96, 2) and np.isfinite(stored).all()


@pytest.mark.timeout(300)
def test_a_gpu_cluster_with_too_few_cpus_for_its_actors_says_so_at_once(tmp_path):
    """Ray Data would wait ten minutes (`wait_for_min_actors_s`) for a staging actor that cannot start; the build
    says in one line what it needs instead."""
    root = tmp_path / "videos"
    builder("videos")(root)
    flow = {"backend": "ptlflow:dpflow", "options": {"random_weights": True, "device": "cpu"}}
    with LocalCluster(tmp_path, labels=("node_gpu",), cpus=2, gpus=1) as cluster:
        result = subprocess.run([*CLI, "build", str(make_recipe(tmp_path, {"videos": root}, "gpu", flow=flow)), "--quiet",
                                 "--address", cluster.address], capture_output=True, text=True, timeout=240, env=cluster.env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: a build on GPUs needs at least 3 CPUs as Ray counts them (a decode task, a flow actor, a staging actor); "
        "this cluster has 2: give its nodes more (`ray start --num-cpus`, a count, not cores)")
