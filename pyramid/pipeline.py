"""`pyramid build`: wires the stages into a Ray Data pipeline, then packs, indexes and reports.

1. discover episodes lazily, in windows, skipping those already staged (resume);
2. Ray Data per window: decode -> flow -> (label) -> stage, as one CPU actor per core, or as
   separate stages with GPU actors for learned flow and the VAE;
3. concatenate the staged shard members into WebDataset shards per level (resumable), commit the staged
   Lance rows (finalize never decodes or re-reads a clip, and does not run discovery again);
4. write `manifest.json` and `report.html`, then remove the staging directory.
This module holds no format knowledge: readers, stages and sinks do.

On a cluster (`--address`), the output directory and every source root must be on a filesystem
that all nodes see at the same path: workers write staged episodes there (`cluster.py` checks each
node before the work starts).
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import pickle
import re
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pyramid.atomic import atomic_write_bytes, is_temporary, remove_temporaries
from pyramid.cluster import NODE_CHECK_PREFIX, check_nodes_see, largest_node_cpus, ray_address
from pyramid.errors import BuildError, EpisodeError, OutputFullError, SourceError, debugging, one_line, output_full
from pyramid.locks import exclusive
from pyramid.paths import overlap_problem, under_a_file
from pyramid.recipe import Recipe
from pyramid.sources.base import DuplicateIds, colliding_roots

# Episodes handed to Ray at a time: bounds driver memory on huge trees. Actor pools (and the models they load) are
# rebuilt once per window and its tail waits for the slowest worker, so a window holds enough episodes per worker
# that both are a few percent of it, however large the cluster.
WINDOW_EPISODES = 2048
WINDOW_EPISODES_PER_WORKER = 64


@dataclass
class BuildResult:
    output: Path
    manifest: dict
    up_to_date: bool = False
    failed_fraction: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    ray: str = ""  # which Ray the build ran on (started, reused, or a cluster's address)


def discover(recipe: Recipe) -> Iterator[dict]:
    """One small row per episode over every source, in a deterministic order.

    A second episode with an id already seen (a duplicated metadata entry) gets an id of its own and
    an `error`, so it is quarantined instead of sharing, or overwriting, the first one's staged work.
    """
    order = itertools.count()
    duplicates = DuplicateIds()
    for source_index, spec in enumerate(recipe.sources):
        reader = spec.open_reader()
        refs = _discovery_of(spec, reader)
        if recipe.max_episodes:
            refs = itertools.islice(refs, recipe.max_episodes)
        for ref in refs:
            episode_id = ref.episode_id  # carries the root's folder name: two datasets of one kind keep apart
            row = {"order": next(order), "source_index": source_index, "episode_id": episode_id,
                   "source": ref.source, "root": ref.root, "relpath": ref.relpath, "path": str(ref.path),
                   "level": reader.level, "locator": pickle.dumps(ref.locator), "error": ref.error}
            if problem := duplicates.problem(episode_id, row["path"]):
                row = {**row, "episode_id": f"{episode_id}-dup{row['order']}", "error": problem}
            yield row


def _discovery_of(spec, reader) -> Iterator:
    """The reader's refs; a reader that cannot go on (its own bug, or a disk error) stops the build in one line."""
    try:
        yield from reader.discover()
    except (EpisodeError, SourceError, OSError, ValueError, KeyError) as exc:
        raise BuildError(f"source '{spec.kind}' at {spec.root}: discovery stopped: {one_line(exc)}") from exc


def preflight(recipe: Recipe) -> None:
    """What the driver can check before Ray starts: every source opens, the output can be written."""
    for spec in recipe.sources:
        try:
            first = next(iter(spec.open_reader().discover()), None)  # a missing index or an unsupported version fails here
        except (SourceError, EpisodeError) as exc:
            raise BuildError(f"source '{spec.kind}': {exc}") from None
        if first is None:  # a root one folder off, or an empty download: the build would succeed with none of it
            raise BuildError(f"source '{spec.kind}' at {spec.root}: no episode found: is it the dataset's root?")
    if recipe.vae:
        check_vae_config(recipe)
    if problem := overlap_problem(recipe.output, [spec.root for spec in recipe.sources], "the output"):
        raise BuildError(problem)
    check_output_ours(Path(recipe.output))
    check_output_writable(Path(recipe.output))


def check_vae_config(recipe: Recipe) -> None:
    """The recipe's VAE exists and was trained on flow made as this recipe makes it (its config.json only)."""
    from diffusers.configuration_utils import FrozenDict

    from latent_action.checkpoint import read_vae_config, required_weights, resolve_checkpoint
    from pyramid.stages import check_vae_matches

    try:
        path = resolve_checkpoint(recipe.vae) / "config.json"
        required_weights(path.parent)  # torn weights fail here, not in every worker once Ray has started
        config = read_vae_config(path.parent)
    except (EpisodeError, OSError) as exc:
        raise BuildError(str(exc)) from None
    try:
        check_vae_matches(FrozenDict(config), recipe)
    except ValueError as exc:
        raise BuildError(str(exc)) from None
    except (TypeError, KeyError, AttributeError) as exc:  # a JSON file, but not a VAE's config
        raise BuildError(f"{path}: not a latent-action VAE's config ({exc.__class__.__name__}: {one_line(exc)})") from None


LOCK_FILE = ".build.lock"
WRITE_CHECK_PREFIX = ".write-check-"
# What a build leaves in its output besides its outputs: the lock, probes killed before their removal (and files
# under their temporary names, `is_temporary`).
BUILD_LEFTOVERS = (LOCK_FILE, f"{WRITE_CHECK_PREFIX}*", f"{NODE_CHECK_PREFIX}*")


def check_output_ours(output: Path) -> None:
    """A build writes into a new or empty directory, or into one of its own (finished, stopped with work staged, or
    holding only what builds write): it replaces `webdataset/`, the Lance datasets and the report there, so a
    directory holding anything else is refused."""
    if not output.is_dir() or (output / "manifest.json").exists() or (output / "_staging").is_dir():
        return
    if others := _not_written_by_a_build(output):
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise BuildError(f"{output}: holds files no build wrote ({shown}); a build writes only into a new or empty "
                         f"directory or one of its own: choose another output directory")


def _not_written_by_a_build(output: Path) -> list[str]:
    """The entries of `output` (relative paths) that are not a build's: its shards by level, its Lance datasets, its
    report and its leftovers."""
    from pyramid.sinks.lance_sink import written_by

    others = []
    for path in sorted(output.iterdir()):
        if path.name == "webdataset" and path.is_dir():
            others += _not_shards(path)
        elif path.name in ("clips.lance", "flow.lance") and written_by(path) is not None:
            continue
        elif path.name != "report.html" and not is_temporary(path) and not any(path.match(p) for p in BUILD_LEFTOVERS):
            others.append(path.name)
    return others


def _not_shards(folder: Path) -> list[str]:
    """What a `webdataset/` folder holds besides level folders of shards (and shards being written)."""
    others = []
    for level in sorted(folder.iterdir()):
        if not (level.is_dir() and re.fullmatch(r"level\d+", level.name)):
            others.append(f"webdataset/{level.name}")
            continue
        others += [f"webdataset/{level.name}/{shard.name}" for shard in sorted(level.iterdir())
                   if not re.fullmatch(r"\.?shard-\d+\.tar(\.tmp)?", shard.name)]
    return others


def check_output_writable(output: Path) -> None:
    """The output directory exists or can be made, and accepts files; else one line saying why."""
    if problem := under_a_file(output):
        raise BuildError(problem)
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f"{WRITE_CHECK_PREFIX}{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise BuildError(f"{output}: cannot write the output here ({exc.strerror or exc})") from None


def check_unique_roots(recipe: Recipe) -> None:
    if problem := colliding_roots((spec.kind, spec.root) for spec in recipe.sources):
        raise BuildError(problem)


def _with_checkpoint(recipe: Recipe) -> Recipe:
    """The recipe with `vae` pointing at one checkpoint (a training run names its latest), so the build's
    fingerprint and manifest say which weights labelled it."""
    if not recipe.vae:
        return recipe
    from latent_action.checkpoint import resolve_checkpoint

    try:
        return recipe.model_copy(update={"vae": str(resolve_checkpoint(recipe.vae))})
    except EpisodeError as exc:
        raise BuildError(str(exc)) from None


def build(recipe: Recipe, address: str | None = None, workers: int | None = None, progress: bool = True,
          retry_failed: bool = False) -> BuildResult:
    if workers is not None and workers < 1:
        raise BuildError(f"--workers: a build needs at least 1 worker per stage, got {workers}")
    recipe = _with_checkpoint(recipe)
    output = Path(recipe.output)
    fingerprint = recipe.content_fingerprint()
    if (finished := _finished_build(output, fingerprint, retry_failed)) is not None:
        return finished
    check_unique_roots(recipe)
    which_ray = ray_address(address)  # before anything is written: an address where no Ray answers is refused
    preflight(recipe)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    from pyramid.finalize import finalize

    with exclusive(output, LOCK_FILE, "another build is writing here"), _stopped_when_output_full(output):
        remove_temporaries(output)  # a manifest or report a killed build left under its temporary name
        if (finished := _finished_build(output, fingerprint, retry_failed)) is not None:
            return finished  # by another build, after the check above and before this one took the lock
        with _ray_session(which_ray, progress) as session:
            timings["ray_start"] = time.perf_counter() - started
            check_nodes_see([spec.root for spec in recipe.sources], output)
            _claim_staging(output, fingerprint, retry_failed)
            started = time.perf_counter()
            _process_episodes(recipe, workers)
            timings["process"] = time.perf_counter() - started
        manifest = finalize(recipe, fingerprint, timings, progress)
    return BuildResult(output, manifest, failed_fraction=manifest["episodes"]["failed_fraction"], timings=timings, ray=session.which)


def _finished_build(output: Path, fingerprint: str, retry_failed: bool) -> BuildResult | None:
    """The build already finished in `output` by this recipe, if there is one."""
    manifest_path = output / "manifest.json"
    if not manifest_path.exists():
        return None
    manifest = _read_manifest(manifest_path)
    if manifest.get("recipe_fingerprint") != fingerprint:
        raise BuildError(f"{output}: holds a finished build of a different recipe; choose another output directory")
    if retry_failed and manifest["episodes"]["failed"]:
        raise BuildError(f"{output}: --retry-failed works on an unfinished build; this one is finished and its "
                         f"{manifest['episodes']['failed']} quarantined episode(s) are packed around, so retrying "
                         f"them means building again: delete {output} or build into a new directory")
    shutil.rmtree(output / "_staging", ignore_errors=True)
    return BuildResult(output, manifest, up_to_date=True, failed_fraction=manifest["episodes"]["failed_fraction"])


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BuildError(f"{path}: unreadable ({exc.__class__.__name__}); this output is no finished build: "
                         f"delete {path.parent} or choose another output directory") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("episodes"), dict):
        raise BuildError(f"{path}: not a build manifest; delete {path.parent} or choose another output directory")
    return manifest


def _claim_staging(output: Path, fingerprint: str, retry_failed: bool) -> None:
    """Staged work is reused only by the recipe that made it; a staging directory without a finished episode
    (a build that stopped before any, say on a misspelt option) is taken over by whichever recipe comes next."""
    from pyramid.staging import Staging

    staging = Staging(output)
    marker = staging.recipe_marker
    if marker.exists() and _staged_fingerprint(marker) != fingerprint:
        if staging.status_files():
            raise BuildError(f"{output}: holds an unfinished build of a different recipe; rerun that recipe, "
                             f"or delete {staging.dir} to start over")
        shutil.rmtree(staging.dir)
        staging = Staging(output)
    atomic_write_bytes(marker, json.dumps({"fingerprint": fingerprint}).encode())  # torn, it would refuse the rerun
    if retry_failed:
        retried = [path for path in staging.status_files() if json.loads(path.read_text()).get("status") == "failed"]
        for status_path in retried:
            status_path.unlink()
        if retried:  # a finalize that was stopped packed shards without them: pack every staged episode again
            from pyramid.sinks.webdataset_sink import pack_state_path

            pack_state_path(output).unlink(missing_ok=True)


def _staged_fingerprint(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get("fingerprint")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None  # unreadable: it vouches for no recipe


def _process_episodes(recipe: Recipe, workers: int | None) -> None:
    from pyramid.staging import Staging

    from pyramid.clips import PART_FRAMES

    staging = Staging(Path(recipe.output))
    if on_gpus := gpu_steps(recipe):
        check_cpus_for_gpu_stages(recipe)
        print(f"pyramid build: {' and '.join(on_gpus.names())} on the cluster's GPUs, decoding and staging on CPU workers, "
              f"episodes in parts of {PART_FRAMES} stored frames", file=sys.stderr, flush=True)
    pending = (row for row in staging.record_episodes(discover(recipe)) if not staging.status_path(row["episode_id"]).exists())
    while window := list(itertools.islice(pending, window_episodes(workers))):
        _process_window(window, recipe, workers, staging)


@dataclass(frozen=True)
class GpuSteps:
    """Which steps run on the cluster's GPUs: learned flow and labelling, where it has GPUs."""

    flow: bool
    label: bool

    def __bool__(self) -> bool:
        return self.flow or self.label

    def names(self) -> list[str]:
        return [name for name, on_gpu in (("learned flow", self.flow), ("labelling", self.label)) if on_gpu]


def gpu_steps(recipe: Recipe) -> GpuSteps:
    """The steps that run on GPUs (none: one CPU actor per worker runs every step)."""
    import ray

    has_gpus = bool(ray.cluster_resources().get("GPU", 0))
    return GpuSteps(flow=has_gpus and recipe.flow.backend.startswith("ptlflow"), label=has_gpus and recipe.vae is not None)


def check_cpus_for_gpu_stages(recipe: Recipe) -> None:
    """The GPU layout holds a CPU (as Ray counts them) for each of its actors and needs one more to decode: with
    fewer, Ray Data would wait `wait_for_min_actors_s` for actors that cannot start, then fail."""
    import ray

    holders = ["a decode task", "a flow actor", *(["a labelling actor"] if recipe.vae else []), "a staging actor"]
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < len(holders):
        raise BuildError(f"a build on GPUs needs at least {len(holders)} CPUs as Ray counts them ({', '.join(holders)}); "
                         f"this cluster has {cpus}: give its nodes more (`ray start --num-cpus`, a count, not cores)")


def window_episodes(workers: int | None) -> int:
    """How many episodes a window holds: at least `WINDOW_EPISODES_PER_WORKER` for each worker (one per CPU of the
    cluster unless `--workers` says otherwise)."""
    import ray

    workers = workers or int(ray.cluster_resources().get("CPU", 1))
    return max(WINDOW_EPISODES, WINDOW_EPISODES_PER_WORKER * workers)


def _process_window(window: list[dict], recipe: Recipe, workers: int | None, staging) -> None:
    """Run a window of episodes; when a worker dies (a segfault, an OOM kill), find the episode that killed it
    and run the rest together again.

    The culprit is among the episodes a worker had begun (`Staging.mark_started`) and not finished: each of those
    runs alone. Running every unfinished episode alone instead would cost each one a worker start, on one core: a
    crash early in a window of thousands would take hours.
    """
    while todo := [row for row in window if not staging.status_path(row["episode_id"]).exists()]:
        if _died_in(todo, recipe, workers) is None:
            return
        unfinished = [row for row in todo if not staging.status_path(row["episode_id"]).exists()]
        suspects = [row for row in unfinished if staging.started(row["episode_id"])] or unfinished
        print(f"pyramid build: a worker died; running alone each of the {len(suspects)} episode(s) it may have "
              f"died on, then the window's other {len(unfinished) - len(suspects)}", file=sys.stderr, flush=True)
        _isolate_crashes(suspects, recipe, staging)


def _died_in(window: list[dict], recipe: Recipe, workers: int | None) -> str | None:
    """Run a window; None when it finished, else the name of the error that ended it.

    The error is not kept: its traceback would hold the failed dataset, whose surviving actors
    would then keep their CPUs and the next run would wait for them forever.
    """
    cannot_start = full = None
    try:
        for _ in _run_window(window, recipe, workers):
            pass
    except Exception as exc:  # noqa: BLE001 - whatever ended the run, the caller isolates episodes
        died = exc.__class__.__name__
        if getattr(exc, "actor_init_failed", False):  # no episode's fault: every worker would fail the same way
            cannot_start = _last_line(str(exc))
        full = _output_full_in_worker(exc)
    else:
        return None
    gc.collect()  # release the failed dataset's actors now
    if cannot_start is not None:
        raise BuildError(f"a build worker could not start: {cannot_start}")
    if full is not None:
        raise OutputFullError(full)
    return died


def _output_full_in_worker(exc: BaseException) -> str | None:
    """Why the output took no more writes, when a worker stopped on that (its OutputFullError reaches the driver
    wrapped by Ray, sometimes only as the text of its traceback)."""
    if why := output_full(exc):
        return why
    found = re.search(r"OutputFullError: (.+)", str(exc))
    return found.group(1).strip() if found else None


@contextmanager
def _stopped_when_output_full(output: Path) -> Iterator[None]:
    """A full disk (or quota, or a file system turned read-only) ends the build with one line; nothing is quarantined
    for it, so the same command resumes once there is room."""
    try:
        yield
    except (OutputFullError, OSError) as exc:
        why = str(exc) if isinstance(exc, OutputFullError) else output_full(exc)
        if not why:
            raise
        raise BuildError(f"{output}: cannot write the build here ({why}); make room and run the same command again: "
                         f"the build resumes where it stopped, and no episode was quarantined for this") from None


def _last_line(message: str) -> str:
    """The last line of a worker's error (its exception, below Ray's copy of the remote traceback), without the
    exception's module path."""
    line = next((line.strip() for line in reversed(message.splitlines()) if line.strip()), message)
    return re.sub(r"^(?:\w+\.)*WorkerSetupError: |^(?:\w+\.)+(?=\w+: )", "", line)


def _isolate_crashes(suspects: list[dict], recipe: Recipe, staging) -> None:
    """Rerun the suspects (unfinished episodes) one by one; one that kills its worker again is quarantined."""
    from pyramid.stages import failure

    for row in suspects:
        if (error := _died_in([row], recipe, 1)) is not None:
            staging.write_status(failure(row, f"{row['path']}: worker died while processing ({error})"), None)


@dataclass
class RaySession:
    which: str  # the line saying which Ray the build runs on

    def stop(self) -> None:
        """Leave Ray (and stop a local Ray's daemons, ~1 s) before finalize, on this thread: stopping it on a thread
        of its own while finalize ran was followed by rare crashes (SIGSEGV) of the build at its end."""
        import ray

        gc.collect()  # Ray objects left in cycles go while the driver is still connected
        ray.shutdown()


@contextmanager
def _project_importable(address: str) -> Iterator[dict | None]:
    """Workers must import this project the way the driver does, wherever the build was started from. A Ray this
    build starts inherits the driver's environment while `ray.init` starts it, so the workers Ray starts in advance
    can take the episodes (an actor that needs a runtime environment waits for a worker process of its own); a
    running Ray's workers get it as a runtime environment (the runtime_env to pass to `ray.init`)."""
    project_root = str(Path(__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(filter(None, [project_root, os.environ.get("PYTHONPATH")]))
    if address != "local":
        yield {"env_vars": {"PYTHONPATH": pythonpath}}
        return
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = pythonpath
    try:
        yield None
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


@contextmanager
def _ray_session(which_ray: tuple[str, str], progress: bool) -> Iterator[RaySession]:
    """Ray for the build (`cluster.ray_address`'s answer), named on stderr; left when the block ends (see `RaySession.stop`)."""
    import ray

    address, which = which_ray
    print(f"pyramid build: {which}", file=sys.stderr, flush=True)
    with _project_importable(address) as runtime_env:
        ray.init(address=address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=progress,
                 configure_logging=True, logging_level="ERROR")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = False
    # An episode is seconds of work: every worker starts before any gets one (Ray Data would otherwise hand
    # the first-ready worker a small window's every episode). Each worker holds its next episode while it
    # works on one: with one at a time, it idled ~0.2 s between episodes waiting for the executor (a sixth
    # of a short episode on 2 cores); two cost at most one episode's time at a window's tail.
    if not debugging():  # the build reports a worker's death and a full disk itself (isolating the episode, or in one line)
        for name in ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    # --quiet: not Ray Data's line that progress bars are off, nor its time per dataset (set either way: a program
    # may run quiet and then progress-showing builds in one process)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.NOTSET if progress else logging.ERROR)
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.NOTSET if progress else logging.WARNING)
    context.wait_for_min_actors_s = 600
    context.max_tasks_in_flight_per_actor = 2
    session = RaySession(which)
    try:
        yield session
    except BaseException:
        ray.shutdown()
        raise
    session.stop()  # a reused Ray keeps running: only this driver leaves it


def _run_window(window: list[dict], recipe: Recipe, workers: int | None) -> Iterator[dict]:
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    from pyramid.stages import EpisodeWorker, FlowStage, LabelStage, StageWriter, decode_parts

    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    pool = max(1, min(workers or cpus, len(window)))
    # A worker that dies is not retried with the same episode forever: the window fails and
    # `_isolate_crashes` finds the culprit. (Ray 2.60 takes these only as remote args, with a
    # deprecation warning we silence; pyproject pins Ray below 2.64, which removes them.)
    no_retries = {"max_restarts": 0, "max_task_retries": 0}
    warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
    dataset = ray.data.from_items(window, override_num_blocks=len(window))
    on_gpus = gpu_steps(recipe)
    flow_on_gpu, label_on_gpu = on_gpus.flow, on_gpus.label
    if not on_gpus:
        # A worker's CPUs must fit on one node: a window of fewer episodes than a cluster has CPUs asked for more than
        # any node has, and Ray waited for such a node (wait_for_min_actors_s) instead of starting the worker.
        threads = max(1, min(cpus // pool, largest_node_cpus()))
        dataset = dataset.map(EpisodeWorker, fn_constructor_kwargs={"recipe": recipe, "threads": threads},
                              compute=ActorPoolStrategy(size=pool), num_cpus=threads, **no_retries)
        yield from dataset.iter_rows()
        return
    # Flow and the VAE share each GPU when both run there, so neither waits for the other's device.
    gpu_share = 0.5 if flow_on_gpu and label_on_gpu else 1.0
    # One row per part of an episode (`PART_FRAMES` stored frames), made as the flow stage takes them: a long episode
    # is never decoded whole. Writers stage parts alone and the last one joins them (`Staging.stage_part`).
    dataset = dataset.flat_map(decode_parts, fn_kwargs={"recipe": recipe}, compute=TaskPoolStrategy(size=pool), max_retries=0)
    dataset = dataset.map(FlowStage, fn_constructor_kwargs={"recipe": recipe}, num_gpus=gpu_share if flow_on_gpu else 0,
                          compute=ActorPoolStrategy(min_size=1, max_size=gpus if flow_on_gpu else pool), **no_retries)
    if recipe.vae:
        dataset = dataset.map(LabelStage, fn_constructor_kwargs={"recipe": recipe}, num_gpus=gpu_share if label_on_gpu else 0,
                              compute=ActorPoolStrategy(min_size=1, max_size=gpus if label_on_gpu else pool), **no_retries)
    dataset = dataset.map(StageWriter, fn_constructor_kwargs={"recipe": recipe},
                          compute=ActorPoolStrategy(min_size=1, max_size=pool), **no_retries)
    yield from dataset.iter_rows()
