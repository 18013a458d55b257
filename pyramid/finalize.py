"""After every episode is staged: pack shards, write Lance, merge statistics, write the manifest and report.

Everything here streams over the staging directory in discovery order, one episode at a time, and
only concatenates or commits what the workers wrote: shards are staged tar members end to end, Lance
datasets are the staged Arrow rows, statistics and previews come from each episode's status.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
import zlib
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from pyramid.errors import BuildError
from pyramid.recipe import Recipe
from pyramid.atomic import atomic_write_bytes
from pyramid.staging import StagedFileDamaged, Staging
from pyramid.stats import SHARED_ARRAYS, RunningStats

PREVIEW_EPISODES = 4  # flow previews in the report
LATENT_PREVIEW_EPISODES = 8


class Tally:
    """Counts, hours, quarantine list and normalisation statistics, accumulated episode by episode."""

    def __init__(self):
        self.episodes = defaultdict(int)
        self.by_source = defaultdict(lambda: defaultdict(float))
        self.by_level = defaultdict(lambda: defaultdict(float))
        self.quarantined: list[dict] = []
        self.skipped: list[dict] = []
        self.stats: dict[str, dict[str, RunningStats]] = defaultdict(dict)
        self.shared: dict[str, RunningStats] = {}  # over every embodiment: the arrays of one space shared by all
        self.stage_seconds: dict[str, float] = defaultdict(float)  # summed over episodes: worker time per stage
        self.by_node: dict[str, int] = defaultdict(int)  # built episodes per Ray node id

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

    def add_stats(self, embodiment: str, stats: dict[str, dict]) -> None:
        """Merge one episode's `partial_stats` per array (in discovery order, so the result is deterministic)."""
        for name, partial in stats.items():
            self._stats_for(embodiment, name, len(partial["sum"])).merge(partial)
            if name in SHARED_ARRAYS:
                if name not in self.shared:
                    self.shared[name] = RunningStats(len(partial["sum"]), seed=zlib.crc32(name.encode()))
                self.shared[name].merge(partial)

    def add_stage_seconds(self, seconds: dict[str, float]) -> None:
        for stage, value in seconds.items():
            self.stage_seconds[stage] += value

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

    def shared_normalization(self) -> dict:
        return {name: stats.summary() for name, stats in sorted(self.shared.items())}


def finalize(recipe: Recipe, fingerprint: str, timings: dict[str, float], progress: bool = True) -> dict:
    from pyramid.report import write_report
    from pyramid.sinks.webdataset_sink import ShardPacker

    output = Path(recipe.output)
    staging = Staging(output)
    packer = ShardPacker(output, int(recipe.shard_size_mb * 2**20), fingerprint)
    tally = Tally()
    kept: list[dict] = []  # episode id and staged sizes of each built episode, for the Lance pass
    previews: list[dict] = []
    started = time.perf_counter()
    for row in tqdm(staging.episodes(), desc="pack shards", unit="episode", disable=not progress):
        status = staging.status(row["episode_id"])
        if status is None:
            raise BuildError(f"{row['path']}: episode was not processed; run the build again")
        tally.add_status(status)
        if status["status"] != "ok":
            continue
        tally.add_stats(status["embodiment"], status.get("stats", {}))
        tally.add_stage_seconds(status.get("stage_seconds", {}))
        tally.by_node[status.get("node") or "driver"] += 1
        kept.append({"episode_id": status["episode_id"], "staged_bytes": _staged_sizes(staging, status)})
        if len(previews) < LATENT_PREVIEW_EPISODES and "preview_png" in status:
            previews.append({key: status[key] for key in ("episode_id", "preview_png", "preview_heading", "preview_latents") if key in status})
        if "webdataset" in recipe.formats and not packer.already_packed(row["order"], row["episode_id"], status["level"]):
            packer.add(row["order"], row["episode_id"], status["level"], _checked(staging, status, "tar"), status["clips"])
    packer.finish()
    timings["pack"] = time.perf_counter() - started
    started = time.perf_counter()
    from pyramid.sinks.lance_sink import write_clips, write_flow

    if kept:
        if "lance" in recipe.formats:
            write_clips(output, staging, lambda: kept, fingerprint)
        if recipe.flow.store:
            write_flow(output, staging, lambda: kept, fingerprint)
    timings["lance"] = time.perf_counter() - started
    timings.update({f"worker_{stage}": seconds for stage, seconds in sorted(tally.stage_seconds.items())})
    manifest = _manifest(recipe, fingerprint, tally, packer.shards(), timings)
    write_report(output, manifest, previews[:PREVIEW_EPISODES], [p["preview_latents"] for p in previews if "preview_latents" in p])
    atomic_write_bytes(output / "manifest.json", json.dumps(manifest, indent=2, allow_nan=False).encode())
    shutil.rmtree(staging.dir, ignore_errors=True)
    return manifest


def _staged_sizes(staging: Staging, status: dict) -> dict[str, int]:
    """The episode's staged files and sizes, each checked now (Lance would bury an error raised while it reads)."""
    if "staged_bytes" not in status:
        raise BuildError(f"{staging.status_path(status['episode_id'])}: staged by an older version of pyramid; "
                         f"delete {staging.dir} and build again")
    for suffix in status["staged_bytes"]:
        _checked(staging, status, suffix)
    return status["staged_bytes"]


def _checked(staging: Staging, status: dict, suffix: str) -> Path:
    try:
        return staging.checked_path(status, suffix)
    except StagedFileDamaged as exc:
        raise _redo(staging, exc) from None


def _redo(staging: Staging, exc: StagedFileDamaged) -> BuildError:
    """Forget the damaged episode (its status is removed), so the next run processes it again."""
    staging.status_path(exc.episode_id).unlink(missing_ok=True)
    return BuildError(f"{exc}: its episode will be processed again; run the build again")


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
        "shared_normalization": tally.shared_normalization(),
        "outputs": {"webdataset": [str(p.relative_to(output)) for p in shards],
                    "lance": [name for name in ("clips.lance", "flow.lance") if (output / name).exists()]},
        "recipe": json.loads(recipe.model_dump_json()),
        "versions": _versions(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "episodes_by_node": dict(sorted(tally.by_node.items())),
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

