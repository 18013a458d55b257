"""Reading episodes of a LeRobot v3.0 dataset, whose data files hold many episodes each, as a build's worker does.

Writes a dataset of `--episodes` episodes (14-D state and action, two cameras) at two sizes of data file: few and many
episodes per file, each as LeRobot 0.4's writer lays it out (a row group per episode) and as its v2.1 -> v3.0
converter and `DataFrame.to_parquet` do (one row group per file). The videos are one small mp4 hard-linked into
every place, as the reader only probes them. For each layout it loads every episode of the dataset in discovery
order with the `lerobot` reader, beside the filtered `pq.read_table` per episode that the reader made before
(footer parsed and row groups tested, or the whole file decoded, for each episode). With `--images`, the cameras
are LeRobot `image` features (a PNG per row in the data file) and every frame of one camera is read too, beside the
filtered read of its column that the camera made before (per 64 frames). Target: the reader's time per episode does
not grow with episodes per file (ratio ~1), where a read per episode grows with them.

    .venv/bin/python bench/sources.py [--episodes 10000] [--few 200] [--many 5000] [--length 10] [--images]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyramid.sources import open_source  # noqa: E402
from pyramid.video_io import write_video  # noqa: E402

FPS, DIMS, CAMERAS = 10, 14, ["observation.images.top", "observation.images.wrist"]
CHUNK = 64  # frames a build reads at a time


def write_dataset(root: Path, episodes: int, per_file: int, length: int, group_per_episode: bool,
                  video: Path | None, image: bytes | None = None) -> None:
    """Cameras as videos (`video`, hard-linked) or as `image` features (the PNG `image` in every row)."""
    rows = np.random.default_rng(0).standard_normal((per_file * length, DIMS)).astype(np.float32)
    for number, first in enumerate(range(0, episodes, per_file)):
        count = min(per_file, episodes - first)
        index = np.repeat(np.arange(first, first + count), length)
        columns = {"observation.state": _fixed(rows[: len(index)]), "action": _fixed(rows[: len(index)] * 0.5),
                   "timestamp": np.tile(np.arange(length) / FPS, count).astype(np.float32),
                   "frame_index": np.tile(np.arange(length), count), "episode_index": index,
                   "index": np.arange(first * length, (first + count) * length), "task_index": index % 2}
        if image is not None:
            columns.update({key: pa.array([{"bytes": image, "path": None}] * len(index)) for key in CAMERAS})
        path = root / f"data/chunk-000/file-{number:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        # dictionary encoding off: LeRobot's image rows differ, and one shared PNG would be stored once
        pq.write_table(pa.table(columns), path, row_group_size=length if group_per_episode else len(index), use_dictionary=False)
        for key in CAMERAS if video is not None else ():
            (root / f"videos/{key}/chunk-000").mkdir(parents=True, exist_ok=True)
            os.link(video, root / f"videos/{key}/chunk-000/file-{number:03d}.mp4")
    _write_meta(root, episodes, per_file, length, images=image is not None)


def _write_meta(root: Path, episodes: int, per_file: int, length: int, images: bool) -> None:
    index = np.arange(episodes)
    meta = {"episode_index": index, "tasks": [["pick"] if i % 2 == 0 else ["place"] for i in index],
            "length": np.full(episodes, length), "data/chunk_index": np.zeros(episodes, np.int64),
            "data/file_index": index // per_file, "dataset_from_index": index * length, "dataset_to_index": (index + 1) * length}
    for key in CAMERAS if not images else ():
        meta.update({f"videos/{key}/chunk_index": np.zeros(episodes, np.int64), f"videos/{key}/file_index": index // per_file,
                     f"videos/{key}/from_timestamp": (index % per_file) * length / FPS,
                     f"videos/{key}/to_timestamp": (index % per_file + 1) * length / FPS})
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(meta), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0, 1], "task": ["pick", "place"]}), root / "meta/tasks.parquet")
    video = {"dtype": "video", "shape": [16, 16, 3], "names": ["height", "width", "channels"], "info": {"video.fps": float(FPS)}}
    if images:
        video = {"dtype": "image", "shape": [16, 16, 3], "names": ["height", "width", "channels"]}
    features = {"observation.state": {"dtype": "float32", "shape": [DIMS], "names": None},
                "action": {"dtype": "float32", "shape": [DIMS], "names": None}, **{key: video for key in CAMERAS},
                "timestamp": {"dtype": "float32", "shape": [1], "names": None},
                **{key: {"dtype": "int64", "shape": [1], "names": None} for key in ("frame_index", "episode_index", "index", "task_index")}}
    info = {"codebase_version": "v3.0", "robot_type": "bench_arm", "total_episodes": episodes, "total_frames": episodes * length,
            "total_tasks": 2, "chunks_size": 1000, "fps": FPS, "features": features,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"}
    (root / "meta/info.json").write_text(json.dumps(info))


def _fixed(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])


def ms_per_episode(root: Path, limit: int, images: bool) -> tuple[float, float]:
    """(the reader's load, a filtered read of the episode's rows) in CPU ms per episode, over the first `limit`
    episodes in discovery order (a fresh reader, as a worker starts); with `images`, each also reads every frame
    of one camera, the reader in chunks of 64 as a build does, beside a filtered read of the column per chunk."""
    reader = open_source(root, "lerobot")
    refs = [ref for _, ref in zip(range(limit), reader.discover())]
    started = time.process_time()
    for ref in refs:
        episode = reader.load(ref)
        if images:
            sum(len(chunk) for chunk in episode.frame_chunks(None, range(episode.num_frames), CHUNK))
    loaded = time.process_time() - started
    columns = ["observation.state", "action", "episode_index", "task_index"]
    started = time.process_time()
    for ref in refs:
        path, where = reader.resolve(ref.locator["data_file"]), [("episode_index", "=", ref.locator["episode_index"])]
        pq.read_schema(path)
        rows = pq.read_table(path, columns=columns, filters=where)
        for _ in range(0, rows.num_rows, CHUNK) if images else ():
            pq.read_table(path, columns=[CAMERAS[0]], filters=where).column(CAMERAS[0]).to_pylist()
    filtered = time.process_time() - started
    return 1000 * loaded / len(refs), 1000 * filtered / len(refs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10000)
    parser.add_argument("--few", type=int, default=200, help="episodes per data file, the small files")
    parser.add_argument("--many", type=int, default=5000, help="episodes per data file, the large files")
    parser.add_argument("--length", type=int, default=10, help="rows per episode")
    parser.add_argument("--timed", type=int, default=2000, help="episodes loaded and timed per dataset")
    parser.add_argument("--images", action="store_true", help="cameras as image features in the data files, frames read")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_sources_") as tmp:
        video = image = None
        if args.images:
            image = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8))[1].tobytes()
        else:
            video = write_video(Path(tmp) / "video.mp4", np.zeros((args.many * args.length, 16, 16, 3), np.uint8), fps=FPS)
        cameras = "image features, every frame of one camera read" if args.images else "videos, probed"
        print(f"{args.episodes} episodes of {args.length} rows, cameras as {cameras}; CPU ms per episode, "
              f"first {args.timed} in discovery order")
        print(f"{'layout':<26}{'episodes/file':>14}{'reader':>10}{'filtered read':>15}")
        for layout, per_episode in (("row group per episode", True), ("one row group per file", False)):
            figures = {}
            for per_file in (args.few, args.many):
                root = Path(tmp) / f"{per_episode}_{per_file}"
                write_dataset(root, args.episodes, per_file, args.length, per_episode, video, image)
                figures[per_file] = ms_per_episode(root, args.timed, args.images)
                print(f"{layout:<26}{per_file:>14}{figures[per_file][0]:>10.2f}{figures[per_file][1]:>15.2f}")
            reader, filtered = (figures[args.many][i] / figures[args.few][i] for i in range(2))
            print(f"{'':<26}{'ratio':>14}{reader:>9.2f}x{filtered:>14.2f}x  ({args.many} / {args.few} episodes per file)")


if __name__ == "__main__":
    main()
