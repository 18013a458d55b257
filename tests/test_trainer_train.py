"""The training recipe end to end on CPU with the tiny config: steps on real builds, loss falls, exact resume, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from recipes.commands import register
from recipes.motus.checkpoint import latest_checkpoint
from recipes.motus.config import load_recipe
from recipes.train import train
from tests.fixtures import shards


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return shards.build(tmp_path_factory.mktemp("shards"))


def write_recipe(path: Path, root: Path, output: Path, data: dict | None = None, **train) -> Path:
    recipe = {
        "model": "tiny",
        "data": {"format": "webdataset", "root": str(root), "targets": "actions", **(data or {})},
        "train": {"stage": 3, "trainable": ["video", "action", "understanding"], "output_dir": str(output),
                  "steps": 2, "batch_size": 2, "lr": 1e-3, "warmup_steps": 2, "log_every": 1, "save_every": 100,
                  **train},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def run(tmp_path: Path, root: Path, name: str = "run", data: dict | None = None, resume: bool = False,
        **train_settings) -> dict:
    recipe = write_recipe(tmp_path / f"{name}.yaml", root, tmp_path / name, data, **train_settings)
    return train(load_recipe(recipe), resume=resume, log=lambda line: None)


@pytest.fixture(scope="module")
def pipeline_build(tmp_path_factory):
    """A real build by the project's own pipeline (`pyramid sample-data` + `pyramid build`), at the tiny size."""
    tmp = tmp_path_factory.mktemp("pipeline")
    cli = [sys.executable, "-m", "pyramid"]
    subprocess.run([*cli, "sample-data", str(tmp / "sample"), "--episodes", "2", "--clips", "1"], check=True,
                   capture_output=True, timeout=120)
    recipe = {"sources": [{"kind": "lerobot", "root": str(tmp / "sample" / "lerobot")}], "output": str(tmp / "out"),
              "video_size": [32, 32], "fps": 10, "clip_frames": 20, "shard_size_mb": 8,
              "formats": ["webdataset", "lance"], "filters": {"min_frames": 8, "static_motion_threshold": 0.0}}
    (tmp / "build.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run([*cli, "build", str(tmp / "build.yaml"), "--quiet", "--workers", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "out"


@pytest.mark.parametrize("format", ["webdataset", "lance"])
def test_one_training_step_on_a_real_build(pipeline_build, tmp_path, format):
    result = run(tmp_path, pipeline_build, data={"format": format}, steps=1)
    assert result["step"] == 1 and np.isfinite(result["losses"][0])
    assert Path(result["checkpoint"]).name == "step_0000001"


def test_loss_falls_over_50_steps(build, tmp_path):
    result = run(tmp_path, build.root, steps=50, warmup_steps=5, lr=2e-3, save_every=50)
    losses = result["losses"]
    assert len(losses) == 50
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.8 * first, f"loss went from {first:.3f} to {last:.3f}"


def test_resume_is_exact(build, tmp_path):
    settings = dict(steps=4, save_every=2, grad_accum_steps=2, batch_size=1)
    straight = run(tmp_path, build.root, "straight", **settings)
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "step_0000002", resumed_dir / "checkpoints" / "step_0000002")
    resumed = run(tmp_path, build.root, "resumed", resume=True, **settings)
    assert resumed["losses"] == straight["losses"][2:]
    a, b = Path(straight["checkpoint"]), Path(resumed["checkpoint"])
    for name in ("video", "action", "understanding"):
        weights = "diffusion_pytorch_model.safetensors"
        wa, wb = load_file(a / name / weights), load_file(b / name / weights)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    oa, ob = load_file(a / "optimizer.safetensors"), load_file(b / "optimizer.safetensors")
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)
    sa, sb = (json.loads((d / "training_state.json").read_text()) for d in (a, b))
    assert sa["samples_consumed"] == sb["samples_consumed"] == 8 and sa["scheduler"] == sb["scheduler"]


def test_checkpoints_are_safetensors_and_json_that_diffusers_reads(build, tmp_path):
    result = run(tmp_path, build.root, steps=1)
    checkpoint = Path(result["checkpoint"])
    files = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
    assert {p.rsplit(".", 1)[-1] for p in files} == {"safetensors", "json"}
    from diffusers import WanTransformer3DModel

    from recipes.motus.experts import ActionExpert

    video = WanTransformer3DModel.from_pretrained(checkpoint / "video")
    action = ActionExpert.from_pretrained(checkpoint / "action")
    assert video.config.num_layers == action.config.num_layers == 2
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_stage_1_trains_the_video_expert_only(build, tmp_path):
    result = run(tmp_path, build.root, data={"targets": "none"}, stage=1, trainable=["video"], steps=2)
    assert all(np.isfinite(result["losses"]))
    after = Path(result["checkpoint"])
    stage2 = run(tmp_path, build.root, "stage2", data={"targets": "latent_actions"}, stage=2, steps=1,
                 init_from=str(after), lr=1e-12, warmup_steps=0)
    start = json.loads((Path(stage2["checkpoint"]) / "training_state.json").read_text())
    assert start["stage"] == 2
    video1 = load_file(after / "video" / "diffusion_pytorch_model.safetensors")
    video2 = load_file(Path(stage2["checkpoint"]) / "video" / "diffusion_pytorch_model.safetensors")
    key = "blocks.0.ffn.net.2.weight"
    torch.testing.assert_close(video1[key], video2[key], rtol=0, atol=1e-6)  # started from stage 1's weights
    # stage 1 left the other experts at their (seeded) initial weights
    torch.manual_seed(0)
    from recipes.motus.build import build_motus
    from recipes.motus.config import model_config

    initial = build_motus(model_config("tiny"))
    action1 = load_file(after / "action" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(action1[k], v) for k, v in initial.action.state_dict().items() if k in action1)


def test_stage_recipes_check_their_targets(build, tmp_path):
    from recipes.motus.config import TrainRecipeError

    path = write_recipe(tmp_path / "bad.yaml", build.root, tmp_path / "bad", data={"targets": "none"})
    with pytest.raises(TrainRecipeError, match="stage 3 needs data.targets latent_actions or actions"):
        load_recipe(path)


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_cli_refuses_an_output_with_checkpoints_unless_resuming(build, tmp_path):
    runner = CliRunner()
    recipe = write_recipe(tmp_path / "again.yaml", build.root, tmp_path / "again", steps=1)
    assert runner.invoke(cli(), ["train", str(recipe)]).exit_code == 0
    again = subprocess.run([sys.executable, "-m", "pyramid", "train", str(recipe)], capture_output=True, text=True,
                           timeout=300)
    # (the last line: a library may print an import notice first)
    assert again.returncode == 2 and "Traceback" not in again.stderr and again.stderr.strip().splitlines()[-1] == \
        f"error: {tmp_path / 'again'} already holds checkpoints: pass --resume to continue, or choose another output directory"
    resumed = runner.invoke(cli(), ["train", str(recipe), "--resume"])
    assert resumed.exit_code == 0 and "resumed from" in resumed.output and "done at step 1" in resumed.output, resumed.output


def test_cli_trains_then_predicts_in_every_mode(build, tmp_path):
    runner = CliRunner()
    recipe = write_recipe(tmp_path / "cli.yaml", build.root, tmp_path / "cli", steps=2)
    result = runner.invoke(cli(), ["train", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "step 2/2" in result.output and "saved" in result.output
    checkpoint = latest_checkpoint(tmp_path / "cli")
    for mode in ("vla", "vgm", "world_model", "idm", "joint"):
        out = tmp_path / f"pred_{mode}"
        result = runner.invoke(cli(), ["predict", str(checkpoint), "--mode", mode, "--out", str(out), "--steps", "2"])
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "prediction.json").read_text())
        assert summary["mode"] == mode and summary["video_frames"] == 9
        assert np.load(out / "actions.npy").shape == (48, 7)
    # world model: the given actions come back unchanged (in the robot's units)
    from recipes.motus.config import DataConfig, model_config
    from recipes.motus.data import ClipExamples

    given = ClipExamples(DataConfig(format="webdataset", root=str(build.root), targets="actions"), model_config("tiny"))
    example = given[(0, 0)]
    expected = given.normalizer.denormalize(example["actions"].numpy()[:, :7], "tiny_arm", "actions")
    np.testing.assert_allclose(np.load(tmp_path / "pred_world_model" / "actions.npy"), expected, atol=1e-5)


def test_cli_reports_bad_recipes_and_modes(build, tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": "tiny", "data": {"format": "tar", "root": "x", "targets": "none"},
                                   "train": {"stage": 1, "trainable": ["video"], "output_dir": "o", "steps": 0,
                                             "batch_size": 1, "lr": 1e-3, "colour": "blue"}}))
    result = runner.invoke(cli(), ["train", str(bad)])
    assert result.exit_code == 2
    for fragment in ("data.format", "train.steps", "train.colour"):  # every problem at once
        assert fragment in result.output
    result = runner.invoke(cli(), ["predict", str(tmp_path), "--mode", "dream"])
    assert result.exit_code == 2 and "unknown mode 'dream'" in result.output
