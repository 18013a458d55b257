"""Before a build starts its workers: does every Ray node see the source roots and the output at the same paths?

Workers read sources and stage episodes under the output directory, so a cluster build needs them
on a filesystem every node mounts at the same path. A node that lacks one would fail every episode
it gets; this check names the node and the path before any work starts.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from pyramid.errors import BuildError


def check_nodes_see(source_roots: list[str], output: Path) -> None:
    """Raise BuildError naming each alive node that cannot see a source root or the driver's output directory."""
    missing = paths_missing_on_nodes(source_roots, output)
    if missing:
        problems = "; ".join(f"node {node} does not see {', '.join(paths)}" for node, paths in sorted(missing.items()))
        raise BuildError(f"{problems}: every source root and the output must be on a filesystem all Ray nodes "
                         f"mount at the same path")


def paths_missing_on_nodes(source_roots: list[str], output: Path) -> dict[str, list[str]]:
    """{node address: paths it cannot see}; the output counts as seen only where the driver's token file is readable."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = output / f".node-check-{uuid.uuid4().hex}"
    token.write_text(token.name)
    try:
        probe = ray.remote(num_cpus=0)(_missing_here)
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        pending = {node["NodeManagerAddress"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(source_roots, str(token))
            for node in nodes}
        results = {address: ray.get(ref) for address, ref in pending.items()}
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
