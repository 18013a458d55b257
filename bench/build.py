"""Build throughput and memory, measured in one run on sample data.

Prints episodes/minute and flow pairs/second for
  (a) a plain serial loop over the same episodes (decode, DIS flow, write clips),
  (b) `pyramid build` with 1 and 2 workers,
  and the decode-only and flow-only throughputs (the bound a build cannot beat on this machine),
then the peak memory (RSS of the build's whole process tree) for 10 and 100 episodes.
Targets on 2 cores: build >= 1.8x serial, >= 0.8x the bound; peak RSS 100/10 episodes <= 1.2.

    .venv/bin/python bench/build.py [--episodes 16] [--frames 60]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyramid.clips import resize_frames  # noqa: E402
from pyramid.recipe import load_recipe  # noqa: E402
from pyramid.sample_data import write_sample_data  # noqa: E402
from pyramid.sources import get_source  # noqa: E402


def write_recipe(workdir: Path, data: Path, output: str) -> Path:
    recipe = {"sources": [{"kind": "lerobot", "root": str(data / "lerobot")}], "output": str(workdir / output),
              "video_size": [384, 320], "fps": 10, "clip_frames": 20, "formats": ["webdataset", "lance"],
              "flow": {"backend": "dis", "options": {"preset": "medium", "threads": 1}},
              "filters": {"min_frames": 8, "static_motion_threshold": 0.0}}
    path = workdir / f"{output}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def serial_loop(data: Path, out: Path) -> tuple[float, int, int]:
    """The loop a user would write first: read, decode, DIS, encode and write each episode in turn."""
    import flow
    from pyramid.staging import mp4_bytes, png_bytes

    out.mkdir(parents=True, exist_ok=True)
    backend = flow.get_backend("dis", preset="medium", threads=1)
    reader = get_source("lerobot")(data / "lerobot")
    started, episodes, pairs = time.perf_counter(), 0, 0
    for ref in reader.discover():
        frames = resize_frames(reader.load(ref).frames(), (384, 320))
        flows = backend.sequence(frames)
        (out / f"{ref.episode_id}.mp4").write_bytes(mp4_bytes(frames, 10.0))
        for i, rgb in enumerate(flow.to_rgb(flows)):
            (out / f"{ref.episode_id}_{i}.png").write_bytes(png_bytes(rgb))
        episodes, pairs = episodes + 1, pairs + len(flows)
    return time.perf_counter() - started, episodes, pairs


def bounds(data: Path) -> tuple[float, float, int, int]:
    """Seconds to only decode, and to only compute flow, for the same episodes (one process)."""
    import flow

    backend = flow.get_backend("dis", preset="medium", threads=1)
    reader = get_source("lerobot")(data / "lerobot")
    decode_s = flow_s = 0.0
    episodes = pairs = 0
    for ref in reader.discover():
        t0 = time.perf_counter()
        frames = resize_frames(reader.load(ref).frames(), (384, 320))
        t1 = time.perf_counter()
        pairs += len(backend.sequence(frames))
        flow_s += time.perf_counter() - t1
        decode_s += t1 - t0
        episodes += 1
    return decode_s, flow_s, episodes, pairs


def timed_build(recipe: Path, workers: int) -> tuple[float, int]:
    """Wall seconds of `pyramid build` (Ray start included) and the peak RSS of its process tree."""
    command = [str(ROOT / ".venv/bin/pyramid"), "build", str(recipe), "--quiet", "--workers", str(workers)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = PeakRss(process.pid)
    peak.start()
    if process.wait() != 0:
        raise SystemExit(f"build of {recipe} failed")
    peak.stop()
    return time.perf_counter() - started, peak.value


class PeakRss(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root, self.value, self.running = psutil.Process(pid), 0, True

    def run(self) -> None:
        while self.running:
            try:
                tree = [self.root, *self.root.children(recursive=True)]
                self.value = max(self.value, sum(_rss(p) for p in tree) + _ray_rss())
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.05)

    def stop(self) -> None:
        self.running = False
        self.join()


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def _ray_rss() -> int:
    # Ray's raylet and GCS are daemonised, so they are not children of the build process.
    return sum(_rss(p) for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith(("raylet", "gcs_server")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        data = workdir / "data"
        write_sample_data(data, robot_episodes=args.episodes, video_clips=1, seed=0, num_frames=args.frames)
        serial_s, episodes, pairs = serial_loop(data, workdir / "serial")
        decode_s, flow_s, _, _ = bounds(data)
        builds = {w: timed_build(write_recipe(workdir, data, f"build{w}"), w)[0] for w in (1, 2)}
        bound_s = max(decode_s, flow_s) / 2 + min(decode_s, flow_s) / 2  # both stages spread over 2 cores
        rows = [("serial loop", serial_s), ("decode only (1 core)", decode_s), ("flow only (1 core)", flow_s),
                ("bound on 2 cores", bound_s), ("build, 1 worker", builds[1]), ("build, 2 workers", builds[2])]
        print(f"{episodes} episodes, {pairs} flow pairs at 384x320, {args.frames} source frames each")
        print(f"{'run':<24}{'seconds':>9}{'episodes/min':>14}{'pairs/s':>10}{'vs serial':>11}")
        for name, seconds in rows:
            print(f"{name:<24}{seconds:>9.2f}{episodes / seconds * 60:>14.1f}{pairs / seconds:>10.1f}{serial_s / seconds:>10.2f}x")
        print(f"build (2 workers) / bound throughput: {bound_s / builds[2]:.2f}  (target >= 0.8)")
        print(f"build (2 workers) / serial throughput: {serial_s / builds[2]:.2f}  (target >= 1.8)")
        if not args.skip_memory:
            peaks = {}
            for count in (10, 100):
                mem_data = workdir / f"mem{count}"
                write_sample_data(mem_data, robot_episodes=count, video_clips=1, seed=1, num_frames=args.frames)
                peaks[count] = timed_build(write_recipe(workdir, mem_data, f"mem{count}build"), 2)[1]
            print(f"peak RSS: 10 episodes {peaks[10] / 2**20:.0f} MiB, 100 episodes {peaks[100] / 2**20:.0f} MiB, "
                  f"ratio {peaks[100] / peaks[10]:.2f}  (target <= 1.2)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
