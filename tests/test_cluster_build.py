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
    builder("videos")(root)
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
