"""What reading HDR video costs: the same pictures as 10-bit HEVC, tagged SDR (BT.709) and HLG (BT.2020, as an
iPhone records by default), read by PyAV in one pass. Both decode the same codec at the same bit depth, so the ratio
is the tone mapping's cost (`pyramid/hdr.py`). Read twice: whole frames (`read_frames`), and as a build reads them
(`read_frame_chunks` with the build's size, then fitted to it), where HDR frames are shrunk before they are
tone-mapped.

    .venv/bin/python bench/hdr.py [--height 1080] [--frames 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pyramid.recipe import DEFAULT_VIDEO_SIZE  # noqa: E402
from pyramid.resize import resize_frames  # noqa: E402
from pyramid.video_io import read_frame_chunks, read_frames  # noqa: E402
from tests.fixtures.media import moving_square_frames  # noqa: E402
from tests.fixtures.videos import write_10bit_hevc  # noqa: E402

CHUNK = 64


def whole_frames(path: Path) -> int:
    return len(read_frames(path, decord=False))


def as_a_build_reads(path: Path, frames: int) -> int:
    chunks = read_frame_chunks(path, range(frames), CHUNK, at_least=DEFAULT_VIDEO_SIZE)
    return sum(len(resize_frames(chunk, DEFAULT_VIDEO_SIZE)) for chunk in chunks)


def seconds_per_frame(read) -> float:
    start = time.perf_counter()
    frames = read()
    return (time.perf_counter() - start) / frames


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
        reads = {"whole frames": whole_frames,
                 f"as a build reads ({DEFAULT_VIDEO_SIZE[0]}x{DEFAULT_VIDEO_SIZE[1]})":
                     lambda path: as_a_build_reads(path, args.frames)}
        timings = {(read, name): [] for read in reads for name in files}
        for _ in range(args.repeats):  # interleaved, so that every row sees the same machine
            for read, name in timings:
                timings[read, name].append(seconds_per_frame(lambda: reads[read](files[name])))
    best = {key: min(values) for key, values in timings.items()}
    print(f"{width}x{args.height}, {args.frames} frames, 10-bit HEVC, best of {args.repeats}:")
    for read in reads:
        print(f"  {read}: SDR {best[read, 'SDR'] * 1000:.1f} ms per frame, HLG {best[read, 'HLG'] * 1000:.1f} ms, "
              f"HLG / SDR {best[read, 'HLG'] / best[read, 'SDR']:.2f}x")


if __name__ == "__main__":
    main()
