"""Training-loader throughput: our WebDataset and Lance loaders against the original Motus per-episode reader.

One training example is the same for all three: a condition frame and 8 future frames at 5 Hz, at
384x320, a 48-step action chunk at 30 Hz, the state and the instruction. The per-episode reader
does what the original Motus layout forces: open the episode's full-length source mp4 (30 fps,
480x640, x264 with its default keyframe interval), seek to a random frame and decode the window,
resize, then `torch.load` the episode's action/state and text-embedding tensor files. Our loaders
read short clips stored at 10 fps and 384x320, with the arrays inside the sample.

Both layouts are written from the same synthetic episodes (or pass --build DIR to time our loaders
on an existing `pyramid build` output instead). Target: ours >= 10x the per-episode reader.

    .venv/bin/python bench/loader.py [--episodes 4] [--seconds 20] [--samples 48] [--gop 250]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyramid.video_io import write_video  # noqa: E402
from recipes.motus.config import DataConfig, model_config  # noqa: E402
from recipes.motus.data import ClipExamples  # noqa: E402
from tests.fixtures.shards import _statistics, write_build  # noqa: E402

SOURCE_FPS, SOURCE_SIZE = 30, (480, 640)
STORED_FPS, CLIP_FRAMES, STORED_SIZE = 10, 32, (384, 320)
DIMS, TEXT_TOKENS, TEXT_DIM = 14, 32, 4096


def synthetic_episode(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """A textured scene with a moving block and sensor noise, so the video costs what real video costs to decode."""
    height, width = SOURCE_SIZE
    background = cv2.resize(rng.integers(30, 220, (height // 16, width // 16, 3), dtype=np.uint8), (width, height),
                            interpolation=cv2.INTER_CUBIC)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frame = background.astype(np.int16) + rng.integers(-6, 7, (height, width, 1), dtype=np.int16)
        x, y = int(width / 2 + 200 * np.sin(t / 40)), int(height / 2 + 120 * np.cos(t / 55))
        frame[y - 40 : y + 40, x - 40 : x + 40] = (240, 60, 40)
        frames[t] = frame.clip(0, 255).astype(np.uint8)
    return frames


def write_layouts(out: Path, episodes: int, seconds: float, gop: int | None, seed: int = 0) -> tuple[Path, Path]:
    """The same episodes as (a) the Motus per-episode layout and (b) our build's shards."""
    rng = np.random.default_rng(seed)
    per_episode, build = out / "per_episode", out / "build"
    for folder in ("videos", "arrays", "umt5"):
        (per_episode / folder).mkdir(parents=True, exist_ok=True)
    samples, arrays_of = [], []
    for episode in range(episodes):
        num_frames = int(seconds * SOURCE_FPS)
        frames = synthetic_episode(rng, num_frames)
        actions = np.cumsum(rng.standard_normal((num_frames, DIMS)).astype(np.float32) * 0.05, axis=0)
        state = np.cumsum(actions, axis=0) / SOURCE_FPS
        name = f"episode_{episode:06d}"
        write_video(per_episode / "videos" / f"{name}.mp4", frames, fps=SOURCE_FPS, gop=gop)
        torch.save({"actions": torch.from_numpy(actions), "state": torch.from_numpy(state)},
                   per_episode / "arrays" / f"{name}.pt")
        torch.save(torch.randn(TEXT_TOKENS, TEXT_DIM).to(torch.bfloat16), per_episode / "umt5" / f"{name}.pt")
        samples += clip_samples(name, frames, actions, state)
        arrays_of.append({"actions": actions, "state": state})
    write_build(build, samples, level=6, normalization={"bench_arm": _statistics(arrays_of)})
    return per_episode, build


def clip_samples(episode_id: str, frames: np.ndarray, actions: np.ndarray, state: np.ndarray) -> list[dict]:
    """What a build stores: non-overlapping clips resampled to 10 fps and resized to 384x320."""
    step = SOURCE_FPS // STORED_FPS
    span = CLIP_FRAMES * step
    samples = []
    for clip, start in enumerate(range(0, len(frames) - span + 1, span)):
        stored = np.stack([cv2.resize(f, STORED_SIZE[::-1], interpolation=cv2.INTER_AREA)
                           for f in frames[start : start + span : step]])
        with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
            write_video(tmp.name, stored, fps=STORED_FPS)
            mp4 = Path(tmp.name).read_bytes()
        meta = {"episode_id": episode_id, "source": "bench", "embodiment": "bench_arm", "level": 6,
                "instructions": ["move the red block"], "task": "move the red block", "fps": STORED_FPS,
                "source_fps": SOURCE_FPS, "num_source_frames": len(frames), "clip_index": clip, "start_frame": start,
                "end_frame": start + span,
                "num_frames": CLIP_FRAMES, "height": STORED_SIZE[0], "width": STORED_SIZE[1],
                "state_names": [f"q{i}" for i in range(DIMS)], "action_names": [f"a{i}" for i in range(DIMS)],
                "action_fps": SOURCE_FPS, "has_actions": True, "has_latent_actions": False,
                "flow": {"backend": "none", "stride": 1, "max_magnitude": 0.0, "dataset": "flow.lance",
                         "pair_range": [clip * CLIP_FRAMES, (clip + 1) * CLIP_FRAMES - 1]}}
        samples.append({"__key__": f"{episode_id}_c{clip:04d}", "mp4": mp4, "json": meta,
                        "actions.npy": actions[start : start + span], "state.npy": state[start : start + span]})
    return samples


class PerEpisodeReader:
    """The original layout's access pattern: full episode video, random seek, per-episode tensor files."""

    def __init__(self, root: Path):
        self.videos = sorted((root / "videos").glob("*.mp4"))
        self.root = root

    def __getitem__(self, position: int) -> dict:
        import decord

        rng = random.Random(position)
        video = self.videos[rng.randrange(len(self.videos))]
        reader = decord.VideoReader(str(video), ctx=decord.cpu(0), num_threads=1)
        step = SOURCE_FPS // 5
        start = rng.randint(0, len(reader) - 1 - 8 * step)
        frames = reader.get_batch([start + k * step for k in range(9)]).asnumpy()
        frames = np.stack([cv2.resize(f, STORED_SIZE[::-1], interpolation=cv2.INTER_AREA) for f in frames])
        arrays = torch.load(self.root / "arrays" / f"{video.stem}.pt", weights_only=True)
        text = torch.load(self.root / "umt5" / f"{video.stem}.pt", weights_only=True)
        return {"frames": torch.from_numpy(frames), "actions": arrays["actions"][start : start + 48],
                "state": arrays["state"][start], "text": text}


def samples_per_second(loaders: dict[str, callable], count: int, rounds: int = 4) -> dict[str, float]:
    """Interleaved rounds, so that load from other processes drifting over time hits every loader alike."""
    elapsed = dict.fromkeys(loaders, 0.0)
    for get in loaders.values():
        get(0)  # open files, warm caches
    per_round = max(1, count // rounds)
    for round_index in range(rounds):
        for name, get in loaders.items():
            started = time.perf_counter()
            for position in range(1 + round_index * per_round, 1 + (round_index + 1) * per_round):
                example = get(position)
                assert example["frames"].shape == (9, *STORED_SIZE, 3) and example["actions"].shape[0] == 48
            elapsed[name] += time.perf_counter() - started
    return {name: per_round * rounds / seconds for name, seconds in elapsed.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0, help="Length of each source episode.")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--gop", type=int, default=None, help="Keyframe interval of the source mp4s (x264: 250).")
    parser.add_argument("--build", type=Path, default=None, help="Time our loaders on this existing build.")
    args = parser.parse_args()
    torch.set_num_threads(1)

    work = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        started = time.perf_counter()
        per_episode, build = write_layouts(work, args.episodes, args.seconds, args.gop)
        took = time.perf_counter() - started
        print(f"wrote {args.episodes} episodes of {args.seconds:g} s in both layouts in {took:.0f} s")
        build = args.build or build
        model = model_config("paper")
        loaders = {"per-episode reader (Motus layout)": PerEpisodeReader(per_episode).__getitem__}
        for format in ("webdataset", "lance"):
            data = ClipExamples(DataConfig(format=format, root=str(build), targets="actions"), model)
            loaders[f"ours: {format}"] = lambda p, data=data: data[(p % len(data), p)]
        rates = samples_per_second(loaders, args.samples)
        baseline = rates["per-episode reader (Motus layout)"]
        for name, rate in rates.items():
            print(f"{name:36s} {rate:8.1f} samples/s   {rate / baseline:5.1f}x")
        worst = min(rate for name, rate in rates.items() if name.startswith("ours")) / baseline
        print(f"target >= 10x: {'met' if worst >= 10 else 'NOT met'} ({worst:.1f}x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
