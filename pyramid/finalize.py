"""After every episode is staged: pack shards, write Lance, compute statistics, write the manifest and report.

Everything here streams over the staging directory in discovery order, one episode at a time.
"""

from __future__ import annotations

import io
import json
import platform
import zlib
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pyramid.errors import BuildError
from pyramid.recipe import Recipe
from pyramid.staging import Staging, atomic_write_bytes
from pyramid.stats import RunningStats

ARRAYS = {"state": "state.npy", "actions": "actions.npy", "latent_actions": "latent_actions.npy"}


class Tally:
    """Counts, hours, quarantine list and normalisation statistics, accumulated episode by episode."""

    def __init__(self):
        self.episodes = defaultdict(int)
        self.by_source = defaultdict(lambda: defaultdict(float))
        self.by_level = defaultdict(lambda: defaultdict(float))
        self.quarantined: list[dict] = []
        self.skipped: list[dict] = []
        self.stats: dict[str, dict[str, RunningStats]] = defaultdict(dict)

    def add_status(self, status: dict) -> None:
        self.episodes[status["status"]] += 1
        if status["status"] == "failed":
            self.quarantined.append({"episode_id": status["episode_id"], "path": status["path"], "reason": status["reason"]})
            return
        if status["status"] == "skipped":
            self.skipped.append({"episode_id": status["episode_id"], "reason": status["reason"]})
        for table, key in ((self.by_source, status["source"]), (self.by_level, f"level{status['level']}")):
            row = table[key]
            row["episodes"] += status["status"] == "ok"
            row["clips"] += status.get("clips", 0)
            row["hours"] += status.get("seconds", 0.0) / 3600 if status["status"] == "ok" else 0.0
            row["stored_frames"] += status.get("stored_frames", 0)

    def add_samples(self, embodiment: str, samples: list[dict[str, bytes]]) -> None:
        for sample in samples:
            for name, field in ARRAYS.items():
                if field in sample:
                    array = np.load(io.BytesIO(sample[field]), allow_pickle=False)
                    if array.size:
                        self._stats_for(embodiment, name, array.shape[1]).update(array)

    def _stats_for(self, embodiment: str, name: str, dim: int) -> RunningStats:
        """Per embodiment and array; arrays of another width under the same embodiment name get their own entry."""
        arrays = self.stats[embodiment]
        if name in arrays and arrays[name].dim != dim:
            name = f"{name}@{dim}d"
        if name not in arrays:
            arrays[name] = RunningStats(dim, seed=zlib.crc32(f"{embodiment}/{name}".encode()))
        return arrays[name]

    def normalization(self) -> dict:
        return {emb: {name: s.summary() for name, s in sorted(arrays.items())} for emb, arrays in sorted(self.stats.items())}


def finalize(recipe: Recipe, fingerprint: str, timings: dict[str, float], progress: bool = True) -> dict:
    from pyramid.pipeline import discover
    from pyramid.sinks.webdataset_sink import ShardPacker

    output = Path(recipe.output)
    staging = Staging(output)
    packer = ShardPacker(output, int(recipe.shard_size_mb * 2**20), fingerprint)
    tally = Tally()
    kept_ids: list[str] = []
    started = time.perf_counter()
    for row in tqdm(discover(recipe), desc="pack shards", unit="episode", disable=not progress):
        status = staging.status(row["episode_id"])
        if status is None:
            raise BuildError(f"{row['path']}: episode was not processed; run the build again")
        tally.add_status(status)
        if status["status"] != "ok":
            continue
        samples = list(staging.samples(row["episode_id"]))
        tally.add_samples(status["embodiment"], samples)
        kept_ids.append(row["episode_id"])
        if "webdataset" in recipe.formats and not packer.already_packed(row["order"], row["episode_id"], status["level"]):
            packer.add(row["order"], row["episode_id"], status["level"], samples)
    packer.finish()
    timings["pack"] = time.perf_counter() - started
    started = time.perf_counter()
    from pyramid.sinks.lance_sink import write_clips, write_flow

    if kept_ids:
        if "lance" in recipe.formats:
            write_clips(output, staging, kept_ids, fingerprint)
        write_flow(output, staging, kept_ids, fingerprint)
    timings["lance"] = time.perf_counter() - started
    manifest = _manifest(recipe, fingerprint, tally, packer.shards(), timings)
    from pyramid.report import write_report

    write_report(output, manifest, staging, kept_ids)
    atomic_write_bytes(output / "manifest.json", json.dumps(manifest, indent=2, allow_nan=False).encode())
    shutil.rmtree(staging.dir, ignore_errors=True)
    return manifest


def _manifest(recipe: Recipe, fingerprint: str, tally: Tally, shards: list[Path], timings: dict) -> dict:
    total = sum(tally.episodes.values())
    output = Path(recipe.output)
    return {
        "recipe_fingerprint": fingerprint,
        "episodes": {"total": total, "ok": tally.episodes["ok"], "skipped": tally.episodes["skipped"],
                     "failed": tally.episodes["failed"],
                     "failed_fraction": tally.episodes["failed"] / total if total else 0.0},
        "by_source": {k: dict(v) for k, v in sorted(tally.by_source.items())},
        "by_level": {k: dict(v) for k, v in sorted(tally.by_level.items())},
        "quarantined": tally.quarantined,
        "skipped": tally.skipped,
        "normalization": tally.normalization(),
        "outputs": {"webdataset": [str(p.relative_to(output)) for p in shards],
                    "lance": [name for name in ("clips.lance", "flow.lance") if (output / name).exists()]},
        "recipe": json.loads(recipe.model_dump_json()),
        "versions": _versions(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("motus-pyramid", "ray", "pylance", "webdataset", "torch", "opencv-python", "av", "decord"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found

