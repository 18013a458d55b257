"""`pyramid build --address` on a real two-node Ray cluster started on this machine, as a cluster user runs it.

Two `ray start` nodes of one CPU each, each with its own resource label; the build must use both and
write what a local build writes: the same shards byte for byte, the same Lance rows (Lance data files
are named by random UUIDs, so their contents are compared, not their bytes).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lance
import pytest

from tests.fixtures import builder
from tests.test_build import CLI, make_recipe

RAY = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TwoNodeCluster:
    """Head and second node as `ray start --block` processes in sessions of their own, stopped by process group."""

    def __init__(self, tmp: Path):
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        # Short: Ray's socket paths under it must fit AF_UNIX's 107 bytes, which pytest's tmp_path can exceed.
        self.temp_dir, self.logs, self.processes = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp")), tmp, []
        self.address = f"127.0.0.1:{free_port()}"

    def start(self) -> None:
        port = self.address.rpartition(":")[2]
        self._start("head", "--head", "--node-ip-address", "127.0.0.1", "--port", port, "--temp-dir", str(self.temp_dir),
                    "--include-dashboard", "false", "--dashboard-agent-listen-port", str(free_port()),
                    "--ray-client-server-port", str(free_port()), "--resources", json.dumps({"node_head": 1}))
        self._wait_for_nodes(1)
        self._start("second", "--address", self.address, "--node-ip-address", "127.0.0.1",
                    "--dashboard-agent-listen-port", str(free_port()), "--resources", json.dumps({"node_second": 1}))
        self._wait_for_nodes(2)

    def _start(self, name: str, *args: str) -> None:
        log = open(self.logs / f"{name}.log", "w")
        self.processes.append(subprocess.Popen([*RAY, "start", "--num-cpus", "1", "--block", "--disable-usage-stats", *args],
                                               stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True))

    def nodes(self) -> list[dict]:
        """Alive nodes as {id, labels}, asked of the cluster in a separate process (this one never joins it)."""
        script = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); print(json.dumps([{'id': n['NodeID'], "
                  "'labels': sorted(k for k in n['Resources'] if k.startswith('node_'))} for n in ray.nodes() if n['Alive']]))")
        try:
            result = subprocess.run([sys.executable, "-c", script % self.address], capture_output=True, text=True,
                                    env=self.env, timeout=60)
        except subprocess.TimeoutExpired:
            return []
        return json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else []

    def _wait_for_nodes(self, count: int) -> None:
        deadline = time.time() + 180
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"a ray start process exited: see {self.logs}/*.log")
            if len(self.nodes()) >= count:
                return
            time.sleep(1)
        raise TimeoutError(f"the cluster did not reach {count} nodes")

    def stop(self) -> None:
        for process in reversed(self.processes):
            _stop_group(process)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the node's process group (ray start and the daemons it started), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                process.wait()
                return
            time.sleep(0.2)


def shard_bytes(output: Path) -> dict[str, bytes]:
    return {str(p.relative_to(output)): p.read_bytes() for p in sorted(output.glob("webdataset/*/*.tar"))}


def lance_rows(output: Path, name: str) -> list[dict]:
    return lance.dataset(str(output / name)).to_table().to_pylist()


@pytest.mark.timeout(900)
def test_a_two_node_cluster_build_uses_both_nodes_and_writes_what_a_local_build_writes(tmp_path):
    root = tmp_path / "videos"
    builder("videos")(root)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    local_recipe = make_recipe(tmp_path, {"videos": root}, "local")
    result = subprocess.run([*CLI, "build", str(local_recipe), "--quiet", "--workers", "2"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    cluster = TwoNodeCluster(tmp_path)
    try:
        cluster.start()
        nodes = cluster.nodes()
        assert sorted(label for node in nodes for label in node["labels"]) == ["node_head", "node_second"]
        cluster_recipe = make_recipe(tmp_path, {"videos": root}, "cluster")
        result = subprocess.run([*CLI, "build", str(cluster_recipe), "--quiet", "--address", cluster.address],
                                capture_output=True, text=True, timeout=600, env=cluster.env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"Ray at {cluster.address} (--address)" in result.stderr
    finally:
        cluster.stop()
    assert all(process.poll() is not None for process in cluster.processes)

    local, clustered = tmp_path / "local", tmp_path / "cluster"
    by_node = json.loads((clustered / "manifest.json").read_text())["episodes_by_node"]
    assert set(by_node) == {node["id"] for node in nodes}, (by_node, nodes)  # both nodes processed episodes
    assert shard_bytes(clustered) == shard_bytes(local) and shard_bytes(local)
    for name in ("clips.lance", "flow.lance"):
        assert lance_rows(clustered, name) == lance_rows(local, name)
