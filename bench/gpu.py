"""GPU figures, in one run on a machine with a CUDA GPU; `--quick` runs every part at toy sizes on CPU, to check
that the script works (its figures mean nothing).

Prints, as each part finishes:
  1. learned flow at 384x320: ptlflow DPFlow and SEA-RAFT (random weights: speed, not accuracy) in pairs/s, by
     batch size and precision, and how far bf16/fp16 flow lies from fp32's flow of the same weights and pairs;
  2. latent-action VAE training steps/s, tiny and paper presets (bf16 autocast, as `pyramid train-vae` runs);
  3. `pyramid build` of the sample data with DPFlow flow (bf16) and VAE labelling on the GPU, beside the same
     build with DIS flow on the CPU cores (its VAE trained first on flow made the same way);
  4. Motus trainer samples/s in bf16 on the DIS build, tiny preset and a mid size (the paper's widths, 4 layers,
     384x320 frames).
Target: DPFlow >= 100 pairs/s at 384x320 on one H200.

    .venv/bin/python bench/gpu.py [--quick] [--parts flow,vae,trainer,build] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLI = [sys.executable, "-m", "pyramid"]
PARTS = ("flow", "vae", "trainer", "build")
FLOW_MODELS = ("dpflow", "sea_raft_m")
QUICK_SIZE = (128, 128)  # --quick: frames of every part (SEA-RAFT needs 128), so that learned flow on CPU takes seconds


def mid_trainer() -> dict:
    """The paper's widths at a depth that trains on one GPU: 4 Wan layers at 3072, a 4-layer VLM, 384x320 frames."""
    from recipes.motus.config import qwen3_vl_2b

    vlm = qwen3_vl_2b()
    vlm["text_config"]["num_hidden_layers"] = 4
    vlm["vision_config"].update(depth=4, deepstack_visual_indexes=[1, 2, 3])
    return {"preset": "paper", "video": {"transformer": {"num_layers": 4}}, "text": {"encoder": "hashing", "max_tokens": 64},
            "vlm": {"architecture": vlm, "tokenizer": "hashing"}}


def run(command: list[str], what: str) -> str:
    """Run a CLI step; its output, or the end of it and a stop when it fails."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout + done.stderr


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def flow_rates(device: str, quick: bool) -> None:
    import torch

    import flow
    from flow.known_motion import moving_sequence

    size, pairs, batches = (QUICK_SIZE, 4, (2,)) if quick else ((384, 320), 256, (8, 32))
    precisions = ("fp32", "bf16", "fp16") if device == "cuda" else ("fp32", "bf16")
    frames = moving_sequence(pairs + 1, size)
    print(f"\n1. learned flow, {pairs} pairs at {size[0]}x{size[1]} on {device} (random weights)")
    print(f"   {'model':<12}{'batch':>6}{'precision':>10}{'pairs/s':>10}{'max |flow - fp32| px':>22}{'finite':>8}")
    for model in FLOW_MODELS:
        reference = {}
        for batch in batches:
            for precision in precisions:
                torch.manual_seed(0)  # the same random weights for every precision
                backend = flow.get_backend(f"ptlflow:{model}", random_weights=True, device=device, batch_size=batch,
                                           precision=precision)
                backend.compute_pairs(frames[:batch], frames[1 : batch + 1])  # warm-up: kernels, allocator
                synchronize(device)
                started = time.perf_counter()
                result = backend.compute_pairs(frames[:-1], frames[1:])
                synchronize(device)
                rate = pairs / (time.perf_counter() - started)
                reference.setdefault(batch, result)
                difference = float(np.nanmax(np.abs(result - reference[batch])))
                print(f"   {model:<12}{batch:>6}{precision:>10}{rate:>10.1f}{difference:>22.3f}{bool(np.isfinite(result).all())!s:>8}",
                      flush=True)
                del backend
                if device == "cuda":
                    torch.cuda.empty_cache()


def vae_config(data: Path, out_dir: Path, preset: str, steps: int, device: str, flow: dict | None = None) -> Path:
    """recipes/configs/vae/tiny.yaml, on `data`, for `steps` steps on `device` (flow: the data's flow settings)."""
    config = yaml.safe_load((ROOT / "recipes/configs/vae/tiny.yaml").read_text())
    if device == "cpu":  # --quick
        config["data"]["flow"].update(frame_height=QUICK_SIZE[0], frame_width=QUICK_SIZE[1])
    config["model"]["preset"] = preset
    config["data"]["sources"] = [{"root": str(data / "lerobot")}, {"root": str(data / "videos")}]
    config["data"]["flow"].update(flow or {})
    config["optim"].update(max_steps=steps, warmup_steps=min(steps, 30), batch_size=config["optim"]["batch_size"] if preset == "tiny" else 16)
    config["run"].update(out_dir=str(out_dir), device=device, log_every=1, eval_every=steps, checkpoint_every=steps)
    path = out_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    return path


def steps_per_second(out_dir: Path) -> float:
    """From train-vae's log: steps over wall seconds between its second and last records (the first holds warm-up)."""
    records = [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "elapsed_s" in r][1:]
    return (steps[-1]["step"] - steps[0]["step"]) / max(steps[-1]["elapsed_s"] - steps[0]["elapsed_s"], 1e-9)


def vae_rates(data: Path, workdir: Path, device: str, quick: bool) -> None:
    steps = 4 if quick else 60
    print(f"\n2. latent-action VAE training on {device}, {steps} steps (bf16 autocast on a GPU)")
    for preset in ("tiny",) if quick else ("tiny", "paper"):
        out_dir = workdir / f"vae-{preset}"
        run([*CLI, "train-vae", str(vae_config(data, out_dir, preset, steps, device)), "--no-progress"], f"train-vae ({preset})")
        batch = yaml.safe_load(out_dir.with_suffix(".yaml").read_text())["optim"]["batch_size"]
        print(f"   {preset:<8} batch {batch:>3}: {steps_per_second(out_dir):8.2f} steps/s", flush=True)


def trainer_rates(pyramid: Path, workdir: Path, quick: bool) -> None:
    steps = 3 if quick else 12
    print(f"\n4. Motus trainer, {steps} steps, bf16 on a GPU (samples/s: median of the steps after the second)")
    for name, model in (("tiny", "tiny"),) if quick else (("tiny", "tiny"), ("mid", mid_trainer())):
        recipe = yaml.safe_load((ROOT / "recipes/configs/train/tiny.yaml").read_text())
        recipe["model"] = model
        recipe["data"]["root"] = str(pyramid)
        recipe["train"].update(output_dir=str(workdir / f"train-{name}"), steps=steps, log_every=1, save_every=steps,
                               precision="auto")
        path = workdir / f"train-{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        output = run([*CLI, "train", str(path)], f"train ({name})")
        rates = [float(value) for value in re.findall(r"samples_per_second ([0-9.eE+-]+)", output)][2:]
        batch = recipe["train"]["batch_size"]
        print(f"   {name:<8} batch {batch:>3}: {statistics.median(rates):8.2f} samples/s", flush=True)


def build_recipe(data: Path, workdir: Path, name: str, flow: dict, vae: Path | None, quick: bool) -> Path:
    recipe = yaml.safe_load((ROOT / "recipes/configs/build/sample.yaml").read_text())
    if quick:
        recipe["video_size"] = list(QUICK_SIZE)
    recipe["sources"] = [{**source, "root": str(data / Path(source["root"]).name)} for source in recipe["sources"]]
    recipe.update(output=str(workdir / name), flow=flow, vae=str(vae) if vae else None)
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if v is not None}))
    return path


def timed_build(recipe: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    run([*CLI, "build", str(recipe), "--quiet"], f"build {recipe.stem}")
    manifest = json.loads((Path(yaml.safe_load(recipe.read_text())["output"]) / "manifest.json").read_text())
    return time.perf_counter() - started, manifest


def builds(data: Path, workdir: Path, device: str, quick: bool) -> None:
    """The sample data built with DIS on the CPU, then with DPFlow and VAE labelling on `device`."""
    print(f"\n3. pyramid build of the sample data: DIS on the CPU cores, then DPFlow + VAE labelling on {device}")
    cpu_seconds, manifest = timed_build(build_recipe(data, workdir, "build-dis", {"backend": "dis"}, None, quick))
    episodes = manifest["episodes"]["ok"]
    print(f"   DIS, CPU workers:            {cpu_seconds:7.1f} s, {episodes / cpu_seconds * 60:7.1f} episodes/min", flush=True)
    learned = {"backend": "ptlflow:dpflow", "options": {"random_weights": True, "precision": "bf16", "batch_size": 2 if quick else 32}}
    vae_dir = workdir / "vae-dpflow"
    run([*CLI, "train-vae", str(vae_config(data, vae_dir, "tiny", 4 if quick else 20, device, learned)), "--no-progress"],
        "train-vae on DPFlow flow")
    gpu_seconds, manifest = timed_build(build_recipe(data, workdir, "build-dpflow", learned, vae_dir, quick))
    print(f"   DPFlow + labelling, {device}:   {gpu_seconds:7.1f} s, {manifest['episodes']['ok'] / gpu_seconds * 60:7.1f} episodes/min "
          f"({cpu_seconds / gpu_seconds:.2f}x the DIS build's rate)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Toy sizes on CPU: checks the script, not the figures.")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"Comma-separated, of {', '.join(PARTS)}.")
    parser.add_argument("--keep", type=Path, help="Work here and keep it (default: a temporary folder, removed).")
    args = parser.parse_args()
    import torch

    device = "cpu" if args.quick else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run on a GPU machine, or pass --quick to check the script on CPU")
    parts = set(args.parts.split(","))
    if unknown := parts - set(PARTS):
        raise SystemExit(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU (--quick)'}; torch {torch.__version__}")
    try:
        data = workdir / "sample_data"
        if parts & {"vae", "trainer", "build"} and not data.exists():
            run([*CLI, "sample-data", str(data), *(["--episodes", "6", "--clips", "2"] if args.quick else [])], "sample-data")
        if "flow" in parts:
            flow_rates(device, args.quick)
        if "vae" in parts:
            vae_rates(data, workdir, device, args.quick)
        if "build" in parts:
            builds(data, workdir, device, args.quick)
        if "trainer" in parts:
            if "build" not in parts:
                timed_build(build_recipe(data, workdir, "build-dis", {"backend": "dis"}, None, args.quick))
            trainer_rates(workdir / "build-dis", workdir, args.quick)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
