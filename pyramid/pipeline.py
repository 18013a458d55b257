"""`pyramid build`: wires the stages into a Ray Data pipeline, then packs, indexes and reports.

1. discover episodes lazily, in windows, skipping those already staged (resume);
2. Ray Data per window: decode -> flow (actor pool) -> label (actor pool, when a VAE is set) -> stage;
3. pack staged episodes into WebDataset shards per level (resumable), stream them into Lance;
4. write `manifest.json` and `report.html`, then remove the staging directory.
This module holds no format knowledge: readers, stages and sinks do.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pyramid.recipe import Recipe

WINDOW_EPISODES = 512  # episodes handed to Ray at a time: bounds driver memory on huge trees


@dataclass
class BuildResult:
    output: Path
    manifest: dict
    up_to_date: bool = False
    failed_fraction: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def recipe_fingerprint(recipe: Recipe) -> str:
    return hashlib.sha256(recipe.model_dump_json().encode()).hexdigest()[:16]


def discover(recipe: Recipe) -> Iterator[dict]:
    """One small row per episode over every source, in a deterministic order."""
    from pyramid.sources import get_source

    order = itertools.count()
    for source_index, spec in enumerate(recipe.sources):
        reader = get_source(spec.kind)(spec.root, level=spec.level, embodiment=spec.embodiment, **spec.options)
        refs = reader.discover()
        if recipe.max_episodes:
            refs = itertools.islice(refs, recipe.max_episodes)
        for ref in refs:
            yield {"order": next(order), "source_index": source_index, "episode_id": ref.episode_id,
                   "source": ref.source, "root": ref.root, "relpath": ref.relpath, "path": str(ref.path),
                   "level": reader.level, "locator": pickle.dumps(ref.locator)}


def build(recipe: Recipe, address: str | None = None, workers: int | None = None, progress: bool = True) -> BuildResult:
    output = Path(recipe.output)
    fingerprint = recipe_fingerprint(recipe)
    manifest_path = output / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("recipe_fingerprint") == fingerprint:
            shutil.rmtree(output / "_staging", ignore_errors=True)
            return BuildResult(output, manifest, up_to_date=True)
        raise RuntimeError(f"{output}: holds a finished build of a different recipe; choose another output directory")
    output.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    _process_episodes(recipe, address, workers, progress)
    timings["process"] = time.perf_counter() - started
    from pyramid.finalize import finalize

    manifest = finalize(recipe, fingerprint, timings, progress)
    return BuildResult(output, manifest, failed_fraction=manifest["episodes"]["failed_fraction"], timings=timings)


def _process_episodes(recipe: Recipe, address: str | None, workers: int | None, progress: bool) -> None:
    from pyramid.staging import Staging

    staging = Staging(Path(recipe.output))
    pending = (row for row in discover(recipe) if not staging.status_path(row["episode_id"]).exists())
    while window := list(itertools.islice(pending, WINDOW_EPISODES)):
        _init_ray(address, progress)
        for _ in _run_window(window, recipe, workers):
            pass


def _init_ray(address: str | None, progress: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Workers must import this project the way the driver does, wherever the build was started from.
    project_root = str(Path(__file__).resolve().parent.parent)
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [project_root, os.environ.get("PYTHONPATH")]))}}
    ray.init(address=address, runtime_env=env, include_dashboard=False, log_to_driver=progress,
             configure_logging=True, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = False


def _run_window(window: list[dict], recipe: Recipe, workers: int | None) -> Iterator[dict]:
    import ray
    from ray.data import ActorPoolStrategy

    from pyramid.stages import EpisodeWorker, FlowStage, LabelStage, StageWriter, decode_episode

    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    pool = max(1, min(workers or cpus, len(window)))
    dataset = ray.data.from_items(window, override_num_blocks=len(window))
    flow_on_gpu = gpus > 0 and recipe.flow.backend.startswith("ptlflow")
    label_on_gpu = gpus > 0 and recipe.vae is not None
    if not (flow_on_gpu or label_on_gpu):
        # CPU only: one actor per core runs every stage, so decoded frames never cross processes.
        threads = max(1, cpus // pool)
        dataset = dataset.map(EpisodeWorker, fn_constructor_kwargs={"recipe": recipe, "flow_threads": threads},
                              compute=ActorPoolStrategy(size=pool), num_cpus=threads)
        yield from dataset.iter_rows()
        return
    dataset = dataset.map(decode_episode, fn_kwargs={"recipe": recipe}, compute=ray.data.TaskPoolStrategy(size=pool))
    dataset = dataset.map(FlowStage, fn_constructor_kwargs={"recipe": recipe}, num_gpus=1 if flow_on_gpu else 0,
                          compute=ActorPoolStrategy(min_size=1, max_size=gpus if flow_on_gpu else pool))
    if recipe.vae:
        dataset = dataset.map(LabelStage, fn_constructor_kwargs={"recipe": recipe}, num_gpus=1 if label_on_gpu else 0,
                              compute=ActorPoolStrategy(min_size=1, max_size=gpus if label_on_gpu else pool))
    dataset = dataset.map(StageWriter, fn_constructor_kwargs={"recipe": recipe}, compute=ActorPoolStrategy(min_size=1, max_size=pool))
    yield from dataset.iter_rows()
