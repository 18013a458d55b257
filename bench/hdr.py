"""What reading HDR video costs: the same pictures as 10-bit HEVC, tagged SDR (BT.709) and HLG (BT.2020, as an
iPhone records by default), read by `read_frames` (PyAV, one pass). Both decode the same codec at the same bit depth,
so the ratio is the tone mapping's cost (`pyramid/hdr.py`), at full resolution, before a build resizes the frames.

    .venv/bin/python bench/hdr.py [--height 1080] [--frames 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pyramid.video_io import read_frames  # noqa: E402
from tests.fixtures.media import moving_square_frames  # noqa: E402
from tests.fixtures.videos import write_10bit_hevc  # noqa: E402


def seconds_per_frame(path: Path) -> float:
    start = time.perf_counter()
    frames = read_frames(path, decord=False)
    return (time.perf_counter() - start) / len(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    width = args.height * 16 // 9 // 2 * 2
    frames = moving_square_frames(args.frames, args.height, width)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"SDR": write_10bit_hevc(Path(tmp) / "sdr.mp4", frames, "sdr"),
                 "HLG": write_10bit_hevc(Path(tmp) / "hlg.mp4", frames, "hlg")}
        timings = {name: [] for name in files}
        for _ in range(args.repeats):  # interleaved, so that both see the same machine
            for name, path in files.items():
                timings[name].append(seconds_per_frame(path))
    best = {name: min(values) for name, values in timings.items()}
    print(f"{width}x{args.height}, {args.frames} frames, 10-bit HEVC, best of {args.repeats}:")
    for name, value in best.items():
        print(f"  {name}: {value * 1000:.1f} ms per frame")
    print(f"  HLG read / SDR read: {best['HLG'] / best['SDR']:.2f}x")


if __name__ == "__main__":
    main()
