"""`pyramid export-lerobot` of a source dataset: peak memory for a long against a short episode, and throughput.

Writes two folders of plain videos at 640x480, 30 fps (one 10-s and one 100-s video; `--long-frames` changes the
long one), exports each with `--codec libx264`, and prints each export's peak RSS (the CLI is one process: its own
maximum, from `wait4`) and frames per second. The export decodes and encodes a camera `DECODE_CHUNK` frames at a
time, each episode to a file of its own that is then appended to the dataset's mp4, so the ratio of the two peaks
should stay near 1; holding the long video whole would take the size printed beside it.
H.264 rather than the export's default AV1 keeps the run short; the memory does not depend on the codec's speed.

    .venv/bin/python bench/export.py [--long-frames 3000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyramid.clips import DECODE_CHUNK  # noqa: E402
from pyramid.video_io import FrameChunks, write_video  # noqa: E402
from tests.fixtures.media import moving_square_frames  # noqa: E402

CLI = [sys.executable, "-m", "pyramid"]
HEIGHT, WIDTH, FPS = 480, 640, 30.0


def write_source(root: Path, frames: int) -> Path:
    """One video of `frames` frames, made and encoded a chunk at a time (the bench itself must not hold it whole)."""
    def chunks():
        for start in range(0, frames, 100):
            yield moving_square_frames(min(100, frames - start), HEIGHT, WIDTH, seed=start)

    write_video(root / "site/2026-01-01/cam0/clip_0001.mp4", FrameChunks(frames, (HEIGHT, WIDTH, 3), chunks), fps=FPS)
    return root


def timed_export(source: Path, out: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes of one `pyramid export-lerobot`."""
    started = time.perf_counter()
    process = subprocess.Popen([*CLI, "export-lerobot", str(source), str(out), "--codec", "libx264"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    output = process.stdout.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"export of {source} failed:\n{output[-3000:]}")
    return seconds, usage.ru_maxrss * 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long-frames", type=int, default=3000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench_export_"))
    try:
        results = {}
        for frames in (args.long_frames // 10, args.long_frames):
            source = write_source(workdir / f"videos{frames}", frames)
            results[frames] = timed_export(source, workdir / f"lerobot{frames}")
        short, long = sorted(results)
        print(f"export-lerobot of one {WIDTH}x{HEIGHT} video at {FPS:g} fps, H.264, chunks of {DECODE_CHUNK} frames")
        print(f"{'frames':>8}{'seconds':>10}{'frames/s':>10}{'peak RSS MiB':>14}{'the video whole MiB':>21}")
        for frames, (seconds, peak) in sorted(results.items()):
            print(f"{frames:>8}{seconds:>10.2f}{frames / seconds:>10.1f}{peak / 2**20:>14.0f}{frames * HEIGHT * WIDTH * 3 / 2**20:>21.0f}")
        print(f"peak RSS, {long} frames / {short} frames: {results[long][1] / results[short][1]:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
