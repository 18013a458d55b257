"""The latent-action VAE's parts: model shapes, loss terms, action space, sampler, probe, config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latent_action.action_space import LATENT_ACTION_DIM, ActionNormalizer, selected_dims
from latent_action.config import ConfigError, parse_config
from latent_action.images import INK_GAIN, distance_from_white, random_shift, to_model_input, to_uint8
from latent_action.losses import alignment_loss, kl_divergence, latent_action_loss, reconstruction_loss
from latent_action.model import LatentActionVAE
from latent_action.presets import build_vae, parameter_counts
from latent_action.probe import cross_validated_predictions, fit_ridge, mean_r2, r2_per_dim
from latent_action.sampler import MixedPairSampler


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny() -> LatentActionVAE:
    torch.manual_seed(0)
    return build_vae("tiny")


def flow_images(count: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Flow images in the tiny model's "ink" encoding: no motion (0) but one coloured square each."""
    rng = np.random.default_rng(seed)
    images = torch.zeros(count, 3, size, size)
    for i in range(count):
        y, x = rng.integers(4, size - 20, size=2)
        images[i, :, y : y + 16, x : x + 16] = torch.from_numpy(rng.uniform(0.2, 1.0, size=(3, 1, 1))).float() * INK_GAIN
    return images


def test_tiny_model_maps_images_to_4_tokens_of_512_and_a_14d_latent(tiny):
    images = flow_images(3)
    assert tiny.tokens(images).shape == (3, 4, 512)
    output = tiny(images)
    assert output.reconstruction.shape == (3, 3, 64, 64)
    assert output.mu.shape == output.logvar.shape == output.z.shape == (3, LATENT_ACTION_DIM)
    assert torch.equal(tiny(images, sample=False).z, tiny(images, sample=False).mu)
    assert parameter_counts(tiny)["total"] < 4_000_000  # a few MB


def test_paper_preset_is_dcae_f128c512_with_4_tokens_of_512_at_256px():
    with torch.device("meta"):
        vae = build_vae("paper", freeze_dcae=True)
        tokens = vae.tokens(torch.zeros(1, 3, 256, 256))
    counts = parameter_counts(vae)
    assert tokens.shape == (1, 4, 512)
    assert vae.dcae.spatial_compression_ratio == 128
    assert 1.0e9 < counts["dcae_encoder"] + counts["dcae_decoder"] < 1.2e9
    assert counts["trainable"] == counts["heads"]  # frozen DC-AE: only the light heads train


def test_paper_preset_loads_a_local_diffusers_dcae(tmp_path):
    from diffusers import AutoencoderDC

    from latent_action.presets import TINY_DCAE

    dcae = AutoencoderDC(**TINY_DCAE)  # same loading path as the published checkpoint, at tiny size
    dcae.save_pretrained(tmp_path / "dcae")
    vae = build_vae("tiny", dcae_path=tmp_path / "dcae", freeze_dcae=True)
    assert all(torch.equal(a, b) for a, b in zip(vae.dcae.state_dict().values(), dcae.state_dict().values()))
    assert not any(p.requires_grad for p in vae.dcae.parameters())


def test_save_pretrained_round_trips(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "vae")
    loaded = LatentActionVAE.from_pretrained(tmp_path / "vae", low_cpu_mem_usage=False)
    assert loaded.config.image_size == 64 and loaded.config.frame_height == tiny.config.frame_height
    for (name, a), b in zip(tiny.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_alignment_is_zero_without_labels_and_counts_only_masked_dims():
    z = torch.randn(4, 14)
    action = torch.randn(4, 14)
    assert alignment_loss(z, action, torch.zeros(4, 14)).item() == 0.0
    mask = torch.zeros(4, 14)
    mask[0, :3] = 1  # one labelled pair with a 3-D action
    expected = torch.sum((z[0, :3] - action[0, :3]) ** 2) / 4
    assert torch.allclose(alignment_loss(z, action, mask), expected)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    zeros = torch.zeros(5, 14)
    assert kl_divergence(zeros, zeros).item() == 0.0
    assert kl_divergence(torch.full((5, 14), 0.5), zeros).item() == pytest.approx(14 * 0.125)
    assert kl_divergence(zeros, torch.full((5, 14), -1.0)).item() > 0


def test_reconstruction_weights_moving_pixels_and_total_adds_the_terms():
    target = flow_images(2)
    motion = distance_from_white(target, "ink")
    error_on_white = target.clone()
    error_on_white[:, :, :4, :4] += 0.5  # corner pixels are white (no motion) in the target
    assert reconstruction_loss(target, target, motion).item() == 0.0
    plain = reconstruction_loss(error_on_white, target)
    assert plain.item() == pytest.approx(torch.mean((error_on_white - target) ** 2).item())
    assert reconstruction_loss(error_on_white, target, motion, motion_weight=0.0) == plain
    assert reconstruction_loss(error_on_white, target, motion, motion_weight=10.0) < plain
    mu, logvar, z = torch.randn(2, 14), torch.randn(2, 14), torch.randn(2, 14)
    action, mask = torch.randn(2, 14), torch.ones(2, 14)
    terms = latent_action_loss(target, target, mu, logvar, z, action, mask, motion, lambda_a=2.0, beta=0.5)
    assert torch.allclose(terms.total, 2.0 * terms.alignment + 0.5 * terms.kl)


def test_image_encodings_round_trip_and_agree_on_motion():
    rgb = np.random.default_rng(0).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    rgb[:, :8] = 255  # a white (no motion) band
    for encoding in ("signed", "ink"):
        images = to_model_input(rgb, 64, encoding)
        assert np.array_equal(to_uint8(images, encoding), rgb)
        motion = distance_from_white(images, encoding)
        assert motion.shape == (2, 1, 64, 64) and motion[:, :, :8].abs().max() < 1e-6
    assert torch.allclose(distance_from_white(to_model_input(rgb, 64, "signed"), "signed"),
                          distance_from_white(to_model_input(rgb, 64, "ink"), "ink"), atol=1e-5)
    assert torch.all(to_model_input(rgb, 64, "ink")[:, :, :8] == 0)  # no motion is zero, like zero padding


def test_random_shift_moves_content_and_fills_with_no_motion():
    images = flow_images(4)
    shifted = random_shift(images, 4, background=0.0, rng=np.random.default_rng(0))
    assert shifted.shape == images.shape and not torch.equal(shifted, images)
    assert torch.allclose(shifted.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)))  # squares stay inside
    assert torch.equal(random_shift(images, 0, 0.0, np.random.default_rng(0)), images)


def test_tiny_model_overfits_a_handful_of_pairs():
    torch.manual_seed(0)
    vae = build_vae("tiny")
    images = flow_images(6, seed=1)
    action = torch.zeros(6, 14)
    action[:, :3] = torch.rand(6, 3) * 2 - 1
    mask = torch.zeros(6, 14)
    mask[:3, :3] = 1  # half the pairs labelled
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        out = vae(images, generator=generator)
        terms = latent_action_loss(out.reconstruction, images, out.mu, out.logvar, out.z, action, mask, distance_from_white(images, "ink"))
        optimizer.zero_grad()
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        losses.append(terms.total.item())
    assert np.mean(losses[-5:]) < losses[0] / 10


def test_normalizer_maps_q01_q99_to_unit_range_and_masks_padding():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-5, 5, size=(500, 3)).astype(np.float32)
    actions[:, 2] = 0.25  # a dimension that never moves
    normalizer = ActionNormalizer.fit(("sample_arm", ["x", "y", "grip"], a) for a in actions)
    stats = normalizer.stats["sample_arm"]
    value, mask = normalizer.encode("sample_arm", stats.q99)
    assert value.shape == mask.shape == (14,)
    assert value[:2] == pytest.approx([1.0, 1.0]) and mask.tolist() == [1, 1] + [0] * 12
    low, _ = normalizer.encode("sample_arm", stats.q01 - 100)
    assert low[:2] == pytest.approx([-1.0, -1.0])  # clipped
    assert normalizer.encode("video", None)[1].sum() == 0
    assert normalizer.encode("unseen_robot", actions[0])[1].sum() == 0


def test_embodiment_mapping_table():
    agibot_names = [f"joint.left_arm_{i}" for i in range(7)] + [f"joint.right_arm_{i}" for i in range(7)]
    agibot_names = ["effector.left_gripper"] + agibot_names + ["head.yaw"] * 7
    assert selected_dims("agibot_g1", agibot_names, 22) == list(range(1, 15))
    assert selected_dims("aloha-agilex", [], 14) == list(range(14))
    assert selected_dims("franka", [], 8) == list(range(8))
    assert selected_dims("some_new_robot", [], 20) == list(range(14))
    assert selected_dims("human", [], 6) == []


def test_sampler_mixes_at_the_ratio_and_is_a_function_of_the_step():
    labelled = np.array([True] * 50 + [False] * 450)
    groups = np.array(["robot"] * 50 + ["clips_a"] * 400 + ["clips_b"] * 50)
    sampler = MixedPairSampler(labelled, groups, labelled_fraction=0.1, seed=3)
    drawn = np.concatenate([sampler.batch(step, 64) for step in range(100)])
    assert labelled[drawn].mean() == pytest.approx(0.1, abs=0.02)
    unlabelled = drawn[~labelled[drawn]]
    assert (groups[unlabelled] == "clips_b").mean() == pytest.approx(0.5, abs=0.05)  # sources weighed equally
    assert np.array_equal(sampler.batch(7, 64), MixedPairSampler(labelled, groups, labelled_fraction=0.1, seed=3).batch(7, 64))
    only_robot = MixedPairSampler(labelled, groups, candidates=np.arange(50))
    assert labelled[only_robot.batch(0, 32)].all()


def test_probe_r2_is_one_on_a_linear_map_and_zero_on_shuffled_data():
    rng = np.random.default_rng(0)
    actions = rng.normal(size=(400, 3))
    latents = actions @ rng.normal(size=(3, 14)) + 0.01 * rng.normal(size=(400, 14))
    episodes = np.repeat(np.arange(8), 50)
    predicted = cross_validated_predictions(latents, actions, episodes)
    assert mean_r2(actions, predicted) > 0.99
    assert np.all(r2_per_dim(actions, predicted) > 0.99)
    shuffled = actions[rng.permutation(len(actions))]
    assert abs(mean_r2(shuffled, cross_validated_predictions(latents, shuffled, episodes))) < 0.1
    exact = fit_ridge(latents, actions, alpha=0.0)
    assert np.allclose(exact.predict(latents), actions, atol=0.05)


def test_probe_scores_each_embodiment_by_the_held_out_episodes_it_has(tmp_path):
    """The VAE holds out episodes over every embodiment together: one may have none held out (nothing to score: said
    so, not a crash), or only held-out ones (its probe is fit across folds of them, and the report says so)."""
    from latent_action.evaluation import EmbodimentData, EpisodeRecord, _probe_report

    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(2, 14))

    def episode(name: str, scored: bool) -> EpisodeRecord:
        actions = rng.normal(size=(30, 2))
        return EpisodeRecord(name, "task", scored, actions @ mixing, rng.normal(size=(30, 32)), actions)

    per_embodiment = {
        "arm": EmbodimentData(["x", "y"], [0, 1], [episode(f"arm-{i}", scored=i < 2) for i in range(6)]),
        "none_held_out": EmbodimentData(["x", "y"], [0, 1], [episode(f"n-{i}", scored=False) for i in range(3)]),
        "all_held_out": EmbodimentData(["x", "y"], [0, 1], [episode(f"a-{i}", scored=True) for i in range(3)]),
    }
    report = _probe_report(per_embodiment, alpha=1e-3, out_dir=tmp_path)["per_embodiment"]
    assert report["arm"]["r2"] > 0.99 and report["arm"]["probe_fit_on"] == "the training episodes"
    assert "held-out" in report["none_held_out"]["error"] and report["none_held_out"]["episodes"] == 3
    assert report["all_held_out"]["probe_fit_on"].startswith("the other folds") and report["all_held_out"]["r2"] > 0.99
    assert sorted(path.name for path in tmp_path.iterdir()) == ["probe_all_held_out.png", "probe_arm.png"]


def test_an_embodiment_of_unseen_tasks_only_is_not_scored_by_a_probe_fit_on_them(tmp_path):
    """With holdout_by: tasks the probe must not see the unseen tasks either: no fit across their folds."""
    from latent_action.evaluation import EmbodimentData, EpisodeRecord, _probe_report

    rng = np.random.default_rng(0)
    episodes = [EpisodeRecord(f"a-{i}", "task", True, rng.normal(size=(30, 14)), rng.normal(size=(30, 32)),
                              rng.normal(size=(30, 2))) for i in range(3)]
    report = _probe_report({"arm": EmbodimentData(["x", "y"], [0, 1], episodes)}, alpha=1e-3, out_dir=tmp_path,
                           unseen_only=True)
    assert "every episode of it is of a task the VAE never saw" in report["per_embodiment"]["arm"]["error"]
    assert report["overall_r2"] is None and not list(tmp_path.iterdir())


def test_no_varying_dimension_scores_none_not_nan(tmp_path):
    """NaN is no JSON: eval.json and the command's summary line carried it."""
    from latent_action.evaluation import EmbodimentData, EpisodeRecord, _probe_report

    rng = np.random.default_rng(0)
    episodes = [EpisodeRecord(f"a-{i}", "task", i < 2, rng.normal(size=(30, 14)), rng.normal(size=(30, 32)),
                              np.ones((30, 1))) for i in range(5)]
    report = _probe_report({"arm": EmbodimentData(["z"], [0], episodes)}, alpha=1e-3, out_dir=tmp_path)
    assert report["overall_r2"] is None and report["overall_r2_flow_grid"] is None
    json.dumps(report, allow_nan=False)


def test_config_reports_every_problem_at_once_by_key():
    with pytest.raises(ConfigError) as error:
        parse_config({
            "model": {"preset": "huge", "colour": 1},
            "data": {"sources": [{"root": "x", "wieght": 2}], "labelled_fraction": 2},
            "optim": {"lr": -1},
            "run": {"out_dir": "o"},
        })
    message = str(error.value)
    for key in ("model.preset", "model.colour", "data.sources.0.wieght", "data.labelled_fraction", "optim.lr"):
        assert key in message
    with pytest.raises(ConfigError, match="exactly one of"):
        parse_config({"data": {}, "run": {"out_dir": "o"}})


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_shipped_configs_are_valid(name):
    from pathlib import Path

    from latent_action.config import load_config

    repo = Path(__file__).resolve().parent.parent
    config = load_config(repo / "recipes" / "configs" / "vae" / f"{name}.yaml")
    assert config.model.preset == name
    assert config.run.out_dir == repo / "out" / f"vae-{name}"  # relative to the file, not the working directory


def test_flow_errors_score_a_blank_reconstruction_as_the_blank_baseline():
    from latent_action.evaluation import FlowErrors

    reference = np.zeros((2, 8, 8, 2), np.float32)
    reference[:, 2:4, 2:4] = (3.0, 4.0)  # 8 moving pixels of 5 px among 128
    perfect, blank = FlowErrors(), FlowErrors()
    perfect.add(reference, reference.copy(), reference)
    blank.add(reference, np.zeros_like(reference), reference)
    assert perfect.summary()["epe_px"] == 0 and perfect.summary()["epe_moving_px"] == 0
    summary = blank.summary()
    assert summary["epe_moving_px"] == summary["epe_moving_blank_px"] == 5.0
    assert summary["epe_px"] == summary["epe_blank_px"] == pytest.approx(5.0 * 8 / 128)
    assert summary["moving_pixel_fraction"] == pytest.approx(8 / 128)


def test_one_embodiment_with_actions_of_two_widths_is_refused_naming_both_episodes():
    """Two datasets naming their robot alike (or not at all) with other action spaces: the per-embodiment fit crashed
    on an index, or dropped the wider one's last dimensions."""
    from latent_action.pairs import PairTable

    table = PairTable()
    table.append("lerobot-a-0", "lerobot", "arm_x", 0, np.zeros(4, np.float32))
    table.append("videos-clip", "videos", "arm_x", 0, None)  # no actions: nothing to compare
    with pytest.raises(ValueError, match=r"embodiment 'arm_x' has 3-D actions in episode lerobot-b-0 and 4-D in "
                                         r"lerobot-a-0: give one of their sources its own `embodiment:` name"):
        table.append("lerobot-b-0", "lerobot", "arm_x", 0, np.zeros(3, np.float32))


def test_a_checkpoint_that_held_out_nothing_is_said_so():
    from latent_action.evaluation import EmbodimentData, nothing_scored

    line = nothing_scored("data", "heldout", set(), {"arm": EmbodimentData(["x"], [0])}, {})
    assert line == ("data: the checkpoint held out no episode (holdout_fraction 0, or fewer than two labelled episodes "
                    "to draw from); --split all scores every episode")
