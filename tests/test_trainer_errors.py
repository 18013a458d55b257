"""`pyramid train` and `pyramid predict` on bad input: one line on stderr naming the file or option, exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from pyramid.cli import main
from recipes.motus.config import DataConfig, load_recipe, model_config
from recipes.predict import predict_clip
from recipes.train import train
from tests.fixtures import shards

pytestmark = pytest.mark.usefixtures("torch_one_thread")

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return shards.build(tmp_path_factory.mktemp("shards"))


def write_recipe(path: Path, root: Path, output: Path, data: dict | None = None, **settings) -> Path:
    path.write_text(yaml.safe_dump({
        "model": "tiny",
        "data": {"format": "webdataset", "root": str(root), "targets": "actions", **(data or {})},
        "train": {"stage": 3, "trainable": ["video", "action", "understanding"], "output_dir": str(output),
                  "steps": 1, "batch_size": 1, "lr": 1e-3, "save_every": 1, **settings},
    }))
    return path


@pytest.fixture(scope="module")
def run(build, tmp_path_factory):
    """A one-step run: its output holds checkpoints/step_0000001."""
    tmp = tmp_path_factory.mktemp("run")
    train(load_recipe(write_recipe(tmp / "run.yaml", build.root, tmp / "run")), log=lambda line: None)
    return tmp / "run"


@pytest.fixture
def checkpoint(run, tmp_path):
    """A copy of the run's checkpoint, free to damage."""
    copy = tmp_path / "step_0000001"
    shutil.copytree(run / "checkpoints" / "step_0000001", copy)
    return copy


def pyramid(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit:
        main([str(arg) for arg in args])
    return exit.value.code, capsys.readouterr().err


def assert_user_error(code: int, stderr: str, *fragments) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, stderr)
    assert "unexpected" not in lines[0], stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, stderr)


def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def garbage(text: str):
    def write(path: Path) -> Path:
        path.write_text(text)
        return path
    return write


def mimic_vae_checkpoint(checkpoint: Path) -> Path:
    """What `pyramid train-vae` writes: one model at the top, a training state without a recipe."""
    shutil.rmtree(checkpoint)
    checkpoint.mkdir()
    save_file({"encoder.weight": torch.zeros(2, 2)}, checkpoint / WEIGHTS)
    (checkpoint / "config.json").write_text(json.dumps({"_class_name": "LatentActionVAE"}))
    (checkpoint / "training_state.json").write_text(json.dumps({"step": 6, "optimizer": {}, "scheduler": {},
                                                                "train_config": {}}))
    return checkpoint / "training_state.json"


@pytest.mark.parametrize("damage, member, problem", [
    (truncate, f"action/{WEIGHTS}", "unreadable safetensors file"),
    (garbage("{"), "training_state.json", "unreadable training state"),
    (garbage("[]"), "training_state.json", "unreadable training state"),
    (garbage('{"step": 1}'), "training_state.json", "no training recipe"),
])
def test_predict_names_the_damaged_file(checkpoint, tmp_path, capsys, damage, member, problem):
    damaged = damage(checkpoint / member)
    code, stderr = pyramid(capsys, "predict", checkpoint, "--mode", "vla", "--out", tmp_path / "out")
    assert_user_error(code, stderr, damaged, problem)


def test_predict_refuses_a_latent_action_vae_checkpoint(checkpoint, tmp_path, capsys):
    state = mimic_vae_checkpoint(checkpoint)
    code, stderr = pyramid(capsys, "predict", checkpoint, "--mode", "vla", "--out", tmp_path / "out")
    assert_user_error(code, stderr, state, "not a `pyramid train` checkpoint")


@pytest.mark.parametrize("option, value, fragment", [
    ("--format", "bogus", "--format: unknown data format 'bogus'"),
    ("--steps", "-3", "--steps"),
    ("--steps", "0", "--steps"),
    ("--clip", "-1", "--clip"),
    ("--clip", "9999", "no usable clip 9999 (--clip)"),
])
def test_predict_refuses_bad_options(checkpoint, tmp_path, capsys, option, value, fragment):
    out = tmp_path / "out"
    code, stderr = pyramid(capsys, "predict", checkpoint, "--mode", "vla", "--out", out, option, value)
    assert_user_error(code, stderr, fragment)
    assert not out.exists()


def test_predict_refuses_an_out_that_is_a_file(checkpoint, tmp_path, capsys):
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    code, stderr = pyramid(capsys, "predict", checkpoint, "--mode", "vla", "--out", out)
    assert_user_error(code, stderr, out, "--out is a file")
    assert out.read_text() == "keep me"


def test_predict_takes_the_steps_it_is_given(checkpoint, build, tmp_path):
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        predict_clip(checkpoint, "vla", tmp_path / "zero", steps=0)
    files = predict_clip(checkpoint, "vla", tmp_path / "one", steps=1)
    assert json.loads(files.summary.read_text())["steps"] == 1


def test_a_prediction_killed_midway_leaves_no_summary_of_the_earlier_one(checkpoint, tmp_path, monkeypatch):
    """prediction.json vouches for the video and actions beside it: a rerun stopped before its own leaves none."""
    import recipes.predict

    out = tmp_path / "out"
    first = predict_clip(checkpoint, "vla", out, steps=1)
    assert first.summary.is_file()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes.predict, "write_video", killed)
    with pytest.raises(KeyboardInterrupt):
        predict_clip(checkpoint, "vla", out, steps=1)
    assert not first.summary.exists()
    assert sorted(path.name for path in out.iterdir()) == ["actions.npy", "prediction.mp4"]  # no temporaries


def test_predict_gives_displacement_actions_as_moves_per_30_hz_step(checkpoint, tmp_path):
    """Trained in units of a source row's move (as the rows are normalised), predicted as the move of each step."""
    build = shards.build(tmp_path / "build", episodes=1, clips_per_episode=2, num_frames=24, source_fps=15.0)
    data = DataConfig(format="webdataset", root=str(build.root), targets="actions")
    as_recorded = predict_clip(checkpoint, "vla", tmp_path / "as_recorded", data=data, steps=1)
    meta = build.metas[json.loads(as_recorded.summary.read_text())["clip"]]
    data = data.model_copy(update={"displacement_actions": [meta["embodiment"]]})
    moves = predict_clip(checkpoint, "vla", tmp_path / "moves", data=data, steps=1)
    assert meta["action_fps"] == 15
    np.testing.assert_allclose(np.load(moves.actions), np.load(as_recorded.actions) * meta["action_fps"] / 30, rtol=1e-5, atol=1e-6)
    summaries = [json.loads(files.summary.read_text()) for files in (as_recorded, moves)]
    assert [summary["actions_are"] for summary in summaries] == ["as recorded", "moves per step"]


def test_predict_says_a_missing_build_does_not_exist(checkpoint, tmp_path, capsys):
    code, stderr = pyramid(capsys, "predict", checkpoint, "--mode", "vla", "--out", tmp_path / "out",
                           "--data", tmp_path / "nope")
    assert_user_error(code, stderr, f"{tmp_path / 'nope'}: the build directory does not exist")


def test_a_missing_build_is_named_as_such(tmp_path):
    from pyramid.errors import EpisodeError
    from recipes.motus.data import ClipExamples

    with pytest.raises(EpisodeError, match="the build directory does not exist"):
        ClipExamples(DataConfig(format="lance", root=str(tmp_path / "nope"), targets="actions"), model_config("tiny"))
    with pytest.raises(EpisodeError, match="no webdataset/ folder"):
        ClipExamples(DataConfig(format="webdataset", root=str(tmp_path), targets="actions"), model_config("tiny"))


def test_train_refuses_levels_outside_the_pyramid(build, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "levels.yaml", build.root, tmp_path / "out", data={"levels": [9]})
    code, stderr = pyramid(capsys, "train", recipe)
    assert_user_error(code, stderr, recipe, "data.levels: pyramid levels are 1-6, got [9]")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("frames, words", [
    ({"height": 36, "width": 32}, "model: frames.height 36 must be a multiple of 8: the video VAE shrinks frames 4x"),
    ({"height": 32, "width": 20}, "frames.width 20 must be a multiple of 8"),
])
def test_train_refuses_frame_sides_the_video_model_cannot_patch(build, tmp_path, capsys, frames, words):
    """A side the model cannot cut into whole tokens failed in the first step: "unexpected RuntimeError", exit 1,
    after the output was written."""
    recipe = write_recipe(tmp_path / "frames.yaml", build.root, tmp_path / "out")
    content = yaml.safe_load(recipe.read_text())
    content["model"] = {"preset": "tiny", "frames": frames}
    recipe.write_text(yaml.safe_dump(content))
    code, stderr = pyramid(capsys, "train", recipe)
    assert_user_error(code, stderr, recipe, words)
    assert not (tmp_path / "out").exists()
    model_config({"preset": "tiny", "frames": {"height": 40, "width": 32}})  # sides of whole tokens pass
    with pytest.raises(ValueError, match="frames.height 368 must be a multiple of 32"):
        model_config({"preset": "paper", "frames": {"height": 368, "width": 320}})


def test_train_refuses_to_write_into_a_build(build, tmp_path, capsys):
    copy = tmp_path / "build"
    shutil.copytree(build.root, copy)
    before = sorted(path.name for path in copy.iterdir())
    code, stderr = pyramid(capsys, "train", write_recipe(tmp_path / "into.yaml", copy, copy))
    assert_user_error(code, stderr, copy, "train.output_dir is a build directory")
    assert sorted(path.name for path in copy.iterdir()) == before


def test_train_and_predict_refuse_an_output_inside_the_build(build, checkpoint, tmp_path, capsys):
    copy = tmp_path / "build"
    shutil.copytree(build.root, copy)
    before = sorted(str(path) for path in copy.rglob("*"))
    code, stderr = pyramid(capsys, "train", write_recipe(tmp_path / "into.yaml", copy, copy / "runs"))
    assert_user_error(code, stderr, copy / "runs", "train.output_dir overlaps the input", "write it elsewhere")
    code, stderr = pyramid(capsys, "predict", checkpoint, "--mode", "vla", "--data", copy, "--out", copy / "prediction")
    assert_user_error(code, stderr, copy / "prediction", "the output overlaps the input")
    code, stderr = pyramid(capsys, "predict", checkpoint, "--mode", "vla", "--out", checkpoint / "prediction")
    assert_user_error(code, stderr, checkpoint / "prediction", f"the output overlaps the input {checkpoint}")
    assert not (checkpoint / "prediction").exists()
    assert sorted(str(path) for path in copy.rglob("*")) == before


def test_train_refuses_an_output_that_is_a_file(build, tmp_path, capsys):
    output = tmp_path / "output.txt"
    output.write_text("keep me")
    code, stderr = pyramid(capsys, "train", write_recipe(tmp_path / "file.yaml", build.root, output))
    assert_user_error(code, stderr, output, "train.output_dir is a file")


def test_train_says_a_missing_build_does_not_exist(tmp_path, capsys):
    code, stderr = pyramid(capsys, "train", write_recipe(tmp_path / "nope.yaml", tmp_path / "nope", tmp_path / "out"))
    assert_user_error(code, stderr, f"{tmp_path / 'nope'}: the build directory does not exist")


def remove(path: Path) -> Path:
    path.unlink()
    return path


@pytest.mark.parametrize("damage, member, problem", [
    (garbage("{"), "training_state.json", "unreadable training state"),
    (garbage("[1, 2]"), "training_state.json", "unreadable training state"),
    (garbage('{"step": 1}'), "training_state.json", "missing or malformed"),
    (truncate, "optimizer.safetensors", "unreadable safetensors file"),
    (remove, "optimizer.safetensors", "missing from this checkpoint"),
    (truncate, "rng.safetensors", "unreadable safetensors file"),
    (truncate, f"video/{WEIGHTS}", "unreadable safetensors file"),
])
def test_resume_names_the_damaged_file(build, run, tmp_path, capsys, damage, member, problem):
    output = tmp_path / "resumed"
    shutil.copytree(run / "checkpoints", output / "checkpoints")
    damaged = damage(output / "checkpoints" / "step_0000001" / member)
    recipe = write_recipe(tmp_path / "resume.yaml", build.root, output, steps=2)
    code, stderr = pyramid(capsys, "train", recipe, "--resume")
    assert_user_error(code, stderr, damaged, problem)


def test_resume_names_a_checkpoint_of_another_model(build, run, tmp_path, capsys):
    output = tmp_path / "resumed"
    shutil.copytree(run / "checkpoints", output / "checkpoints")
    recipe = write_recipe(tmp_path / "resume.yaml", build.root, output, steps=2)
    wider = yaml.safe_load(recipe.read_text())
    wider["model"] = {"preset": "tiny", "action": {"dim": 48}}
    recipe.write_text(yaml.safe_dump(wider))
    code, stderr = pyramid(capsys, "train", recipe, "--resume")
    assert_user_error(code, stderr, output / "checkpoints" / "step_0000001", "trained with another recipe", "model.action.dim: ")
    state = output / "checkpoints" / "step_0000001" / "training_state.json"  # a checkpoint that kept no recipe
    state.write_text(json.dumps({key: value for key, value in json.loads(state.read_text()).items() if key != "recipe"}))
    code, stderr = pyramid(capsys, "train", recipe, "--resume")
    assert_user_error(code, stderr, output / "checkpoints" / "step_0000001", "weights do not fit the model")


@pytest.mark.parametrize("settings, words", [
    ({"lr": 2e-3}, "train.lr: 0.001 -> 0.002"),  # the restored optimizer state would have kept the old one
    ({"trainable": ["action"]}, 'train.trainable: ["video", "action", "understanding"] -> ["action"]'),
    ({"batch_size": 2, "seed": 3}, "train.batch_size: 1 -> 2; train.seed: 0 -> 3"),
])
def test_resume_refuses_a_recipe_that_changed_how_the_checkpoint_was_trained(build, run, tmp_path, capsys, settings, words):
    output = tmp_path / "resumed"
    shutil.copytree(run / "checkpoints", output / "checkpoints")
    recipe = write_recipe(tmp_path / "resume.yaml", build.root, output, steps=2, **settings)
    code, stderr = pyramid(capsys, "train", recipe, "--resume")
    assert_user_error(code, stderr, output / "checkpoints" / "step_0000001", "trained with another recipe", words)
    assert not (output / "checkpoints" / "step_0000002").exists()


def test_resume_refuses_an_argument_added_to_a_library_model(build, run, tmp_path, capsys):
    """Wan's and Qwen3-VL's arguments are free-form dicts: a key only the new recipe names is a change too."""
    output = tmp_path / "resumed"
    shutil.copytree(run / "checkpoints", output / "checkpoints")
    recipe = write_recipe(tmp_path / "resume.yaml", build.root, output, steps=2)
    changed = yaml.safe_load(recipe.read_text())
    changed["model"] = {"preset": "tiny", "video": {"transformer": {"added_kv_proj_dim": 8}}}
    recipe.write_text(yaml.safe_dump(changed))
    code, stderr = pyramid(capsys, "train", recipe, "--resume")
    assert_user_error(code, stderr, output / "checkpoints" / "step_0000001", "trained with another recipe",
                      "model.video.transformer.added_kv_proj_dim: (unset) -> 8")


def test_resume_takes_a_checkpoint_whose_recipe_transformers_filled_in(build, run, tmp_path, capsys):
    """Before build.py passed Qwen3-VL a copy of its architecture, transformers wrote rope_theta into the recipe's
    rope_scaling in place, and checkpoints recorded it: not a change of the recipe."""
    output = tmp_path / "resumed"
    shutil.copytree(run / "checkpoints", output / "checkpoints")
    state_file = output / "checkpoints" / "step_0000001" / "training_state.json"
    state = json.loads(state_file.read_text())
    state["recipe"]["model"]["vlm"]["architecture"]["text_config"]["rope_scaling"]["rope_theta"] = 500000.0
    state_file.write_text(json.dumps(state))
    code, _ = pyramid(capsys, "train", write_recipe(tmp_path / "resume.yaml", build.root, output, steps=2), "--resume")
    assert code in (0, None) and (output / "checkpoints" / "step_0000002").is_dir()


def test_resume_refuses_a_newest_checkpoint_that_lost_its_state(build, run, tmp_path, capsys):
    output = tmp_path / "resumed"
    shutil.copytree(run / "checkpoints" / "step_0000001", output / "checkpoints" / "step_0000001")
    shutil.copytree(run / "checkpoints" / "step_0000001", output / "checkpoints" / "step_0000002")
    remove(output / "checkpoints" / "step_0000002" / "training_state.json")
    code, stderr = pyramid(capsys, "train", write_recipe(tmp_path / "resume.yaml", build.root, output, steps=3), "--resume")
    assert_user_error(code, stderr, output / "checkpoints" / "step_0000002", "no training_state.json",
                      "to continue from")


def test_resume_takes_more_steps_other_cadences_and_another_output(build, run, tmp_path, capsys):
    output = tmp_path / "elsewhere"
    shutil.copytree(run / "checkpoints", output / "checkpoints")
    recipe = write_recipe(tmp_path / "resume.yaml", build.root, output, steps=2, save_every=2, log_every=5, precision="fp32")
    code, _ = pyramid(capsys, "train", recipe, "--resume")
    assert code in (0, None) and (output / "checkpoints" / "step_0000002").is_dir()


def test_the_torchrun_entry_point_is_pyramid_train(tmp_path):
    """`python -m recipes.train --help` read "--help" as a recipe and ended in a traceback; so did a missing recipe."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "recipes.train"]
    help_text = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=300)
    assert help_text.returncode == 0 and "Usage: pyramid train" in help_text.stdout and "--resume" in help_text.stdout
    result = subprocess.run([*command, str(tmp_path / "none.yaml")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'none.yaml'}: cannot read recipe")
