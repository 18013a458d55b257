"""Flow backends side by side: pairs/s at 384x320 (Motus's video size) and end-point error on known motion.

    .venv/bin/python bench/flow.py [--model dpflow] [--checkpoint NAME_OR_PATH] [--seconds 1.5]

The learned backend uses the given checkpoint, else the first of its ptlflow checkpoints found in
the local cache, else random weights (then it reports speed only). Targets: the default DIS preset
>= 100 pairs/s per core with a mean EPE within 0.1 px of OpenCV's medium preset; a learned backend on
GPU in batches of >= 8 pairs. "/cpu-s" is pairs per CPU second this process used: the per-core rate,
which other jobs on a shared machine do not lower. The "dis medium, ..." rows are the OpenCV
parameters the default preset was chosen among (`flow/dis.py` PRESETS). Last, what storing each pair
costs in the formats a build could use: builds store the flow itself, rounded to 1/16 px as int16 and
zstd-compressed (flow/storage.py); the VAE renders its flow-RGB from it. Rendering flow-RGB and writing
it as a PNG (what builds stored before) costs about half the flow's own time.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# This script is itself named flow.py: drop its folder from the path so `import flow` finds the package.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import flow  # noqa: E402
from flow.dis import DEFAULT_PRESET, PRESETS, DisBackend, dis_engine  # noqa: E402
from flow.grayscale import usable_cores  # noqa: E402
from flow.known_motion import end_point_error, moving_sequence, rotation, textured_image, translation, warp, zoom  # noqa: E402
from pyramid.recipe import DEFAULT_VIDEO_SIZE  # noqa: E402

SIZE = DEFAULT_VIDEO_SIZE  # (height, width) = (384, 320), Motus's video size
MOTIONS = {"translate": translation(4.3, -2.7), "rotate": rotation(2.0, SIZE), "zoom": zoom(1.03, SIZE)}
DIS_TARGET_PER_CORE = 100
DIS_EPE_MARGIN = 0.1  # px the default preset may lose against OpenCV's medium
REFERENCE = "dis medium"
DEFAULT = f"dis {DEFAULT_PRESET} (default)"
# OpenCV's medium preset with one or two of its parameters changed (setter name -> value).
DIS_VARIANTS = {
    "patch stride 4": {"PatchStride": 4},
    "1 refinement iteration": {"VariationalRefinementIterations": 1},
    "no variational refinement": {"VariationalRefinementIterations": 0},
    "12 gradient descent iterations": {"GradientDescentIterations": 12},
    "finest scale 2": {"FinestScale": 2},
    "patch size 12": {"PatchSize": 12},
}
GPU_BATCH = 8


@dataclass
class Row:
    label: str
    backend: flow.FlowBackend
    cores: int | None  # CPU cores it computes on; None on GPU
    scored: bool = True  # False for random weights: their flow means nothing
    pairs_per_second: float = 0.0  # wall clock
    pairs_per_cpu_second: float = 0.0  # per core busy; unlike wall clock, not lowered by other jobs on the machine
    errors: dict[str, float] = field(default_factory=dict)


def measure_speed(row: Row, frames: np.ndarray, seconds: float) -> None:
    row.backend.sequence(frames[:2])  # warm-up: thread pools, model kernels, DPFlow's pyramid for this size
    done, start, start_cpu = 0, time.perf_counter(), time.process_time()
    while True:
        done += len(row.backend.sequence(frames))
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    row.pairs_per_second = done / elapsed
    row.pairs_per_cpu_second = done / (time.process_time() - start_cpu)


def end_point_errors(backend: flow.FlowBackend) -> dict[str, float]:
    image = textured_image(*SIZE, seed=7)
    errors = {}
    for name, matrix in MOTIONS.items():
        moved, true_flow, valid = warp(image, matrix)
        errors[name] = end_point_error(backend(image[None], moved[None])[0], true_flow, valid)
    return errors


class DisVariant(DisBackend):
    """OpenCV's medium preset with some parameters changed: a candidate measured here, not a preset."""

    def __init__(self, parameters: dict[str, int], threads: int):
        self.parameters = parameters
        super().__init__("medium", threads)

    def make_engine(self):
        return dis_engine(PRESETS["medium"][0], self.parameters)


def classical_rows(cores: int) -> list[Row]:
    presets = [preset for preset in PRESETS if preset != DEFAULT_PRESET]
    rows = [Row(f"dis {preset}", flow.get_backend("dis", preset=preset), cores) for preset in presets]
    rows.append(Row(DEFAULT, flow.get_backend("dis"), cores))
    rows.append(Row(f"{DEFAULT}, 1 thread", flow.get_backend("dis", threads=1), 1))
    rows.append(Row("dis medium, 1 thread", flow.get_backend("dis", preset="medium", threads=1), 1))
    rows += [Row(f"dis medium, {name}", DisVariant(parameters, 1), 1) for name, parameters in DIS_VARIANTS.items()]
    rows.append(Row("dis medium, flow at half size", flow.get_backend("dis", preset="medium", scale=0.5, threads=1), 1))
    rows.append(Row("farneback", flow.get_backend("farneback"), cores))
    return rows


def learned_row(model: str, checkpoint: str | None) -> Row:
    import ptlflow
    from loguru import logger

    from flow.ptlflow_backend import CheckpointError, resolve_checkpoint

    logger.disable("ptlflow")  # its per-size INFO lines would interleave with the table
    model_class = ptlflow.get_model_reference(model)
    if checkpoint is None:
        for name in getattr(model_class, "pretrained_checkpoints", None) or {}:
            try:
                checkpoint = str(resolve_checkpoint(model, model_class, name))
                break
            except CheckpointError:
                continue
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        # One thread: on a small shared machine torch's spinning worker threads can stall for seconds.
        torch.set_num_threads(1)
    weights = {"checkpoint": checkpoint} if checkpoint else {"random_weights": True}
    backend = flow.get_backend(f"ptlflow:{model}", batch_size=GPU_BATCH if on_gpu else 2, **weights)
    label = f"ptlflow:{model} ({'gpu' if on_gpu else 'cpu'}, batch {backend.batch_size}{'' if checkpoint else ', random weights'})"
    return Row(label, backend, None if on_gpu else 1, scored=checkpoint is not None)


def print_table(rows: list[Row]) -> None:
    reference = next(row for row in rows if row.label == REFERENCE)
    reference_error = np.mean(list(reference.errors.values()))
    header = f"{'backend':<48} {'cores':>5} {'pairs/s':>8} {'/cpu-s':>7} {'x dis':>6}  " + "".join(
        f"{'EPE ' + name:>14}" for name in MOTIONS
    ) + f"{'EPE x dis':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        per_core = f"{row.pairs_per_cpu_second:7.1f}" if row.cores else f"{'gpu':>7}"
        # CPU rows compare per CPU-second (robust to other jobs); a GPU row compares wall-clock rates.
        ratio = row.pairs_per_cpu_second / reference.pairs_per_cpu_second if row.cores else row.pairs_per_second / reference.pairs_per_second
        speed = f"{row.label:<48} {row.cores or '-':>5} {row.pairs_per_second:8.1f} {per_core} {ratio:6.2f}  "
        if row.scored:
            mean_error = np.mean(list(row.errors.values()))
            accuracy = "".join(f"{row.errors[name]:14.3f}" for name in MOTIONS) + f"{mean_error / reference_error:10.2f}"
        else:
            accuracy = "".join(f"{'-':>14}" for _ in MOTIONS) + f"{'-':>10}"
        print(speed + accuracy)


def print_targets(rows: list[Row]) -> None:
    default = next(row for row in rows if row.label == f"{DEFAULT}, 1 thread")
    medium = next(row for row in rows if row.label == REFERENCE)
    verdict = "met" if default.pairs_per_cpu_second >= DIS_TARGET_PER_CORE else "NOT met"
    print(f"\ntarget {DEFAULT} >= {DIS_TARGET_PER_CORE} pairs/s per core: {default.pairs_per_cpu_second:.1f} per CPU-second "
          f"on 1 thread ({default.pairs_per_cpu_second / medium.pairs_per_cpu_second:.2f}x medium) -> {verdict}")
    loss = np.mean(list(default.errors.values())) - np.mean(list(medium.errors.values()))
    verdict = "met" if loss <= DIS_EPE_MARGIN else "NOT met"
    print(f"target {DEFAULT} mean EPE within {DIS_EPE_MARGIN} px of medium: {np.mean(list(default.errors.values())):.3f} px "
          f"against {np.mean(list(medium.errors.values())):.3f} px ({loss:+.3f}) -> {verdict}")
    learned = rows[-1]
    if learned.cores is None:
        print(f"target learned backend on GPU in batches >= {GPU_BATCH}: batch {learned.backend.batch_size}, {learned.pairs_per_second:.1f} pairs/s")
    else:
        print(f"target learned backend on GPU in batches >= {GPU_BATCH}: not measured (no GPU here)")


def storage_rows(frames: np.ndarray) -> list[tuple[str, float, float]]:
    """How a build could store flow, per pair: (name, CPU ms to encode, KiB). Builds store the first row."""
    import zlib

    import cv2
    import zstandard

    from flow import storage
    from pyramid.staging import png_bytes

    flows = flow.get_backend("dis", threads=1).sequence(frames)

    def stored(pair):
        return storage.pack(storage.quantise(pair))

    level_3 = zstandard.ZstdCompressor(level=3)

    def zstd_level_3(pair):
        return level_3.compress(storage.quantise(pair).tobytes())

    def zlib_level_1(pair):
        return zlib.compress(storage.quantise(pair).tobytes(), 1)

    def png_default(rgb):
        return cv2.imencode(".png", rgb, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()

    def webp_lossless(rgb):
        return cv2.imencode(".webp", rgb, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()

    encoders = {"int16 (1/16 px) .npy + zstd 1 (stored)": (False, stored), "int16 (1/16 px) + zstd 3": (False, zstd_level_3),
                "int16 (1/16 px) + zlib 1": (False, zlib_level_1),
                "flow-RGB + PNG, up filter, run-length": (True, png_bytes), "flow-RGB + PNG, default": (True, png_default),
                "flow-RGB + WebP lossless": (True, webp_lossless)}
    rows = []
    for name, (as_rgb, encode) in encoders.items():
        start = time.process_time()
        sizes = [len(encode(item)) for item in (flow.to_rgb(flows) if as_rgb else flows)]
        rows.append((name, (time.process_time() - start) * 1000 / len(flows), np.mean(sizes) / 1024))
    start = time.process_time()
    flow.get_backend("dis", threads=1).sequence(frames)
    rows.append((f"(the flow itself: dis {DEFAULT_PRESET}, 1 thread)", (time.process_time() - start) * 1000 / len(flows), 0.0))
    return rows


def print_storage(rows: list[tuple[str, float, float]]) -> None:
    print(f"\nflow storage per pair at {SIZE[0]}x{SIZE[1]} (encoding includes rounding, or flow -> RGB, where used)")
    print(f"{'format':<50}{'CPU ms':>8}{'KiB':>8}")
    for name, milliseconds, kib in rows:
        print(f"{name:<50}{milliseconds:>8.2f}{kib:>8.1f}" if kib else f"{name:<50}{milliseconds:>8.2f}{'':>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dpflow")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--seconds", type=float, default=1.5, help="timing per backend")
    args = parser.parse_args()

    cores = usable_cores()
    print(f"flow at {SIZE[0]}x{SIZE[1]} (height x width), {cores} usable CPU cores, GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}\n")
    frames = moving_sequence(33, SIZE)
    rows = classical_rows(cores) + [learned_row(args.model, args.checkpoint)]
    for row in rows:
        learned_on_cpu = row.label.startswith("ptlflow") and row.cores is not None
        # DPFlow on CPU takes ~1 s a pair: time one batch, not a 33-frame clip.
        clip = frames[: row.backend.batch_size + 1] if learned_on_cpu else frames
        measure_speed(row, clip, 0 if learned_on_cpu else args.seconds)
        if row.scored:
            row.errors = end_point_errors(row.backend)
    print_table(rows)
    print_targets(rows)
    print_storage(storage_rows(frames[:17]))


if __name__ == "__main__":
    main()
