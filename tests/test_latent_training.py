"""Training, exact resume, labelling and evaluation of the latent-action VAE on a tiny sample dataset."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import typer
import webdataset as wds
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from latent_action.checkpoint import load_trained, resolve_checkpoint
from latent_action.commands import register
from latent_action.config import parse_config
from latent_action.evaluation import evaluate_latents
from latent_action.labelling import label_episode, label_source
from flow.storage import pack, quantise
from latent_action.pairs import LancePairs, flow_to_rgb
from latent_action.train import train
from pyramid.errors import EpisodeError
from pyramid.sample_data import write_sample_data
from pyramid.sources import open_source

EPISODES, CLIPS, FRAMES = 3, 2, 6


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    write_sample_data(root, robot_episodes=EPISODES, video_clips=CLIPS, num_frames=FRAMES)
    return root


def config_dict(sample, out_dir, **optim) -> dict:
    return {
        "model": {"preset": "tiny"},
        "data": {
            "sources": [{"root": str(sample / "lerobot")}, {"root": str(sample / "videos")}],
            "flow": {"frame_height": 96, "frame_width": 80},
            "labelled_fraction": 0.5,
            "holdout_fraction": 0.34,
        },
        "optim": {"batch_size": 4, "max_steps": 6, "warmup_steps": 2, "lr": 1e-3, **optim},
        "run": {"out_dir": str(out_dir), "eval_every": 3, "checkpoint_every": 3, "log_every": 1},
    }


@pytest.fixture(scope="module")
def straight_run(sample, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("straight")
    checkpoint = train(parse_config(config_dict(sample, out_dir)), show_progress=False, echo=lambda _: None)
    return out_dir, checkpoint


def test_training_writes_checkpoints_previews_and_a_log(straight_run):
    out_dir, checkpoint = straight_run
    assert checkpoint == out_dir / "checkpoints" / "step_0000006"
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "optimizer.safetensors", "training_state.json", "rng.safetensors",
                 "action_normalizer.json", "heldout_episodes.json"):
        assert (checkpoint / name).is_file(), name
    state = json.loads((checkpoint / "training_state.json").read_text())
    assert state["step"] == 6 and state["scheduler"]["last_epoch"] == 6
    assert len(json.loads((checkpoint / "heldout_episodes.json").read_text())) == 1
    assert sorted(p.name for p in (out_dir / "previews").iterdir()) == ["step_0000003.png", "step_0000006.png"]
    preview = cv2.imread(str(out_dir / "previews" / "step_0000003.png"))
    assert preview.shape[0] == 2 * 64 + 2  # input row, separator, reconstruction row
    records = [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]
    losses = [r for r in records if "total" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4, 5, 6]
    assert all(r["total"] > 0 and r["reconstruction"] > 0 for r in losses)
    elapsed = [r["elapsed_s"] for r in losses]  # wall time of the run so far: steps/s between any two records
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    normalizer = json.loads((checkpoint / "action_normalizer.json").read_text())
    assert normalizer["embodiments"]["sample_arm"]["dims"] == [0, 1, 2]


def test_a_training_run_stands_for_its_latest_checkpoint(straight_run, tmp_path):
    out_dir, checkpoint = straight_run
    assert resolve_checkpoint(out_dir) == resolve_checkpoint(out_dir / "checkpoints") == checkpoint
    assert resolve_checkpoint(out_dir / "checkpoints" / "step_0000003") == out_dir / "checkpoints" / "step_0000003"
    with pytest.raises(EpisodeError, match="not a latent-action VAE checkpoint"):
        resolve_checkpoint(tmp_path)


def test_resumed_run_reaches_the_same_state_as_an_uninterrupted_one(sample, straight_run, tmp_path):
    straight_dir, straight_final = straight_run
    # An interrupted run: its step-3 checkpoint is exactly what the straight run saved at step 3.
    (tmp_path / "checkpoints").mkdir()
    shutil.copytree(straight_dir / "checkpoints" / "step_0000003", tmp_path / "checkpoints" / "step_0000003")
    # Its log ran on past the checkpoint, and the kill tore its last line.
    straight_log = (straight_dir / "train_log.jsonl").read_text()
    (tmp_path / "train_log.jsonl").write_text(straight_log + straight_log.splitlines()[-1][:20])
    messages = []
    resumed_final = train(parse_config(config_dict(sample, tmp_path)), resume=True, show_progress=False, echo=messages.append)
    assert any("resumed" in m and "step 3" in m for m in messages)
    assert logged_steps(tmp_path / "train_log.jsonl") == logged_steps(straight_dir / "train_log.jsonl")
    straight_weights = load_file(str(straight_final / "diffusion_pytorch_model.safetensors"))
    resumed_weights = load_file(str(resumed_final / "diffusion_pytorch_model.safetensors"))
    assert straight_weights.keys() == resumed_weights.keys()
    for name, tensor in straight_weights.items():
        assert torch.allclose(tensor, resumed_weights[name], atol=1e-6, rtol=0), name
    straight_moments = load_file(str(straight_final / "optimizer.safetensors"))
    resumed_moments = load_file(str(resumed_final / "optimizer.safetensors"))
    for name, tensor in straight_moments.items():
        assert torch.allclose(tensor, resumed_moments[name], atol=1e-6, rtol=0), name
    straight_state = json.loads((straight_final / "training_state.json").read_text())
    resumed_state = json.loads((resumed_final / "training_state.json").read_text())
    straight_rng, resumed_rng = (load_file(str(final / "rng.safetensors")) for final in (straight_final, resumed_final))
    assert straight_state["scheduler"] == resumed_state["scheduler"] and straight_rng.keys() == resumed_rng.keys()
    assert all(torch.equal(straight_rng[name], resumed_rng[name]) for name in straight_rng)


def logged_steps(log: Path) -> list[tuple[int, str]]:
    """Each record of a training log as (step, loss record or evaluation), in the order written."""
    return [(record["step"], "eval" if "eval" in record else "loss")
            for record in map(json.loads, log.read_text().splitlines())]


def test_resume_refuses_a_newest_checkpoint_that_lost_its_state(sample, straight_run, tmp_path):
    straight_dir, _ = straight_run
    for step in ("step_0000003", "step_0000006"):
        shutil.copytree(straight_dir / "checkpoints" / step, tmp_path / "checkpoints" / step)
    (tmp_path / "checkpoints" / "step_0000006" / "training_state.json").unlink()
    with pytest.raises(EpisodeError, match="step_0000006: no training_state.json: .* to continue from .*step_0000003"):
        train(parse_config(config_dict(sample, tmp_path)), resume=True, show_progress=False, echo=lambda _: None)
    shutil.rmtree(tmp_path / "checkpoints" / "step_0000003")  # the only one: resuming would start over
    with pytest.raises(EpisodeError, match="step_0000006: no training_state.json: .* to continue from the start"):
        train(parse_config(config_dict(sample, tmp_path)), resume=True, show_progress=False, echo=lambda _: None)


def test_a_checkpoint_in_the_older_layout_resumes_exactly(sample, straight_run, tmp_path):
    """Before the trainers shared a convention, train-vae wrote trainer_state.json with the RNG states in it."""
    import base64

    straight_dir, straight_final = straight_run
    old = tmp_path / "checkpoints" / "step_0000003"
    shutil.copytree(straight_dir / "checkpoints" / "step_0000003", old)
    rng = load_file(str(old / "rng.safetensors"))
    state = json.loads((old / "training_state.json").read_text())
    state["rng"] = {name: base64.b64encode(rng[name].numpy().tobytes()).decode() for name in ("noise", "torch")}
    (old / "trainer_state.json").write_text(json.dumps(state))
    (old / "training_state.json").unlink()
    (old / "rng.safetensors").unlink()
    resumed_final = train(parse_config(config_dict(sample, tmp_path)), resume=True, show_progress=False, echo=lambda _: None)
    straight_weights = load_file(str(straight_final / "diffusion_pytorch_model.safetensors"))
    resumed_weights = load_file(str(resumed_final / "diffusion_pytorch_model.safetensors"))
    assert all(torch.allclose(tensor, resumed_weights[name], atol=1e-6, rtol=0) for name, tensor in straight_weights.items())


def test_labelling_writes_one_latent_per_frame_pair(sample, straight_run, tmp_path):
    _, checkpoint = straight_run
    report = label_source(checkpoint, sample / "lerobot", tmp_path, motus_layout=True, device="cpu", echo=lambda _: None)
    assert report["episodes"] == EPISODES and report["pairs"] == EPISODES * (FRAMES - 1) and not report["errors"]
    reader = open_source(sample / "lerobot")
    vae, _, _ = load_trained(checkpoint)
    first = reader.read(next(iter(reader.discover())))
    for ref in reader.discover():
        latents = np.load(tmp_path / "latent_actions" / f"{ref.episode_id}.npy")
        assert latents.shape == (FRAMES - 1, 14) and latents.dtype == np.float32
        motus = torch.load(tmp_path / "latent_action_dim14" / f"{ref.episode_id}.pt", weights_only=True)
        assert motus.dtype == torch.float32 and np.array_equal(motus.numpy(), latents)
    direct = label_episode(vae, first)
    assert np.allclose(direct, np.load(tmp_path / "latent_actions" / f"{first.episode_id}.npy"), atol=1e-5)
    stats = json.loads((tmp_path / "latent_stats.json").read_text())
    assert stats["pairs"] == EPISODES * (FRAMES - 1)
    for key in ("min", "max", "mean", "std", "q01", "q99"):
        assert len(stats["latent_action"][key]) == 14, key
    again = label_source(checkpoint, sample / "lerobot", tmp_path, device="cpu", echo=lambda _: None)
    assert again["reused"] == EPISODES


def test_eval_latents_writes_probe_epe_and_plots(sample, straight_run, tmp_path):
    _, checkpoint = straight_run
    result = evaluate_latents(checkpoint, sample / "lerobot", tmp_path, device="cpu", echo=lambda _: None)
    probe = result["probe"]["per_embodiment"]["sample_arm"]
    assert probe["scored_episodes"] == 1 and probe["probe_fit_episodes"] == EPISODES - 1
    assert set(probe["r2_per_dim"]) == {"x", "y", "grip"}
    assert np.isfinite(result["probe"]["overall_r2"])
    assert result["flow"]["epe_px"] >= 0 and result["flow"]["flow_rgb_roundtrip_epe_px"] < 0.5
    assert len(result["latent_stats"]["q99"]) == 14
    for name in ("eval.json", "probe_sample_arm.png", "latent_histograms.png", "flow_preview.png"):
        assert (tmp_path / name).is_file(), name
    report = (tmp_path / "report.html").read_text()
    assert report.count("<img") == 3 and f"{result['probe']['overall_r2']:.3f}" in report
    assert f"{result['flow']['epe_blank_px']:.3f} px" in report
    every = evaluate_latents(checkpoint, sample / "lerobot", tmp_path / "all", split="all", device="cpu", echo=lambda _: None)
    assert every["probe"]["per_embodiment"]["sample_arm"]["scored_episodes"] == EPISODES


def test_lance_flow_dataset_feeds_training(tmp_path):
    import lance
    import pyarrow as pa

    rng = np.random.default_rng(0)
    flows = np.zeros((4, 64, 64, 2), np.float32)
    for i, flow in enumerate(flows):  # a block moving a different way in each pair
        flow[10:20, 5 + 5 * i : 15 + 5 * i] = (3.0 - 2 * i, 1.5 * i)
    table = pa.table({
        "episode_id": ["robot-a", "robot-a", "robot-b", "clip-c"],
        "source": ["lerobot", "lerobot", "lerobot", "videos"],
        "embodiment": ["sample_arm", "sample_arm", "sample_arm", "video"],
        "level": pa.array([5, 5, 5, 2], pa.int8()),
        "pair_index": pa.array([0, 1, 0, 0], pa.int32()),
        "flow_npy_zst": pa.array([pack(quantise(flow)) for flow in flows], pa.binary()),
        "action": pa.array([rng.normal(size=3).tolist(), rng.normal(size=3).tolist(), rng.normal(size=3).tolist(), None],
                           pa.list_(pa.float32())),
    })
    lance.write_dataset(table, str(tmp_path / "flow.lance"))
    with pytest.raises(EpisodeError, match="manifest.json: cannot tell how the build beside it made its flow"):
        LancePairs(tmp_path / "flow.lance", image_size=64)
    recipe = {"fps": 10.0, "video_size": [384, 320], "flow": {"backend": "dis", "stride": 1, "options": {}}}
    (tmp_path / "manifest.json").write_text(json.dumps({"recipe": recipe}))  # as a finished build writes it
    pairs = LancePairs(tmp_path / "flow.lance", image_size=64)
    assert (pairs.settings.fps, pairs.settings.stride, pairs.settings.frame_height) == (10.0, 1, 384)
    assert pairs.table.labelled.tolist() == [True, True, True, False]
    assert np.array_equal(pairs.images([3, 1]), flow_to_rgb(flows[[3, 1]], None))  # rendered from the stored flow
    assert pairs.pair(2).episode_id == "robot-b" and pairs.pair(3).action is None
    config = {
        "data": {"lance": str(tmp_path / "flow.lance"), "holdout_fraction": 0.0},
        "optim": {"batch_size": 2, "max_steps": 2, "warmup_steps": 1},
        "run": {"out_dir": str(tmp_path / "run"), "eval_every": 2, "checkpoint_every": 2},
    }
    config["data"]["flow"] = {"backend": "dis", "frame_height": 384, "options": {"preset": "balanced"}}  # as the build's
    checkpoint = train(parse_config(config), show_progress=False, echo=lambda _: None)
    assert (checkpoint / "diffusion_pytorch_model.safetensors").is_file()
    config["data"]["flow"] = {"backend": "dis", "fps": 5, "frame_height": 384, "options": {"preset": "fast"}}
    config["run"]["out_dir"] = str(tmp_path / "other")
    with pytest.raises(ValueError, match=r"flow.lance: made with other flow settings than data.flow says \(data.flow.fps is 5.0, "
                                         r"the build's is 10.0; data.flow.options is \{'preset': 'fast'"):
        train(parse_config(config), show_progress=False, echo=lambda _: None)


def test_lance_flow_dataset_from_an_older_build_or_with_a_damaged_row_is_named(tmp_path):
    import lance
    import pyarrow as pa

    (tmp_path / "manifest.json").write_text(json.dumps({"recipe": {"fps": 10.0, "video_size": [64, 64], "flow": {"backend": "dis"}}}))
    columns = {"episode_id": ["robot-a", "robot-a"], "source": ["lerobot"] * 2, "embodiment": ["sample_arm"] * 2,
               "pair_index": pa.array([0, 1], pa.int32()), "action": pa.array([None, None], pa.list_(pa.float32()))}
    lance.write_dataset(pa.table({**columns, "flow_rgb": pa.array([b"\x89PNG", b"\x89PNG"], pa.binary())}), str(tmp_path / "old.lance"))
    with pytest.raises(EpisodeError, match="old.lance: holds flow-RGB PNGs, written before builds stored the flow itself"):
        LancePairs(tmp_path / "old.lance", image_size=32)
    good = pack(quantise(np.ones((64, 64, 2), np.float32)))
    lance.write_dataset(pa.table({**columns, "flow_npy_zst": pa.array([good, good[:40]], pa.binary())}), str(tmp_path / "flow.lance"))
    pairs = LancePairs(tmp_path / "flow.lance", image_size=32)
    assert pairs.images([0]).shape == (1, 32, 32, 3)
    with pytest.raises(EpisodeError, match=r"flow.lance: row 1: flow_npy_zst: not a stored flow pair"):
        pairs.images([1])


def test_cli_train_label_and_eval(sample, tmp_path):
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(config_dict(sample, tmp_path / "run", max_steps=2)))
    trained = runner.invoke(app, ["train-vae", str(config_file), "--no-progress"])
    assert trained.exit_code == 0, trained.output
    checkpoint = tmp_path / "run" / "checkpoints" / "step_0000002"
    assert f"checkpoint: {checkpoint}" in trained.output and "heads" in trained.output
    labelled = runner.invoke(app, ["label", "--vae", str(checkpoint), str(sample / "videos"), str(tmp_path / "labels"),
                                   "--motus-layout", "--device", "cpu"])
    assert labelled.exit_code == 0, labelled.output
    assert len(list((tmp_path / "labels" / "latent_action_dim14").glob("*.pt"))) == CLIPS
    evaluated = runner.invoke(app, ["eval-latents", "--vae", str(checkpoint), str(sample / "lerobot"), "--split", "all",
                                    "--out", str(tmp_path / "eval"), "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "overall_r2" in evaluated.output and (tmp_path / "eval" / "eval.json").is_file()
    of_run = runner.invoke(app, ["eval-latents", "--vae", str(tmp_path / "run"), str(sample / "lerobot"), "--split", "all", "--device", "cpu"])
    assert of_run.exit_code == 0, of_run.output
    assert (tmp_path / "run" / "eval" / "step_0000002" / "eval.json").is_file()  # the run's latest checkpoint, evaluated beside it
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"sources": []}, "optim": {"batch_sise": 3}}))
    failed = runner.invoke(app, ["train-vae", str(bad)])
    assert failed.exit_code == 2 and "optim.batch_sise" in failed.output and "run: Field required" in failed.output


def test_a_build_labels_clips_with_the_latest_checkpoint_of_a_run(sample, straight_run, tmp_path):
    out_dir, checkpoint = straight_run
    recipe = {
        "sources": [{"kind": "lerobot", "root": str(sample / "lerobot")}], "output": str(tmp_path / "pyramid"),
        "video_size": [96, 80], "fps": 10, "clip_frames": FRAMES, "formats": ["webdataset"],
        "filters": {"min_frames": 3, "static_motion_threshold": 0.0}, "vae": str(out_dir),  # the run, not a checkpoint
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run([sys.executable, "-m", "pyramid", "build", str(tmp_path / "recipe.yaml"), "--quiet", "--workers", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "pyramid" / "manifest.json").read_text())
    assert manifest["recipe"]["vae"] == str(checkpoint)
    vae, _, _ = load_trained(checkpoint)
    reader = open_source(sample / "lerobot")
    expected = {ref.episode_id: label_episode(vae, reader.read(ref)) for ref in reader.discover()}
    shards = sorted((tmp_path / "pyramid").glob("webdataset/level*/shard-*.tar"))
    samples = [s for shard in shards for s in wds.WebDataset(str(shard), shardshuffle=False)]
    assert len(samples) == EPISODES
    for example in samples:
        latents = np.load(io.BytesIO(example["latent_actions.npy"]))
        meta = json.loads(example["json"])
        assert latents.shape == (FRAMES - 1, 14) and latents.dtype == np.float32
        np.testing.assert_allclose(latents, expected[meta["episode_id"]], atol=1e-4)


def test_label_curve_trains_one_vae_per_share_on_one_split_and_reuses_finished_runs(sample, tmp_path):
    from latent_action.label_curve import label_curve

    config_file = tmp_path / "curve.yaml"
    config_file.write_text(yaml.safe_dump(config_dict(sample, tmp_path / "run", max_steps=3)))
    messages: list[str] = []
    curve = label_curve(config_file, sample / "lerobot", shares=[0.5, 0.0], device="cpu", show_progress=False, echo=messages.append)
    assert [p["share"] for p in curve["points"]] == [0.0, 0.5]
    assert any("actions of" in m and "hidden by labels.share 0.5" in m for m in messages)
    assert any("every training pair is unlabelled" in m for m in messages)  # share 0: nothing labelled is left
    runs = [tmp_path / "run" / name for name in ("labels-0pct", "labels-50pct")]
    heldout = [json.loads((resolve_checkpoint(run) / "heldout_episodes.json").read_text()) for run in runs]
    assert heldout[0] == heldout[1] and heldout[0]  # the split does not depend on the share
    for point in curve["points"]:
        assert point["r2"] is not None and point["r2_flow_grid"] is not None
    report = (tmp_path / "run" / "label_curve" / "report.html").read_text()
    assert report.count("<img") == 1 and f"{curve['points'][1]['r2_flow_grid']:.3f}" in report
    again: list[str] = []
    label_curve(config_file, sample / "lerobot", shares=[0.0], device="cpu", show_progress=False, echo=again.append)
    assert any(m.startswith("reusing ") for m in again)


TASKS = ["pick the red cube", "open the drawer", "push the button"]


def write_three_tasks(root, frames: int) -> None:
    """Six episodes of a LeRobot v3.0 dataset, two of each of three tasks."""
    from pyramid.lerobot_writer import RecordedEpisode, write_lerobot_v3
    from tests.fixtures.lerobot import ACTION_NAMES, STATE_NAMES, moving_square_frames, trajectory

    episodes = [RecordedEpisode(TASKS[i % 3], trajectory(i, frames), trajectory(i, frames) / 2,
                                {"observation.images.top": moving_square_frames(frames, 48, 64, seed=i)}) for i in range(6)]
    write_lerobot_v3(root, episodes, fps=10, robot_type="arm", state_names=STATE_NAMES, action_names=ACTION_NAMES, overwrite=True)


def test_holding_out_whole_tasks_keeps_them_out_of_training_and_scores_them(tmp_path):
    write_three_tasks(tmp_path / "data", 8)
    config = config_dict(tmp_path, tmp_path / "run", max_steps=2)
    config["data"] |= {"sources": [{"root": str(tmp_path / "data")}], "holdout_fraction": 0.34, "holdout_by": "tasks"}
    log = []
    checkpoint = train(parse_config(config), show_progress=False, echo=log.append)
    heldout = set(json.loads((checkpoint / "heldout_episodes.json").read_text()))
    reader = open_source(tmp_path / "data")
    task_of = {ref.episode_id: reader.load(ref).task for ref in reader.discover()}
    held_tasks = {task_of[episode] for episode in heldout}
    assert len(held_tasks) == 1 and heldout == {e for e, task in task_of.items() if task in held_tasks}  # both episodes of it
    assert any(line.startswith(f"held out of training: every episode of 1 task(s): {held_tasks.pop()}") for line in log)
    assert "pairs: 28 for training (28 labelled), 14 held out from 2 episodes" in log  # 4 episodes of 7 pairs train
    result = evaluate_latents(checkpoint, tmp_path / "data", tmp_path / "eval", device="cpu", echo=lambda _: None)
    assert result["heldout_by"] == "tasks" and result["probe"]["per_embodiment"]["arm"]["scored_episodes"] == 2
    assert "held out by whole tasks" in (tmp_path / "eval" / "report.html").read_text()
    # the same split from a config that holds out episodes, asked of label-curve; its runs go beside the config's
    del config["data"]["holdout_by"]
    (tmp_path / "curve.yaml").write_text(yaml.safe_dump(config))
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    asked = ["label-curve", str(tmp_path / "curve.yaml"), str(tmp_path / "data"), "--shares", "0.5", "--device", "cpu", "--no-progress"]
    assert runner.invoke(app, [*asked, "--holdout-by", "task"]).exit_code == 2
    curved = runner.invoke(app, [*asked, "--holdout-by", "tasks"])
    assert curved.exit_code == 0, curved.output
    run = tmp_path / "run-heldout-tasks"
    assert set(json.loads((resolve_checkpoint(run / "labels-50pct") / "heldout_episodes.json").read_text())) == heldout
    assert json.loads((run / "label_curve" / "curve.json").read_text())["heldout_by"] == "tasks"


def test_an_episode_of_an_unseen_task_that_training_did_not_load_is_scored_not_fit(tmp_path):
    """The checkpoint lists the held-out episodes training loaded; one of the same task it did not (max_episodes
    here; a skipped one, one added since) fitted the probe, which then saw the unseen task."""
    write_three_tasks(tmp_path / "data", 8)  # episodes 2 and 5 push the button
    config = config_dict(tmp_path, tmp_path / "run", max_steps=1)
    config["data"] |= {"sources": [{"root": str(tmp_path / "data"), "max_episodes": 4}], "holdout_by": "tasks",
                       "holdout_tasks": ["push the button"]}
    checkpoint = train(parse_config(config), show_progress=False, echo=lambda _: None)
    assert len(json.loads((checkpoint / "heldout_episodes.json").read_text())) == 1
    result = evaluate_latents(checkpoint, tmp_path / "data", tmp_path / "eval", device="cpu", echo=lambda _: None)
    arm = result["probe"]["per_embodiment"]["arm"]
    assert (arm["scored_episodes"], arm["probe_fit_episodes"]) == (2, 4)


def test_tasks_named_to_hold_out_are_the_ones_kept_out(tmp_path):
    write_three_tasks(tmp_path / "data", 6)
    config = config_dict(tmp_path, tmp_path / "run", max_steps=1)
    config["data"] |= {"sources": [{"root": str(tmp_path / "data")}], "holdout_by": "tasks",
                       "holdout_tasks": ["open the drawer", "push the button"]}
    log = []
    checkpoint = train(parse_config(config), show_progress=False, echo=log.append)
    reader = open_source(tmp_path / "data")
    task_of = {ref.episode_id: reader.load(ref).task for ref in reader.discover()}
    heldout = set(json.loads((checkpoint / "heldout_episodes.json").read_text()))
    assert heldout == {e for e, task in task_of.items() if task != "pick the red cube"}
    assert "held out of training: every episode of 2 task(s): open the drawer; push the button" in log
    config["data"]["holdout_tasks"] = ["open the drawers"]
    config["run"]["out_dir"] = str(tmp_path / "run2")
    with pytest.raises(ValueError, match="holdout_tasks: no labelled episode has the task 'open the drawers'"):
        train(parse_config(config), show_progress=False, echo=log.append)


def test_an_episode_whose_video_breaks_late_counts_nothing_in_the_evaluation(straight_run, tmp_path):
    """Flow is made FRAMES_PER_CHUNK stored frames at a time: an episode whose video breaks past the first chunk is
    skipped whole, its first chunk's errors not kept in the flow figures."""
    import av

    from latent_action.pairs import FRAMES_PER_CHUNK
    from pyramid.lerobot_writer import RecordedEpisode, write_lerobot_v3
    from tests.fixtures.lerobot import ACTION_NAMES, STATE_NAMES, moving_square_frames, trajectory

    length = FRAMES_PER_CHUNK + 12

    def dataset(root, count):
        episodes = [RecordedEpisode("wave", trajectory(i, length), trajectory(i, length) / 2,
                                    {"observation.images.top": moving_square_frames(length, 48, 64, seed=i)}) for i in range(count)]
        write_lerobot_v3(root, episodes, fps=10, robot_type="arm", state_names=STATE_NAMES, action_names=ACTION_NAMES,
                         overwrite=True, codec="libx264")
        return next(root.glob("videos/**/*.mp4"))

    dataset(tmp_path / "whole", 2)
    video = dataset(tmp_path / "broken", 3)
    indexed_first = video.with_name("first.mp4")
    with av.open(str(video)) as source, av.open(str(indexed_first), "w", options={"movflags": "faststart"}) as target:
        copy = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = copy
                target.mux(packet)
    data = indexed_first.read_bytes()
    video.write_bytes(data[: len(data) * 99 // 100])  # the last episode's last frames are gone; its first chunk decodes
    indexed_first.unlink()
    _, checkpoint = straight_run
    quiet = {"split": "all", "device": "cpu", "echo": lambda _: None}
    broken = evaluate_latents(checkpoint, tmp_path / "broken", tmp_path / "eval-broken", **quiet)
    whole = evaluate_latents(checkpoint, tmp_path / "whole", tmp_path / "eval-whole", **quiet)
    assert len(broken["skipped"]) == 1 and "past the end of the video" in next(iter(broken["skipped"].values()))
    assert broken["flow"] == whole["flow"]
