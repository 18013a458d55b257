"""What `train-vae`, `label`, `eval-latents` and `label-curve` do with inputs that do not fit: a one-line error
(exit code 2) naming the file or setting, or, where that is what a user means, a redo."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from latent_action.checkpoint import load_trained
from latent_action.config import parse_config
from latent_action.evaluation import evaluate_latents
from latent_action.label_curve import config_for_share, label_curve
from latent_action.labelling import RECORD_FILE, label_source
from latent_action.train import train
from pyramid.cli import app
from pyramid.errors import EpisodeError
from pyramid.sample_data import write_sample_data

pytestmark = pytest.mark.usefixtures("torch_one_thread")
runner = CliRunner()
quiet = dict(show_progress=False, echo=lambda _: None)


def config_dict(sample, out_dir, **optim) -> dict:
    return {
        "model": {"preset": "tiny"},
        "data": {"sources": [{"root": str(sample / "lerobot")}, {"root": str(sample / "videos")}],
                 "flow": {"frame_height": 96, "frame_width": 80}, "holdout_fraction": 0.34},
        "optim": {"batch_size": 4, "max_steps": 2, "warmup_steps": 1, **optim},
        "run": {"out_dir": str(out_dir), "eval_every": 2, "checkpoint_every": 1, "device": "cpu"},
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    write_sample_data(root, robot_episodes=3, video_clips=2, num_frames=6)
    return root


@pytest.fixture(scope="module")
def run(sample, tmp_path_factory):
    """A finished two-step run with a checkpoint at each step (two VAEs of different weights)."""
    out_dir = tmp_path_factory.mktemp("run")
    train(parse_config(config_dict(sample, out_dir)), **quiet)
    return out_dir


def step(run, number: int):
    return run / "checkpoints" / f"step_{number:07d}"


def damaged_copy(run, tmp_path, change) -> str:
    copy = tmp_path / "checkpoint"
    shutil.copytree(step(run, 2), copy)
    change(copy)
    return str(copy)


def one_line_error(result, *words: str) -> str:
    """The error line of a CLI result that must have failed on a user error."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unexpected" not in lines[0], result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------ label


def test_label_refuses_latents_of_another_checkpoint_unless_overwriting(sample, run, tmp_path):
    videos, out = sample / "videos", tmp_path / "out"
    label_source(step(run, 2), videos, out, device="cpu", echo=lambda _: None)
    made_by_two = {path.name: np.load(path) for path in (out / "latent_actions").glob("*.npy")}
    refused = runner.invoke(app, ["label", "--vae", str(step(run, 1)), str(videos), str(out), "--device", "cpu"])
    one_line_error(refused, str(out), str(step(run, 2)), "pass --overwrite")
    assert all(np.array_equal(np.load(out / "latent_actions" / name), latents) for name, latents in made_by_two.items())

    report = label_source(step(run, 1), videos, out, overwrite=True, device="cpu", echo=lambda _: None)
    assert report["reused"] == 0
    fresh = tmp_path / "fresh"
    label_source(step(run, 1), videos, fresh, device="cpu", echo=lambda _: None)
    for name in made_by_two:
        assert np.array_equal(np.load(out / "latent_actions" / name), np.load(fresh / "latent_actions" / name))
    assert json.loads((out / "latent_stats.json").read_text())["checkpoint"] == str(step(run, 1))
    assert label_source(step(run, 1), videos, out, device="cpu", echo=lambda _: None)["reused"] == len(made_by_two)


def test_label_keeps_only_the_latents_of_the_data_and_checkpoint_it_records(sample, run, tmp_path):
    """Episode ids name a dataset's folder, not where it lies: another dataset may hold the same ids."""
    out, other = tmp_path / "out", tmp_path / "elsewhere"
    write_sample_data(other, robot_episodes=3, video_clips=2, num_frames=6, seed=1)
    label_source(step(run, 2), sample / "videos", out, device="cpu", echo=lambda _: None)
    refused = runner.invoke(app, ["label", "--vae", str(step(run, 2)), str(other / "videos"), str(out), "--device", "cpu"])
    one_line_error(refused, f"from the dataset at {sample / 'videos'}, not {other / 'videos'}", "pass --overwrite")
    label_source(step(run, 1), sample / "lerobot", out, overwrite=True, device="cpu", echo=lambda _: None)
    fresh = tmp_path / "fresh"
    label_source(step(run, 1), sample / "lerobot", fresh, device="cpu", echo=lambda _: None)
    names = sorted(path.name for path in (fresh / "latent_actions").glob("*.npy"))
    assert sorted(path.name for path in (out / "latent_actions").glob("*.npy")) == names  # none of the videos' left


@pytest.mark.parametrize("member", ["action_normalizer.json", "heldout_episodes.json"])
def test_label_writes_nothing_with_a_damaged_checkpoint(sample, run, tmp_path, member):
    checkpoint = damaged_copy(run, tmp_path, lambda d: (d / member).write_text("nope"))
    labelled = runner.invoke(app, ["label", "--vae", checkpoint, str(sample / "videos"), str(tmp_path / "out"), "--device", "cpu"])
    one_line_error(labelled, member)
    assert not (tmp_path / "out").exists()


def test_label_refuses_latents_whose_checkpoint_is_unrecorded(sample, run, tmp_path):
    """As an OUT labelled before labels named their checkpoint, or by an --overwrite run that was killed, holds."""
    label_source(step(run, 2), sample / "videos", tmp_path, device="cpu", echo=lambda _: None)
    (tmp_path / RECORD_FILE).unlink()
    with pytest.raises(EpisodeError, match="a checkpoint it does not record .*pass --overwrite"):
        label_source(step(run, 2), sample / "videos", tmp_path, device="cpu", echo=lambda _: None)


def test_label_redoes_a_latent_file_a_killed_run_left_partial(sample, run, tmp_path):
    label_source(step(run, 2), sample / "videos", tmp_path, device="cpu", echo=lambda _: None)
    partial = sorted((tmp_path / "latent_actions").glob("*.npy"))[0]
    whole = np.load(partial)
    partial.write_bytes(partial.read_bytes()[:100])
    messages: list[str] = []
    report = label_source(step(run, 2), sample / "videos", tmp_path, device="cpu", echo=messages.append)
    assert report["reused"] == report["episodes"] - 1
    assert any(str(partial) in message and "relabelling" in message for message in messages)
    assert np.allclose(np.load(partial), whole, atol=1e-6)


def test_label_relabels_a_latent_file_that_links_elsewhere_and_leaves_its_target_alone(sample, run, tmp_path):
    """A latent file linked to one outside OUT was read and reused as if label had written it."""
    out = tmp_path / "out"
    label_source(step(run, 2), sample / "videos", out, device="cpu", echo=lambda _: None)
    linked = sorted((out / "latent_actions").glob("*.npy"))[0]
    whole = np.load(linked)
    elsewhere = tmp_path / "elsewhere.npy"
    np.save(elsewhere, np.zeros_like(whole))
    linked.unlink()
    linked.symlink_to(elsewhere)
    messages: list[str] = []
    report = label_source(step(run, 2), sample / "videos", out, device="cpu", echo=messages.append)
    assert report["reused"] == report["episodes"] - 1
    assert any(str(linked) in message and "a link (to" in message for message in messages)
    assert not linked.is_symlink() and np.allclose(np.load(linked), whole, atol=1e-6)
    assert not np.load(elsewhere).any()


@pytest.mark.parametrize("device", ["banana", "cuda:99"])
def test_a_device_that_is_not_here_is_one_line_even_when_every_latent_is_reused(sample, run, tmp_path, device):
    label_source(step(run, 2), sample / "videos", tmp_path, device="cpu", echo=lambda _: None)
    result = runner.invoke(app, ["label", "--vae", str(step(run, 2)), str(sample / "videos"), str(tmp_path), "--device", device])
    one_line_error(result, f"device '{device}'")
    evaluated = runner.invoke(app, ["eval-latents", "--vae", str(step(run, 2)), str(sample / "lerobot"), "--device", device,
                                    "--out", str(tmp_path / "eval")])
    one_line_error(evaluated, f"device '{device}'")


# ------------------------------------------------------------------------------------------------ checkpoints


def widen_heads(directory):
    config = json.loads((directory / "config.json").read_text())
    config["head_hidden_dim"] *= 2
    (directory / "config.json").write_text(json.dumps(config))


def test_weights_of_another_shape_name_the_checkpoint_and_the_first_tensor(sample, run, tmp_path):
    checkpoint = damaged_copy(run, tmp_path, widen_heads)
    with pytest.raises(EpisodeError, match=r"checkpoint: its weights do not fit .*action_encoder\.mlp\.0\.weight is \[256, "):
        load_trained(checkpoint)
    labelled = runner.invoke(app, ["label", "--vae", checkpoint, str(sample / "videos"), str(tmp_path / "out"), "--device", "cpu"])
    one_line_error(labelled, checkpoint, "action_encoder.mlp.0.weight")


def test_missing_weights_are_named_and_a_pickle_beside_them_is_never_loaded(run, tmp_path):
    def pickle_instead(directory):
        (directory / "diffusion_pytorch_model.safetensors").unlink()
        (directory / "diffusion_pytorch_model.bin").write_bytes(b"not to be unpickled")

    checkpoint = damaged_copy(run, tmp_path, pickle_instead)
    with pytest.raises(EpisodeError, match="diffusion_pytorch_model.safetensors: missing"):
        load_trained(checkpoint)


@pytest.mark.parametrize("config, words", [
    ('{"foo": 1}', "not a readable latent-action VAE checkpoint (TypeError: "),
    ('{"foo": ', "config.json: not JSON (Expecting value"),
])
def test_a_config_json_that_is_not_a_vaes_is_named(sample, run, tmp_path, config, words):
    checkpoint = damaged_copy(run, tmp_path, lambda d: (d / "config.json").write_text(config))
    labelled = runner.invoke(app, ["label", "--vae", checkpoint, str(sample / "videos"), str(tmp_path / "out"), "--device", "cpu"])
    one_line_error(labelled, checkpoint, words)


@pytest.mark.parametrize("content", ["nope", "5", '[1, 2]'])
def test_an_unreadable_heldout_list_is_named(run, tmp_path, content):
    checkpoint = damaged_copy(run, tmp_path, lambda d: (d / "heldout_episodes.json").write_text(content))
    with pytest.raises(EpisodeError, match="heldout_episodes.json: not a JSON list of held-out episode ids"):
        load_trained(checkpoint)


# ------------------------------------------------------------------------------------------------ train-vae sources


def test_train_vae_refuses_two_sources_whose_episode_ids_would_collide(sample, tmp_path):
    """Ids carry the root folder's name, not its path: the held-out split and the label share, drawn by id, would
    take the episodes of one for the other's."""
    twin = tmp_path / "elsewhere" / "lerobot"
    shutil.copytree(sample / "lerobot", twin)
    for second, words in [(twin, "are both 'lerobot' in folders named 'lerobot': their episode ids would collide"),
                          (sample / "lerobot", "is listed twice")]:
        raw = config_dict(sample, tmp_path / "run")
        raw["data"]["sources"].append({"root": str(second)})
        (tmp_path / "twice.yaml").write_text(yaml.safe_dump(raw))
        result = runner.invoke(app, ["train-vae", str(tmp_path / "twice.yaml"), "--no-progress"])
        one_line_error(result, "data.sources: ", words)
    assert not (tmp_path / "run").exists()


def test_outputs_that_overlap_what_a_command_reads_are_refused(sample, run, tmp_path):
    """Written into a source, a run's files would be read back as data (a videos root takes any mp4 under it)."""
    before = sorted(sample.rglob("*"))
    raw = config_dict(sample, sample / "lerobot" / "vae-run")
    (tmp_path / "inside.yaml").write_text(yaml.safe_dump(raw))
    one_line_error(runner.invoke(app, ["train-vae", str(tmp_path / "inside.yaml"), "--no-progress"]),
                   f"{sample / 'lerobot' / 'vae-run'}: run.out_dir overlaps the input {sample / 'lerobot'}")
    vae = str(step(run, 2))
    one_line_error(runner.invoke(app, ["label", "--vae", vae, str(sample / "videos"), str(sample / "videos"), "--device", "cpu"]),
                   "the output overlaps the input")
    one_line_error(runner.invoke(app, ["eval-latents", "--vae", vae, str(sample / "lerobot"), "--device", "cpu",
                                       "--out", str(sample / "lerobot" / "eval")]), "--out overlaps the input")
    assert sorted(sample.rglob("*")) == before
    checkpoint = sorted(step(run, 2).rglob("*"))
    one_line_error(runner.invoke(app, ["label", "--vae", vae, str(sample / "videos"), str(step(run, 2) / "labels"), "--device", "cpu"]),
                   f"the output overlaps the input {vae}")
    one_line_error(runner.invoke(app, ["eval-latents", "--vae", vae, str(sample / "lerobot"), "--device", "cpu",
                                       "--out", str(run / "checkpoints")]), f"--out overlaps the input {vae}")
    assert sorted(step(run, 2).rglob("*")) == checkpoint


def test_a_run_out_dir_that_is_a_file_is_refused_before_reading_data(sample, tmp_path):
    (tmp_path / "out.txt").write_text("keep me")
    (tmp_path / "file.yaml").write_text(yaml.safe_dump(config_dict(sample, tmp_path / "out.txt")))
    result = runner.invoke(app, ["train-vae", str(tmp_path / "file.yaml"), "--no-progress"])
    assert one_line_error(result, "run.out_dir is a file") and "pairs:" not in result.output
    assert (tmp_path / "out.txt").read_text() == "keep me"


def test_a_second_train_vae_into_one_run_out_dir_is_refused(sample, tmp_path):
    """Two runs saved their checkpoints over each other (each told of one trained with the other's settings), and one's
    log lines went to a file the other had replaced."""
    out = tmp_path / "run"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config_dict(sample, out)))
    with held_by_another_process(out / ".train.lock"):
        result = runner.invoke(app, ["train-vae", str(tmp_path / "run.yaml"), "--no-progress"])
        one_line_error(result, str(out), "another train-vae run is writing here")
    assert sorted(path.name for path in out.iterdir()) == [".train.lock"]
    assert runner.invoke(app, ["train-vae", str(tmp_path / "run.yaml"), "--no-progress"]).exit_code == 0


def test_label_fails_when_every_episode_was_skipped(sample, run, tmp_path):
    result = runner.invoke(app, ["label", "--vae", str(step(run, 2)), str(sample / "lerobot"), str(tmp_path / "out"),
                                 "--device", "cpu", "--cameras", "no_such_camera"])
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1].startswith(
        f"error: {sample / 'lerobot'}: no episode labelled, all 3 skipped (the first: "), result.stderr
    assert "no camera 'no_such_camera'" in result.stderr


# ------------------------------------------------------------------------------------------------ train-vae --resume


def interrupted_run(run, tmp_path):
    out_dir = tmp_path / "interrupted"
    shutil.copytree(step(run, 1), out_dir / "checkpoints" / "step_0000001")
    return out_dir


@pytest.mark.parametrize("model, flow, words", [
    ({"head_hidden_dim": 64}, {}, "model.head_hidden_dim: null -> 64"),
    ({}, {"frame_height": 64, "frame_width": 64}, "data.flow.frame_height: 96 -> 64; data.flow.frame_width: 80 -> 64"),
])
def test_resume_refuses_a_config_that_changed_what_the_checkpoint_was_trained_with(sample, run, tmp_path, model, flow, words):
    raw = config_dict(sample, interrupted_run(run, tmp_path), max_steps=3)
    raw["model"].update(model)
    raw["data"]["flow"].update(flow)
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train-vae", str(tmp_path / "changed.yaml"), "--resume", "--no-progress"])
    one_line_error(result, "step_0000001: trained with other settings", words)
    assert not (tmp_path / "interrupted" / "checkpoints" / "step_0000003").exists()


@pytest.mark.parametrize("member, damage, words", [
    ("optimizer.safetensors", lambda path: path.write_bytes(b"\xff" * 64), "unreadable safetensors file, the checkpoint is damaged"),
    ("optimizer.safetensors", lambda path: path.unlink(), "missing from this checkpoint"),
    ("diffusion_pytorch_model.safetensors", lambda path: path.write_bytes(b"\xff" * 64), "cannot resume from this checkpoint (SafetensorError"),
    ("rng.safetensors", lambda path: path.unlink(), "missing from this checkpoint"),
    ("training_state.json", lambda path: path.write_text("{}"), "missing or malformed step, optimizer, scheduler: not a `pyramid train-vae` checkpoint"),
])
def test_resume_names_the_damaged_file_of_its_checkpoint(sample, run, tmp_path, member, damage, words):
    out_dir = interrupted_run(run, tmp_path)
    damage(out_dir / "checkpoints" / "step_0000001" / member)
    (tmp_path / "torn.yaml").write_text(yaml.safe_dump(config_dict(sample, out_dir, max_steps=3)))
    result = runner.invoke(app, ["train-vae", str(tmp_path / "torn.yaml"), "--resume", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {out_dir / 'checkpoints' / 'step_0000001' / member}: {words}"), result.stderr


def test_resume_refuses_other_data_at_the_roots_it_may_move_to(sample, run, tmp_path):
    """Data roots may change on resume (a dataset moved); a dataset written again with another episode may not: its
    split and action statistics would change under the run."""
    other = tmp_path / "other"
    write_sample_data(other, robot_episodes=4, video_clips=2, num_frames=6)
    raw = config_dict(other, interrupted_run(run, tmp_path), max_steps=3)
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train-vae", str(tmp_path / "other.yaml"), "--resume", "--no-progress"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr, result.output
    last = result.stderr.strip().splitlines()[-1]  # after the line saying what was read, as the data is read first
    assert last.startswith("error: ") and "step_0000001: trained on other data: " in last and "resume on the data it was trained on" in last
    assert not (tmp_path / "interrupted" / "checkpoints" / "step_0000003").exists()


def test_resume_takes_a_longer_run_other_intervals_and_another_place(sample, run, tmp_path):
    raw = config_dict(sample, interrupted_run(run, tmp_path), max_steps=3)
    raw["run"].update({"log_every": 5, "eval_every": 3, "checkpoint_every": 3, "keep_checkpoints": 1})
    final = train(parse_config(raw), resume=True, **quiet)
    assert final.name == "step_0000003"


def test_resume_from_a_checkpoint_without_its_config_names_the_tensor_that_does_not_fit(sample, run, tmp_path):
    out_dir = interrupted_run(run, tmp_path)
    state_path = out_dir / "checkpoints" / "step_0000001" / "training_state.json"
    state = json.loads(state_path.read_text())
    del state["train_config"]  # as a checkpoint saved before the config was recorded
    state_path.write_text(json.dumps(state))
    raw = config_dict(sample, out_dir, max_steps=3)
    raw["model"]["head_hidden_dim"] = 64
    with pytest.raises(EpisodeError, match=r"cannot resume: its weights do not fit .*action_encoder\.mlp\.0\.weight"):
        train(parse_config(raw), resume=True, **quiet)


# ------------------------------------------------------------------------------------------------ eval-latents


@contextlib.contextmanager
def held_by_another_process(lock: Path):
    """A process that holds `lock` (as a run writing beside it does) until the block ends."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_two_label_runs_into_one_output_refuse_the_second(sample, run, tmp_path):
    """Each would reuse the other's latents as its own, under a record naming one checkpoint."""
    out = tmp_path / "out"
    with held_by_another_process(out / ".latents.lock"):
        refused = runner.invoke(app, ["label", "--vae", str(step(run, 1)), str(sample / "videos"), str(out), "--device", "cpu"])
        one_line_error(refused, str(out), "another label or eval-latents run is writing here")
    assert sorted(path.name for path in out.iterdir()) == [".latents.lock"]
    left = [out / ".labelled_with.tmp99999999.json", out / "latent_actions" / ".clip_000.tmp99999999.npy"]
    for path in left:  # by a run killed before its renames
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"cut")
    label_source(step(run, 1), sample / "videos", out, device="cpu", echo=lambda _: None)
    assert not any(path.exists() for path in left)


def test_label_refuses_a_latent_folder_that_links_outside_its_output(sample, run, tmp_path):
    """It removes latent files there that it did not write: another project's."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "other_project.npy").write_bytes(b"keep")
    out.mkdir()
    (out / "latent_actions").symlink_to(elsewhere, target_is_directory=True)
    refused = runner.invoke(app, ["label", "--vae", str(step(run, 2)), str(sample / "videos"), str(out), "--device", "cpu"])
    one_line_error(refused, str(out / "latent_actions"), "links outside the output")
    assert (elsewhere / "other_project.npy").read_bytes() == b"keep"


def test_label_and_eval_latents_into_a_file_say_so_before_any_work(sample, run, tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    labelled = runner.invoke(app, ["label", "--vae", str(step(run, 2)), str(sample / "videos"), str(out), "--device", "cpu"])
    one_line_error(labelled, f"{out}: cannot be the output directory ({out} is a file)")
    evaluated = runner.invoke(app, ["eval-latents", "--vae", str(step(run, 2)), str(sample / "lerobot"), "--device", "cpu",
                                    "--out", str(out / "eval")])
    one_line_error(evaluated, f"{out / 'eval'}: cannot be the output directory ({out} is a file)")
    assert out.read_text() == "keep me"


def test_an_evaluation_into_an_output_another_label_or_evaluation_writes_is_refused(sample, run, tmp_path):
    """Else the report and eval.json of one sit beside the probe plots of the other; and an evaluation removed a live
    label run's temporaries, which then failed after writing every latent. Both commands take one lock."""
    out = tmp_path / "eval"
    with held_by_another_process(out / ".latents.lock"):
        refused = runner.invoke(app, ["eval-latents", "--vae", str(step(run, 2)), str(sample / "lerobot"), "--device", "cpu",
                                      "--split", "all", "--out", str(out)])
        one_line_error(refused, str(out), "another label or eval-latents run is writing here")
    assert sorted(path.name for path in out.iterdir()) == [".latents.lock"]
    (out / ".eval.tmp99999999.json").write_text("{cut")  # by a run killed before its rename
    evaluate_latents(step(run, 2), sample / "lerobot", out, split="all", device="cpu", echo=lambda _: None)
    assert not (out / ".eval.tmp99999999.json").exists() and (out / "eval.json").is_file()


@pytest.mark.parametrize("alpha", ["nan", "inf", "-1", "0"])
def test_eval_latents_wants_a_positive_finite_alpha(sample, run, tmp_path, alpha):
    result = runner.invoke(app, ["eval-latents", "--vae", str(step(run, 2)), str(sample / "lerobot"), "--device", "cpu",
                                 "--alpha", alpha, "--out", str(tmp_path)])
    one_line_error(result, "alpha", "finite number > 0")


def test_eval_latents_replaces_an_earlier_evaluation_whole(sample, run, tmp_path):
    """Probe plots are per embodiment: one an earlier evaluation wrote must not appear in this one's report."""
    out = tmp_path / "eval"
    evaluate_latents(step(run, 2), sample / "lerobot", out, split="all", device="cpu", echo=lambda _: None)
    (out / "probe_other_arm.png").write_bytes((out / "latent_histograms.png").read_bytes())
    evaluate_latents(step(run, 1), sample / "lerobot", out, split="all", device="cpu", echo=lambda _: None)
    assert not (out / "probe_other_arm.png").exists()
    assert json.loads((out / "eval.json").read_text())["checkpoint"] == str(step(run, 1))


def test_eval_latents_says_why_nothing_was_scored(sample, run, tmp_path):
    no_actions = runner.invoke(app, ["eval-latents", "--vae", str(step(run, 2)), str(sample / "videos"), "--device", "cpu",
                                     "--split", "all", "--out", str(tmp_path / "eval")])
    one_line_error(no_actions, "no episode with actions to score the latent actions against")
    missing = runner.invoke(app, ["eval-latents", "--vae", str(step(run, 2)), str(sample / "lerobot"), "--device", "cpu",
                                  "--split", "all", "--cameras", "no_such_camera", "--out", str(tmp_path / "eval")])
    assert missing.exit_code == 2 and missing.stderr.strip().splitlines()[-1].startswith(
        f"error: {sample / 'lerobot'}: no episode scored: the 3 episode(s) here were skipped (the first: "), missing.stderr
    assert not (tmp_path / "eval").exists()


def test_eval_latents_names_the_dimensions_it_has_when_asked_for_others(sample, run, tmp_path):
    result = runner.invoke(app, ["eval-latents", "--vae", str(step(run, 2)), str(sample / "lerobot"), "--device", "cpu",
                                 "--dims", "x,nope", "--out", str(tmp_path)])
    one_line_error(result, "no action dimension named 'nope'", "x, y, grip")
    scored = evaluate_latents(step(run, 2), sample / "lerobot", tmp_path, device="cpu", dims=["x", "grip"], echo=lambda _: None)
    assert set(scored["probe"]["per_embodiment"]["sample_arm"]["r2_per_dim"]) == {"x", "grip"}


# ------------------------------------------------------------------------------------------------ label-curve


def test_label_curve_help_names_the_directories_it_trains_in():
    result = runner.invoke(app, ["label-curve", "--help"], terminal_width=200)
    assert "labels-<percent>pct" in " ".join(result.stdout.split()) and "labels-<share>" not in result.stdout


def curve_config(sample, tmp_path, **optim):
    path = tmp_path / "curve.yaml"
    path.write_text(yaml.safe_dump(config_dict(sample, tmp_path / "curve", **optim)))
    return path


def test_label_curve_refuses_a_finished_run_of_other_settings_before_training(sample, run, tmp_path):
    config_path = curve_config(sample, tmp_path)
    share_dir = config_for_share(parse_config(config_dict(sample, tmp_path / "curve")), 0.5).run.out_dir
    shutil.copytree(run / "checkpoints", share_dir / "checkpoints")  # trained with labels.share 1, not 0.5
    with pytest.raises(EpisodeError, match=r"labels-50pct/checkpoints/step_0000002: trained with other settings .*"
                                           r"data\.labels\.share: 1\.0 -> 0\.5"):
        label_curve(config_path, sample / "lerobot", shares=[0.0, 0.5], device="cpu", **quiet)
    assert not (tmp_path / "curve" / "labels-0pct").exists()  # refused before the first share trained


def test_label_curve_refuses_an_out_where_its_shares_train_before_training(sample, tmp_path):
    """--out run.out_dir scores share X in labels-Xpct, the folder its VAE trains in: refused only after training it."""
    result = runner.invoke(app, ["label-curve", str(curve_config(sample, tmp_path)), str(sample / "lerobot"), "--shares", "0",
                                 "--device", "cpu", "--out", str(tmp_path / "curve"), "--no-progress"])
    one_line_error(result, f"share 0 would be scored in {tmp_path / 'curve' / 'labels-0pct'}, which overlaps the run that "
                           f"trains it ({tmp_path / 'curve' / 'labels-0pct'})")
    assert not (tmp_path / "curve").exists()


def test_label_curve_refuses_a_run_trained_past_the_configs_max_steps(sample, run, tmp_path):
    config_path = curve_config(sample, tmp_path, max_steps=1)
    shutil.copytree(run / "checkpoints", tmp_path / "curve" / "labels-100pct" / "checkpoints")
    with pytest.raises(EpisodeError, match="step 2 of a run trained for 2 steps, not the config's optim.max_steps 1"):
        label_curve(config_path, sample / "lerobot", shares=[1.0], device="cpu", **quiet)


@pytest.mark.parametrize("option, words", [(["--device", "banana"], "device 'banana'"),
                                           (["--dims", "nope"], "no action dimension named 'nope'")])
def test_label_curve_refuses_a_bad_option_before_training(sample, tmp_path, option, words):
    result = runner.invoke(app, ["label-curve", str(curve_config(sample, tmp_path)), str(sample / "lerobot"),
                                 "--shares", "0.5", "--no-progress", *option])
    one_line_error(result, words)
    assert not (tmp_path / "curve").exists()


@pytest.mark.parametrize("data, options, words", [
    ("lerobot", ["--shares", "0.1234567,0.1234568"], "shares 0.1234567 and 0.1234568 would train in one folder"),
    ("lerobot", ["--shares", "0.5", "--out", "{data}/curve"], "--out overlaps the input"),
    ("videos", ["--shares", "0.5"], "no episode has actions to score the latent actions against"),
])
def test_label_curve_refuses_what_it_could_not_score_before_training(sample, tmp_path, data, options, words):
    root = sample / data
    result = runner.invoke(app, ["label-curve", str(curve_config(sample, tmp_path)), str(root), "--no-progress",
                                 *(option.format(data=root) for option in options)])
    one_line_error(result, words)
    assert not (tmp_path / "curve").exists() and not (root / "curve").exists()


def test_label_curve_refuses_a_data_root_that_is_no_dataset_before_training(sample, tmp_path):
    result = runner.invoke(app, ["label-curve", str(curve_config(sample, tmp_path)), str(tmp_path / "nowhere"),
                                 "--shares", "0.5", "--no-progress"])
    one_line_error(result, f"{tmp_path / 'nowhere'}: not a directory")
    assert not (tmp_path / "curve").exists()


def test_a_robot_type_naming_a_path_names_a_probe_plot_inside_the_output(sample, run, tmp_path):
    """LeRobot's robot_type `x/../../ESCAPED` is the embodiment, whose probe plot was written two folders up."""
    import json
    import shutil

    data = tmp_path / "lerobot"
    shutil.copytree(sample / "lerobot", data)
    info = json.loads((data / "meta/info.json").read_text())
    (data / "meta/info.json").write_text(json.dumps({**info, "robot_type": "x/../../ESCAPED"}))
    out = tmp_path / "a" / "b" / "eval"
    evaluate_latents(step(run, 2), data, out, split="all", device="cpu", echo=lambda _: None)
    assert sorted(path.name for path in tmp_path.rglob("*.png") if out not in path.parents) == []
    assert [path.name for path in out.glob("probe_*.png")] == ["probe_x_ESCAPED.png"]


def test_a_label_run_that_stops_leaves_no_summary_of_an_earlier_run(sample, run, tmp_path):
    """An --overwrite run with another VAE, stopped midway, left the earlier run's latent_stats.json and
    label_report.json (naming the earlier VAE) beside its own latents."""
    out = tmp_path / "out"
    label_source(step(run, 2), sample / "lerobot", out, device="cpu", echo=lambda _: None)
    assert (out / "latent_stats.json").is_file() and (out / "label_report.json").is_file()
    with pytest.raises(ValueError, match="no episode labelled"):
        label_source(step(run, 1), sample / "lerobot", out, overwrite=True, device="cpu", echo=lambda _: None,
                     cameras="no_such_camera")
    assert not (out / "latent_stats.json").exists() and not (out / "label_report.json").exists()


def test_an_output_that_links_nowhere_is_named_in_words(sample, run, tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "gone", target_is_directory=True)
    result = runner.invoke(app, ["label", "--vae", str(step(run, 2)), str(sample / "videos"), str(tmp_path / "out"),
                                 "--device", "cpu"])
    one_line_error(result, f"{tmp_path / 'out'}: a link to {tmp_path / 'gone'}, which does not exist")
