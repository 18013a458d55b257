"""Multi-process training with torchrun on CPU (gloo): DDP and FSDP agree, and FSDP resumes a DDP checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from tests.fixtures import shards


def torchrun(recipe: Path, *flags: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "-m", "recipes.train", str(recipe), *flags], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("done at step") == 1, result.stdout[-2000:]  # one of the two processes says it


def recipe(tmp_path: Path, root: Path, strategy: str) -> Path:
    path = tmp_path / f"{strategy}.yaml"
    path.write_text(yaml.safe_dump({
        "model": "tiny",
        "data": {"format": "lance", "root": str(root), "targets": "actions"},
        "train": {"stage": 3, "trainable": ["video", "action", "understanding"], "output_dir": str(tmp_path / strategy),
                  "steps": 3, "batch_size": 1, "lr": 1e-3, "save_every": 2, "distributed": strategy},
    }))
    return path


def test_fsdp_resumes_a_ddp_checkpoint_and_reaches_the_same_weights(tmp_path):
    build = shards.build(tmp_path / "build")
    torchrun(recipe(tmp_path, build.root, "ddp"))
    ddp = tmp_path / "ddp" / "checkpoints"
    shutil.copytree(ddp / "step_0000002", tmp_path / "fsdp" / "checkpoints" / "step_0000002")
    torchrun(recipe(tmp_path, build.root, "fsdp"), "--resume")
    fsdp = tmp_path / "fsdp" / "checkpoints"
    for name in ("video", "action", "understanding"):
        a = load_file(ddp / "step_0000003" / name / "diffusion_pytorch_model.safetensors")
        b = load_file(fsdp / "step_0000003" / name / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    a = load_file(ddp / "step_0000003" / "optimizer.safetensors")
    b = load_file(fsdp / "step_0000003" / "optimizer.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)
