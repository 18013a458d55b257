"""Which Ray a build runs on, and whether every node of it sees the source roots and the output.

A build runs on `--address`, else `RAY_ADDRESS`, else a local Ray that `ray start --head` left running
on this machine (reused: no start-up cost per build), else a local Ray of its own.

Workers read sources and stage episodes under the output directory, so a cluster build needs them
on a filesystem every node mounts at the same path. A node that lacks one would fail every episode
it gets; `check_nodes_see` names the node and the path before any work starts.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from pyramid.errors import BuildError

NODE_CHECK_PREFIX = ".node-check-"  # the token each node must see in the output (`paths_missing_on_nodes`)


def ray_address(requested: str | None) -> tuple[str, str]:
    """(the address for `ray.init`, a line for the log saying which Ray the build runs on)."""
    if requested:
        check_answers(requested, "--address")
        return requested, f"Ray at {requested} (--address)"
    if os.environ.get("RAY_ADDRESS"):
        check_answers(os.environ["RAY_ADDRESS"], "RAY_ADDRESS")
        return os.environ["RAY_ADDRESS"], f"Ray at {os.environ['RAY_ADDRESS']} (RAY_ADDRESS)"
    if running := running_local_ray():
        return running, f"reusing the local Ray at {running} that `ray start` left running (`ray stop` ends it)"
    return "local", "starting a local Ray for this build (`ray start --head` once lets later builds reuse one)"


def check_answers(address: str, given_by: str, timeout_s: float = 5.0) -> None:
    """A BuildError where nothing accepts a connection at a `host:port` (or `ray://host:port`) address: `ray.init`
    would retry it for minutes with pages of warnings. Names Ray itself understands ('auto', 'local') are left to it."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdecimal():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise BuildError(f"{given_by} {address}: no Ray answers there ({exc.strerror or exc}); start one with "
                         "`ray start --head`, or check the host and port") from None


def running_local_ray() -> str | None:
    """The address of the Ray that the last `ray start --head` on this machine started, if its GCS still runs.

    Only a Ray a user started on purpose is reused, never one that another program's `ray.init()` runs
    (it would end with that program).
    """
    from ray._private import services

    address = services.find_bootstrap_address(None)
    if not address:
        return None
    services.find_gcs_addresses.cache_clear()
    return address if address in services.find_gcs_addresses() else None


def check_nodes_see(source_roots: list[str], output: Path) -> None:
    """Raise BuildError naming each alive node that cannot see a source root or the driver's output directory."""
    missing = paths_missing_on_nodes(source_roots, output)
    if missing:
        problems = "; ".join(f"node {node} does not see {', '.join(paths)}" for node, paths in sorted(missing.items()))
        raise BuildError(f"{problems}: every source root and the output must be on a filesystem all Ray nodes "
                         f"mount at the same path")


def alive_nodes() -> list[dict]:
    """The Ray nodes up now, as `ray.nodes()` describes them."""
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


def largest_node_cpus() -> int:
    """The most CPUs one node has: what one actor may ask for and still start."""
    return int(max((node["Resources"].get("CPU", 0) for node in alive_nodes()), default=1))


def paths_missing_on_nodes(source_roots: list[str], output: Path) -> dict[str, list[str]]:
    """{node address: paths it cannot see}; the output counts as seen only where the driver's token file is readable."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = output / f"{NODE_CHECK_PREFIX}{uuid.uuid4().hex}"
    token.write_text(token.name)
    try:
        probe = ray.remote(num_cpus=0)(_missing_here)
        nodes = alive_nodes()
        # The driver's own node is checked in this process: a task would first wait for a worker process.
        driver_node = ray.get_runtime_context().get_node_id()
        pending = {node["NodeManagerAddress"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(source_roots, str(token))
            for node in nodes if node["NodeID"] != driver_node}
        results = {address: ray.get(ref) for address, ref in pending.items()}
        results.update({node["NodeManagerAddress"]: _missing_here(source_roots, str(token)) for node in nodes if node["NodeID"] == driver_node})
    finally:
        token.unlink(missing_ok=True)
    return {address: paths for address, paths in results.items() if paths}


def _missing_here(source_roots: list[str], token: str) -> list[str]:
    missing = [f"{root} (source root)" for root in source_roots if not os.path.isdir(root)]
    try:
        seen = Path(token).read_text() == Path(token).name
    except OSError:
        seen = False
    if not seen:
        missing.append(f"{Path(token).parent} (output)")
    return missing
