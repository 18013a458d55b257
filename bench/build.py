"""Build throughput and memory, measured in one run on sample data.

Prints, for the same episodes at 384x320:
  (a) a plain serial loop (decode, DIS flow, flow-RGB PNGs, one H.264 file per episode, written in turn), and the
      same loop writing the build's formats (stored flow, one H.264 file per clip),
  (b) `pyramid build` with 1 and 2 workers on a local Ray each build starts (what one build costs),
  (c) the 2-worker build on a local Ray that `ray start` left running (what each of many builds costs),
  (d) the same build on a two-node cluster of `ray start` nodes on this machine (1 CPU each, `--address`),
and the decode-only and flow-only CPU seconds (the bound: their sum spread over 2 cores; also measured as decode + flow alone
in 2 processes at once, which shows what running two at once costs on this machine), the
seconds per stage of the 2-worker build (summed over its workers, from its manifest) and the fixed costs they leave
over (Ray's start, the workers' start and tail, the CLI around them), then the peak
memory (RSS of the build's whole process tree and its Ray daemons) for 10 and 100 episodes, and for one video of
300 and one of 3000 frames (30 s and 5 min: a worker holds a part of a long episode at a time).
Targets on 2 cores: build >= 1.8x serial, >= 0.8x the bound; peak RSS 100/10 episodes <= 1.2.
Figures are ratios within this run: on a shared machine other jobs slow every row alike.
Episodes are 20 s at 10 fps (200 frames), as robot teleoperation episodes run 10-60 s; far shorter
ones measure mostly Ray's start-up and finalize. The memory runs use 60-frame episodes: what grows
with a dataset is the episode count.

    .venv/bin/python bench/build.py [--episodes 24] [--frames 200] [--skip-memory] [--skip-cluster]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flow.dis import DEFAULT_PRESET  # noqa: E402
from pyramid.clips import PART_FRAMES, resize_frames  # noqa: E402
from pyramid.sample_data import write_sample_data  # noqa: E402
from pyramid.sources import get_source  # noqa: E402
from tests.fixtures.ray_cluster import LocalCluster  # noqa: E402

CLI = [sys.executable, "-m", "pyramid"]
CLIP_FRAMES = 20
STAGES = {"decode": "decode + resize", "flow": "DIS flow", "flow_stats": "motion statistics", "flow_pack": "flow rounding + zstd",
          "flow_encode": "flow rows", "flow_rgb": "flow -> RGB (VAE)", "label": "latent actions",
          "video_encode": "H.264 clips", "stage_write": "staged writes"}


def write_recipe(workdir: Path, data: Path, output: str, kind: str = "lerobot") -> Path:
    recipe = {"sources": [{"kind": kind, "root": str(data / kind)}], "output": str(workdir / output),
              "video_size": [384, 320], "fps": 10, "clip_frames": CLIP_FRAMES, "formats": ["webdataset", "lance"],
              "flow": {"backend": "dis"}, "filters": {"min_frames": 8, "static_motion_threshold": 0.0}}
    path = workdir / f"{output}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def serial_loop(data: Path, out: Path, builds_formats: bool = False) -> tuple[float, int, int]:
    """The loop a user would write first: read, decode, DIS, encode and write each episode in turn, the flow as
    flow-RGB PNGs and the episode as one mp4. With `builds_formats`, the outputs a build makes instead: the flow
    as `flow.storage` stores it and one mp4 per 20-frame clip (what the build's speed-up owes to scaling alone)."""
    import flow
    from flow import storage
    from pyramid.staging import mp4_bytes, png_bytes

    out.mkdir(parents=True, exist_ok=True)
    backend = flow.get_backend("dis", threads=1)
    reader = get_source("lerobot")(data / "lerobot")
    started, episodes, pairs = time.perf_counter(), 0, 0
    for ref in reader.discover():
        frames = resize_frames(reader.load(ref).frames(), (384, 320))
        flows = backend.sequence(frames)
        if builds_formats:
            for start in range(0, len(frames), CLIP_FRAMES):
                (out / f"{ref.episode_id}_c{start}.mp4").write_bytes(mp4_bytes(frames[start : start + CLIP_FRAMES], 10.0))
            for i, blob in enumerate(storage.pack_pairs(flows)):
                (out / f"{ref.episode_id}_{i}.npy.zst").write_bytes(blob)
        else:
            (out / f"{ref.episode_id}.mp4").write_bytes(mp4_bytes(frames, 10.0))
            for i, rgb in enumerate(flow.to_rgb(flows)):
                (out / f"{ref.episode_id}_{i}.png").write_bytes(png_bytes(rgb))
        episodes, pairs = episodes + 1, pairs + len(flows)
    return time.perf_counter() - started, episodes, pairs


def bounds(data: Path, part: int = 0, parts: int = 1) -> tuple[float, float]:
    """CPU seconds to only decode, and to only compute flow, for the same episodes (one process); with `parts`,
    only every parts-th episode from the `part`-th. CPU, not wall, seconds: the decoder runs threads of its own, so on
    an idle machine its wall time undercounts the work that a busy machine's cores must do."""
    import flow

    backend = flow.get_backend("dis", threads=1)
    reader = get_source("lerobot")(data / "lerobot")
    decode_s = flow_s = 0.0
    reused = None  # the flow array a build's worker reuses between episodes
    for ref in itertools.islice(reader.discover(), part, None, parts):
        t0 = time.process_time()
        frames = resize_frames(reader.load(ref).frames(), (384, 320))
        t1 = time.process_time()
        if reused is None or len(reused) < len(frames) - 1:
            reused = np.empty((len(frames) - 1, 384, 320, 2), np.float32)
        backend.sequence(frames, out=reused)
        flow_s += time.process_time() - t1
        decode_s += t1 - t0
    return decode_s, flow_s


def parallel_bound(data: Path, processes: int = 2) -> float:
    """Wall seconds of decode + flow alone in `processes` processes at once, each on its share of the episodes:
    the bound as this machine delivers it, with the processes contending for memory and caches as workers do."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_bound_part, args=(data, part, processes, barrier, results)) for part in range(processes)]
    for worker in workers:
        worker.start()
    walls = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return max(walls)


def _bound_part(data: Path, part: int, parts: int, barrier, results) -> None:
    barrier.wait()  # both start once both have imported
    started = time.perf_counter()
    bounds(data, part, parts)
    results.put(time.perf_counter() - started)


def timed_build(recipe: Path, *args: str, env: dict | None = None) -> tuple[float, int, dict]:
    """Wall seconds of `pyramid build` (Ray start included), the peak RSS of its process tree, its manifest."""
    command = [*CLI, "build", str(recipe), "--quiet", *args]
    env = {**(env or os.environ), "PYTHONFAULTHANDLER": "1"}  # a crash prints where it happened
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    peak = PeakRss(process.pid)
    peak.start()
    output, _ = process.communicate()
    peak.stop()
    if process.returncode != 0:
        raise SystemExit(f"build of {recipe} failed (exit {process.returncode}):\n{output[-3000:]}")
    manifest = json.loads((Path(yaml.safe_load(recipe.read_text())["output"]) / "manifest.json").read_text())
    return time.perf_counter() - started, peak.value, manifest


class PeakRss(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root, self.value, self.running = psutil.Process(pid), 0, True
        self.since = time.time() - 1

    def run(self) -> None:
        while self.running:
            try:
                tree = [self.root, *self.root.children(recursive=True)]
                self.value = max(self.value, sum(_rss(p) for p in tree) + self._ray_rss())
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.05)

    def _ray_rss(self) -> int:
        # Ray's raylet and GCS are daemonised, so they are not children of the build; only those it started count.
        return sum(_rss(p) for p in psutil.process_iter(["name", "create_time"])
                   if (p.info["name"] or "").startswith(("raylet", "gcs_server")) and (p.info["create_time"] or 0) >= self.since)

    def stop(self) -> None:
        self.running = False
        self.join()


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def print_breakdown(manifest: dict, wall_s: float, bound_s: float, workers_used: int = 2) -> None:
    timings = manifest["timings_s"]
    workers = {stage: timings.get(f"worker_{stage}", 0.0) for stage in STAGES}
    total = sum(workers.values())
    print("\nwhere the 2-worker build's time goes (worker seconds summed over workers, then the driver's):")
    for stage, seconds in workers.items():
        if seconds:
            print(f"  worker {STAGES[stage]:<22}{seconds:8.2f} s  {seconds / total:6.1%}")
    for stage in ("ray_start", "process", "pack", "lance"):
        print(f"  driver {stage:<22}{timings.get(stage, 0.0):8.2f} s")
    storage = workers["flow_pack"] + workers["flow_encode"]
    print(f"  flow storage (rounding + zstd + rows) / flow: {storage / workers['flow']:.2f}")
    # The fixed costs, as what the measured times leave over (the workers' stage times do not cover their start)
    idle = timings.get("process", 0.0) - total / workers_used
    outside = wall_s - timings.get("ray_start", 0.0) - timings.get("process", 0.0)
    print(f"  processing beyond each worker's stage time: {idle:.2f} s (workers starting, waiting for one another, the window's tail)")
    print(f"  outside Ray's start and the processing: {outside:.2f} s (the CLI's start, finalize, report, Ray's shutdown, exit)")
    # What a build of many more episodes approaches, where the fixed costs above are spread thin: the workers' own work.
    print(f"  the bound / each worker's stage seconds: {bound_s / (total / workers_used):.2f}x (fixed costs left out: "
          f"what a long build approaches; decode + flow are {(workers['decode'] + workers['flow']) / total:.0%} of the workers' work)")
    # The most any build that encodes its clips could reach: its workers doing decode, flow and clips and nothing else.
    least = workers["decode"] + workers["flow"] + workers["video_encode"]
    print(f"  the bound / each worker's decode + flow + clip seconds: {bound_s / (least / workers_used):.2f}x (a build "
          f"that did nothing but these, with no fixed costs: the ceiling while clips are encoded on the same cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--frames", type=int, default=200, help="Frames per episode (10 fps).")
    parser.add_argument("--memory-frames", type=int, default=60, help="Frames per episode of the memory runs.")
    parser.add_argument("--long-frames", type=int, default=3000, help="Frames of the long video of the memory runs "
                        "(10 fps; it is built beside one a tenth as long).")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-cluster", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        data = workdir / "data"
        write_sample_data(data, robot_episodes=args.episodes, video_clips=1, seed=0, num_frames=args.frames)
        serial_s, episodes, pairs = serial_loop(data, workdir / "serial")
        same_formats_s, _, _ = serial_loop(data, workdir / "serial-formats", builds_formats=True)
        decode_s, flow_s = bounds(data)
        bound_s = (decode_s + flow_s) / 2  # both stages spread evenly over 2 cores
        measured_bound_s = parallel_bound(data)
        rows = [("serial loop", serial_s), ("serial, the build's formats", same_formats_s), ("decode only (CPU s)", decode_s),
                ("flow only (CPU s)", flow_s), ("bound on 2 cores", bound_s), ("decode+flow, 2 processes", measured_bound_s)]
        manifests, walls = {}, {}
        for workers in (1, 2):
            walls[workers], _, manifests[workers] = timed_build(write_recipe(workdir, data, f"build{workers}"), "--workers", str(workers))
            rows.append((f"build, {workers} worker{'s' * (workers > 1)}", walls[workers]))
        with LocalCluster(workdir, labels=("node_local",), cpus=2) as running:
            seconds, _, _ = timed_build(write_recipe(workdir, data, "reused"), "--workers", "2", env=running.env)
            rows.append(("build, 2 workers, Ray reused", seconds))
        if not args.skip_cluster:
            with LocalCluster(workdir) as cluster:
                seconds, _, manifest = timed_build(write_recipe(workdir, data, "cluster"), "--address", cluster.address, env=cluster.env)
                rows.append(("build on 2 nodes x 1 CPU", seconds))
                nodes = manifest["episodes_by_node"]
        print(f"{episodes} episodes, {pairs} flow pairs at 384x320, {args.frames} source frames each; DIS preset {DEFAULT_PRESET}")
        print(f"{'run':<30}{'seconds':>9}{'episodes/min':>14}{'pairs/s':>10}{'vs serial':>11}{'vs bound':>10}")
        for name, seconds in rows:
            print(f"{name:<30}{seconds:>9.2f}{episodes / seconds * 60:>14.1f}{pairs / seconds:>10.1f}"
                  f"{serial_s / seconds:>10.2f}x{bound_s / seconds:>9.2f}x")
        built = dict(rows)
        for name in ("build, 2 workers", "build, 2 workers, Ray reused"):
            print(f"{name}: {serial_s / built[name]:.2f}x serial (target >= 1.8), {bound_s / built[name]:.2f}x the bound (target >= 0.8); "
                  f"{same_formats_s / built[name]:.2f}x the serial loop in the build's formats; "
                  f"{measured_bound_s / built[name]:.2f}x decode+flow run in 2 processes at once")
        print(f"decode+flow in 2 processes at once takes {measured_bound_s / bound_s:.2f}x the bound (its halves contend for the machine)")
        print(f"Ray start-up inside the fresh 2-worker build: {manifests[2]['timings_s'].get('ray_start', 0.0):.2f} s")
        if not args.skip_cluster:
            print(f"cluster build: episodes per node {sorted(nodes.values())}")
        print_breakdown(manifests[2], walls[2], bound_s)
        if not args.skip_memory:
            peaks = {}
            for count in (10, 100):
                mem_data = workdir / f"mem{count}"
                write_sample_data(mem_data, robot_episodes=count, video_clips=1, seed=1, num_frames=args.memory_frames)
                peaks[count] = timed_build(write_recipe(workdir, mem_data, f"mem{count}build"), "--workers", "2")[1]
            print(f"\npeak RSS: 10 episodes {peaks[10] / 2**20:.0f} MiB, 100 episodes {peaks[100] / 2**20:.0f} MiB, "
                  f"ratio {peaks[100] / peaks[10]:.2f}  (target <= 1.2)")
            long_peaks = {}
            for frames in (args.long_frames // 10, args.long_frames):
                mem_data = workdir / f"long{frames}"
                write_sample_data(mem_data, robot_episodes=1, video_clips=1, seed=2, num_frames=frames)
                long_peaks[frames] = timed_build(write_recipe(workdir, mem_data, f"long{frames}build", kind="videos"))[1]
            short, long = sorted(long_peaks)
            print(f"peak RSS: one video of {short} frames {long_peaks[short] / 2**20:.0f} MiB, of {long} frames "
                  f"{long_peaks[long] / 2**20:.0f} MiB, ratio {long_peaks[long] / long_peaks[short]:.2f}  "
                  f"(a worker holds {PART_FRAMES} stored frames of an episode at a time)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
