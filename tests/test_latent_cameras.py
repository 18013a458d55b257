"""A latent-action VAE records how its flow frames were made from cameras (the layout and the resize fit), and a
build, `label` and `eval-latents` make theirs the same way or say why they cannot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from latent_action.checkpoint import load_trained
from latent_action.commands import register
from latent_action.config import parse_config
from latent_action.labelling import label_episode, label_source, view_for
from latent_action.pairs import FlowSettings, build_flow_settings, episode_flows
from latent_action.train import train
from pyramid.cameras import CameraView
from pyramid.errors import BuildError, EpisodeError
from pyramid.pipeline import check_vae_config
from pyramid.recipe import Recipe
from pyramid.sources import open_source
from tests.fixtures import builder
from tests.test_latent_flow_path import saved_vae

T_CAMERAS = ["head", "hand_left", "hand_right"]
T_OPTION = "t:" + ",".join(T_CAMERAS)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def t_layout_run(tmp_path_factory):
    """A two-step VAE trained on AgiBot episodes in Motus's T-layout, cropped to 96x64 (the dex-hand episode, whose
    wrist cameras are fisheye, is skipped)."""
    tmp = tmp_path_factory.mktemp("t_layout")
    builder("agibot")(tmp / "agibot")
    config = parse_config({
        "model": {"preset": "tiny"},
        "data": {"sources": [{"root": str(tmp / "agibot"), "cameras": {"layout": "t", "names": T_CAMERAS}}],
                 "flow": {"fps": 30, "frame_height": 96, "frame_width": 64, "resize": "crop"}, "holdout_fraction": 0.0},
        "optim": {"batch_size": 4, "max_steps": 2, "warmup_steps": 1},
        "run": {"out_dir": str(tmp / "run"), "eval_every": 2, "checkpoint_every": 2},
    })
    checkpoint = train(config, show_progress=False, echo=lambda _: None)
    return tmp / "agibot", checkpoint


def test_a_vae_records_the_layout_and_fit_of_its_training_frames(t_layout_run):
    _, checkpoint = t_layout_run
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["flow_resize"] == "crop" and config["flow_camera_layouts"] == ["t"]
    assert config["flow_camera_t_names"] == [T_CAMERAS]
    settings = FlowSettings.of_vae(config)
    assert (settings.fit, settings.layouts, settings.t_names) == ("crop", ("t",), (tuple(T_CAMERAS),))


def test_labelling_refuses_the_training_cameras_in_another_order_and_takes_other_names(t_layout_run, tmp_path):
    """A T-layout's head and wrist pictures swapped used to be labelled without a word."""
    root, checkpoint = t_layout_run
    swapped = "t:hand_left,head,hand_right"
    with pytest.raises(ValueError, match=r"--cameras: cameras t:hand_left,head,hand_right are the VAE's training T-layout "
                                         r"t:head,hand_left,hand_right in another order \(the head camera first"):
        label_source(checkpoint, root, tmp_path / "swapped", device="cpu", echo=lambda _: None, cameras=swapped)
    assert not (tmp_path / "swapped").exists()
    vae_config = json.loads((checkpoint / "config.json").read_text())
    assert view_for(vae_config, "t:head_camera,left_camera,right_camera").names == ("head_camera", "left_camera", "right_camera")
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["eval-latents", "--vae", str(checkpoint), str(root), "--cameras", swapped,
                                         "--device", "cpu", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 2 and "in another order" in result.output and "Traceback" not in result.output
    del vae_config["flow_camera_t_names"]  # a VAE saved before they were recorded takes any order
    assert view_for(vae_config, swapped).names == ("hand_left", "head", "hand_right")


def test_the_run_names_the_episode_training_left_out_and_why(t_layout_run):
    root, checkpoint = t_layout_run
    skipped = json.loads((checkpoint.parent.parent / "skipped_episodes.json").read_text())
    assert all(reason.startswith(str(root)) and "\n" not in reason for reason in skipped.values())
    assert sum("no camera 'hand_left'" in reason for reason in skipped.values()) == 1  # the dex-hand episode
    assert any("missing proprio_stats.h5" in reason for reason in skipped.values())  # and the fixture's corrupt twins


def test_labelling_refuses_a_layout_the_vae_never_saw_and_labels_the_one_it_did(t_layout_run, tmp_path):
    root, checkpoint = t_layout_run
    with pytest.raises(ValueError, match=r"trained on T-layout views .*not one camera's view \(--cameras primary\); pass --cameras t:"):
        label_source(checkpoint, root, tmp_path / "primary", device="cpu", echo=lambda _: None)
    assert not (tmp_path / "primary" / "latent_actions").exists()
    report = label_source(checkpoint, root, tmp_path / "t", device="cpu", echo=lambda _: None, cameras=T_OPTION)
    assert report["episodes"] >= 2 and any("hand_left" in reason for reason in report["errors"].values())
    vae, _, _ = load_trained(checkpoint)
    reader = open_source(root)
    episode = reader.load(next(ref for ref in reader.discover() if (tmp_path / "t" / "latent_actions" / f"{ref.episode_id}.npy").exists()))
    view = view_for(vae.config, T_OPTION)
    assert view == CameraView(tuple(T_CAMERAS), "t", "crop")
    stored = np.load(tmp_path / "t" / "latent_actions" / f"{episode.episode_id}.npy")
    np.testing.assert_allclose(label_episode(vae, episode, view=view), stored, atol=1e-5)
    # the flow is the T-layout's, cropped: not the head camera's, nor the padded T-layout's
    settings = FlowSettings.of_vae(vae.config)
    t_flow = np.concatenate(list(episode_flows(episode, settings, view=view)))
    assert not np.allclose(t_flow, np.concatenate(list(episode_flows(episode, settings, view=CameraView((), "single", "crop")))))
    padded = FlowSettings(**{**settings.__dict__, "fit": "pad"})
    assert not np.allclose(t_flow, np.concatenate(list(episode_flows(episode, padded, view=CameraView(tuple(T_CAMERAS), "t", "pad")))))


def test_latents_of_other_cameras_are_not_reused(t_layout_run, tmp_path):
    root, checkpoint = t_layout_run
    label_source(checkpoint, root, tmp_path, device="cpu", echo=lambda _: None, cameras=T_OPTION)
    with pytest.raises(EpisodeError, match="the same checkpoint from --cameras t:head,hand_left,hand_right, not t:head,hand_left,hand_left"):
        label_source(checkpoint, root, tmp_path, device="cpu", echo=lambda _: None, cameras="t:head,hand_left,hand_left")


def test_eval_latents_takes_the_cameras_and_says_which_it_read(t_layout_run, tmp_path):
    root, checkpoint = t_layout_run
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    refused = runner.invoke(app, ["eval-latents", "--vae", str(checkpoint), str(root), "--split", "all", "--device", "cpu",
                                  "--out", str(tmp_path / "refused")])
    assert refused.exit_code == 2 and "trained on T-layout views" in refused.output and "Traceback" not in refused.output
    malformed = runner.invoke(app, ["eval-latents", "--vae", str(checkpoint), str(root), "--cameras", "t:head,hand_left",
                                    "--device", "cpu"])
    assert malformed.exit_code == 2 and "expected 'primary', a camera name, or 't:HEAD,LEFT_WRIST,RIGHT_WRIST'" in malformed.output
    evaluated = runner.invoke(app, ["eval-latents", "--vae", str(checkpoint), str(root), "--split", "all", "--device", "cpu",
                                    "--cameras", T_OPTION, "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    pairs = json.loads((tmp_path / "eval" / "eval.json").read_text())["pairs"]
    assert pairs["cameras"] == T_OPTION and pairs["resize"] == "crop"


@pytest.mark.parametrize("vae_settings, recipe_changes, words", [
    ({}, {"resize": "crop"}, "trained on frames fitted by 'pad', the recipe's resize is 'crop'"),
    ({"flow_resize": "crop"}, {}, "trained on frames fitted by 'crop', the recipe's resize is 'pad'"),
    ({}, {"cameras": {"layout": "t", "names": T_CAMERAS}},
     "sources[0] (agibot) stores T-layout views (the head camera above two wrist cameras), the VAE was trained on one camera's view"),
    ({"flow_camera_layouts": ["t"]}, {"cameras": "hand_left"},
     "sources[0] (agibot) stores one camera's view, the VAE was trained on T-layout views"),
    ({"flow_camera_layouts": ["t"], "flow_camera_t_names": [T_CAMERAS]},
     {"cameras": {"layout": "t", "names": ["hand_right", "hand_left", "head"]}},
     "sources[0] (agibot) cameras t:hand_right,hand_left,head are the VAE's training T-layout t:head,hand_left,hand_right "
     "in another order"),
])
def test_a_build_refuses_a_vae_trained_on_other_camera_frames(tmp_path, vae_settings, recipe_changes, words):
    vae = saved_vae(tmp_path, **vae_settings)
    source = {"kind": "agibot", "root": str(tmp_path), **{k: v for k, v in recipe_changes.items() if k == "cameras"}}
    recipe = Recipe(sources=[source], output=str(tmp_path / "out"), vae=str(vae),
                    **{k: v for k, v in recipe_changes.items() if k != "cameras"})
    with pytest.raises(BuildError, match="VAE does not match the recipe") as caught:
        check_vae_config(recipe)
    assert words in str(caught.value)


def test_a_build_takes_a_vae_trained_on_its_layouts_and_fit(tmp_path):
    vae = saved_vae(tmp_path, flow_resize="crop", flow_camera_layouts=["single", "t"])
    check_vae_config(Recipe(sources=[{"kind": "agibot", "root": str(tmp_path), "cameras": {"layout": "t", "names": T_CAMERAS}},
                                     {"kind": "videos", "root": str(tmp_path)}], output=str(tmp_path / "out"), vae=str(vae), resize="crop"))
    config = json.loads((vae / "config.json").read_text())
    del config["flow_resize"], config["flow_camera_layouts"]  # a VAE saved before they were recorded: pad, one camera
    assert (FlowSettings.of_vae(config).fit, FlowSettings.of_vae(config).layouts) == ("pad", ("single",))


def test_a_build_labels_with_a_vae_trained_on_its_t_layout(t_layout_run, tmp_path):
    from pyramid.stages import LabelStage

    root, checkpoint = t_layout_run
    recipe = Recipe(sources=[{"kind": "agibot", "root": str(root), "cameras": {"layout": "t", "names": T_CAMERAS}}],
                    output=str(tmp_path / "out"), vae=str(checkpoint), video_size=[96, 64], fps=30, resize="crop")
    check_vae_config(recipe)
    assert LabelStage(recipe).labeller.vae.config.flow_camera_layouts == ["t"]  # it labels stored flow: no view to choose


def test_a_vae_trained_from_a_build_records_the_builds_layouts_and_fit(tmp_path):
    recipe = Recipe(sources=[{"kind": "agibot", "root": "a", "cameras": {"layout": "t", "names": T_CAMERAS}},
                             {"kind": "videos", "root": "v"}], output="o", resize="crop")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"recipe": json.loads(recipe.model_dump_json())}))
    settings = build_flow_settings(manifest)
    assert (settings.fit, settings.layouts, settings.t_names) == ("crop", ("single", "t"), (tuple(T_CAMERAS),))


def test_label_curve_scores_a_copy_of_its_source_with_the_cameras_the_source_trains_on(tmp_path):
    """DATA that is none of the config's sources used to be scored from 'primary', refused only after training."""
    from latent_action.label_curve import cameras_of_root

    t_layout = {"layout": "t", "names": T_CAMERAS}
    run = {"out_dir": str(tmp_path / "run")}
    config = parse_config({"data": {"sources": [{"root": str(tmp_path / "agibot"), "cameras": t_layout}]}, "run": run})
    expected = cameras_of_root(config, tmp_path / "agibot")
    assert expected.startswith("t:") and cameras_of_root(config, tmp_path / "copy" / "agibot") == expected
    mixed = parse_config({"data": {"sources": [{"root": str(tmp_path / "agibot"), "cameras": t_layout},
                                               {"root": str(tmp_path / "videos")}]}, "run": run})
    with pytest.raises(ValueError, match="none of the config's sources, whose cameras differ"):
        cameras_of_root(mixed, tmp_path / "copy")
