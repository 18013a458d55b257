"""The tiny Motus: tri-model joint attention really couples the experts, and the five inference modes."""

from __future__ import annotations

import pytest
import torch

from recipes.motus.build import build_encoders, build_motus
from recipes.motus.config import model_config
from recipes.motus.schedule import DENOISED, Mode, sample_timesteps, training_loss, video_timesteps

CHUNK, ACTION_DIM = 48, 14


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny():
    config = model_config("tiny")
    torch.manual_seed(0)
    model = build_motus(config).eval()
    encoders = build_encoders(config)
    frames = torch.randint(0, 256, (2, 9, 32, 32, 3), dtype=torch.uint8)
    texts = ["push the red block", "open the top drawer slowly"]
    und, und_mask = encoders.understanding(frames[:, 0], texts)
    inputs = {"latents": encoders.video.encode(frames), "text": encoders.text(texts),
              "state": torch.randn(2, 14), "actions": torch.randn(2, CHUNK, ACTION_DIM),
              "und_features": und, "und_mask": und_mask}
    return model, encoders, inputs


def velocities(model, inputs, **changes):
    args = {**inputs, **changes}
    latents = args["latents"]
    with torch.no_grad():
        return model(latents, video_timesteps(torch.full((2,), 0.5), latents.shape[2]), args["text"],
                     args["actions"], torch.full((2,), 0.5), args["state"], args["und_features"], args["und_mask"])


def test_tiny_uses_the_real_diffusers_and_transformers_classes(tiny):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import Qwen3VLModel

    model, encoders, _ = tiny
    assert isinstance(model.video, WanTransformer3DModel)
    assert isinstance(encoders.video.vae, AutoencoderKLWan)
    assert isinstance(encoders.understanding.model, Qwen3VLModel)
    assert len(model.video.blocks) == len(model.action.blocks) == len(model.understanding.blocks)


def test_latents_and_velocities_have_the_model_shapes(tiny):
    model, _, inputs = tiny
    assert inputs["latents"].shape == (2, 4, 3, 8, 8)  # 9 frames -> 1 + 8/4 latent frames, 32/4 pixels
    out = velocities(model, inputs)
    assert out.video.shape == inputs["latents"].shape
    assert out.actions.shape == (2, CHUNK, ACTION_DIM)


def test_joint_attention_couples_every_expert_with_the_video(tiny):
    model, _, inputs = tiny
    base = velocities(model, inputs)
    other_actions = velocities(model, inputs, actions=inputs["actions"] + 1.0)
    assert not torch.allclose(base.video, other_actions.video, atol=1e-6), "actions do not reach the video expert"
    other_video = velocities(model, inputs, latents=inputs["latents"] * -1)
    assert not torch.allclose(base.actions, other_video.actions, atol=1e-6), "video does not reach the action expert"
    other_und = velocities(model, inputs, und_features=inputs["und_features"] + 1.0)
    assert not torch.allclose(base.video, other_und.video, atol=1e-6)
    assert not torch.allclose(base.actions, other_und.actions, atol=1e-6)


def test_padded_understanding_tokens_are_never_attended(tiny):
    model, _, inputs = tiny
    assert not inputs["und_mask"][0].all(), "the fixture's first prompt should be shorter, hence padded"
    base = velocities(model, inputs)
    noisy_padding = inputs["und_features"].clone()
    noisy_padding[~inputs["und_mask"]] = 100.0
    other = velocities(model, inputs, und_features=noisy_padding)
    torch.testing.assert_close(base.video, other.video)
    torch.testing.assert_close(base.actions, other.actions)


def test_video_expert_alone_runs_without_action_and_understanding_tokens(tiny):
    model, _, inputs = tiny
    latents = inputs["latents"]
    with torch.no_grad():
        out = model(latents, video_timesteps(torch.full((2,), 0.3), 3), inputs["text"])
    assert out.video.shape == latents.shape and out.actions is None


@pytest.mark.parametrize("mode", list(Mode))
def test_each_mode_returns_the_right_shapes_and_keeps_the_given_modality(tiny, mode):
    model, _, inputs = tiny
    latents, actions = inputs["latents"], inputs["actions"]
    generator = torch.Generator().manual_seed(7)
    prediction = model.predict(mode, latents[:, :, :1], latents.shape[2], inputs["text"], action_shape=(CHUNK, 14),
                               actions=actions, video_latents=latents, state=inputs["state"],
                               und_features=inputs["und_features"], und_mask=inputs["und_mask"], num_steps=3,
                               generator=generator)
    assert prediction.video_latents.shape == latents.shape
    assert prediction.actions.shape == (2, CHUNK, ACTION_DIM)
    torch.testing.assert_close(prediction.video_latents[:, :, :1], latents[:, :, :1], rtol=0, atol=0)

    # What each mode holds fixed: the given clean modality, or the initial noise (same generator draws).
    fresh = torch.Generator().manual_seed(7)
    noise_video = torch.randn(latents.shape, generator=fresh)
    noise_actions = torch.randn(actions.shape, generator=fresh)
    denoise_video, denoise_actions = DENOISED[mode]
    if mode is Mode.IDM:
        assert torch.equal(prediction.video_latents, latents)
    elif not denoise_video:
        assert torch.equal(prediction.video_latents[:, :, 1:], noise_video[:, :, 1:])
    else:
        assert not torch.allclose(prediction.video_latents[:, :, 1:], noise_video[:, :, 1:])
    if mode is Mode.WORLD_MODEL:
        assert torch.equal(prediction.actions, actions)
    elif not denoise_actions:
        assert torch.equal(prediction.actions, noise_actions)
    else:
        assert not torch.allclose(prediction.actions, noise_actions)


def test_modes_that_need_a_clean_input_say_so(tiny):
    model, _, inputs = tiny
    latents = inputs["latents"]
    with pytest.raises(ValueError, match="world_model mode needs the clean actions"):
        model.predict("world_model", latents[:, :, :1], 3, inputs["text"], action_shape=(CHUNK, 14))
    with pytest.raises(ValueError, match="idm mode needs the clean video"):
        model.predict("idm", latents[:, :, :1], 3, inputs["text"], action_shape=(CHUNK, 14))


def test_logit_normal_timesteps_concentrate_mid_way():
    t = sample_timesteps(20000, "logit_normal", torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    assert abs(float(t.mean()) - 0.5) < 0.01
    middle = ((t > 0.25) & (t < 0.75)).float().mean()
    assert middle > 0.6  # uniform would give 0.5
    with pytest.raises(ValueError, match="unknown timestep"):
        sample_timesteps(2, "cosine")


def test_training_loss_is_the_weighted_sum_of_velocity_errors(tiny):
    model, _, inputs = tiny
    losses = training_loss(model, **inputs, video_weight=2.0, action_weight=0.5,
                           generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(losses.total, 2.0 * losses.video + 0.5 * losses.actions)


class ZeroVelocity(torch.nn.Module):
    """Predicts zero velocity, so the loss must equal the mean squared target over the counted entries."""

    def forward(self, video, video_t, text, actions, action_t, *rest):
        from recipes.motus.model import Velocities

        return Velocities(torch.zeros_like(video), torch.zeros_like(actions))


def test_loss_targets_are_noise_minus_clean_and_skip_condition_frame_and_padding():
    latents, actions = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 6, 5)
    mask = torch.tensor([[True, True, True, False, False]] * 2)
    losses = training_loss(ZeroVelocity(), latents, torch.zeros(2, 1, 8), actions=actions, action_mask=mask,
                           generator=torch.Generator().manual_seed(3))
    draws = torch.Generator().manual_seed(3)
    torch.randn(2, generator=draws)  # video timesteps
    video_noise = torch.randn(latents.shape, generator=draws)
    torch.randn(2, generator=draws)  # action timesteps
    action_noise = torch.randn(actions.shape, generator=draws)
    expected_video = ((video_noise - latents)[:, :, 1:] ** 2).mean()
    expected_actions = ((action_noise - actions)[..., :3] ** 2).mean()
    torch.testing.assert_close(losses.video, expected_video)
    torch.testing.assert_close(losses.actions, expected_actions)


def test_pretrained_weights_load_from_local_diffusers_and_transformers_directories(tiny, tmp_path):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from recipes.motus.build import build_vae, build_vlm

    model, encoders, _ = tiny
    model.video.save_pretrained(tmp_path / "wan" / "transformer")
    encoders.video.vae.save_pretrained(tmp_path / "wan" / "vae")
    tiny_vlm = model_config("tiny").vlm.architecture
    Qwen3VLForConditionalGeneration(Qwen3VLConfig(**tiny_vlm)).save_pretrained(tmp_path / "vlm")
    config = model_config({"preset": "tiny", "video": {"pretrained_path": str(tmp_path / "wan")},
                           "vlm": {"pretrained_path": str(tmp_path / "vlm"), "architecture": None}})
    loaded = build_motus(config)
    for name, tensor in model.video.state_dict().items():
        assert torch.equal(loaded.video.state_dict()[name], tensor), name
    assert torch.equal(build_vae(config).encoder.conv_in.weight, encoders.video.vae.encoder.conv_in.weight)
    saved = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path / "vlm").model
    vlm = build_vlm(config)
    assert vlm.language_model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16  # frozen: half the memory
    assert torch.equal(vlm.language_model.layers[0].mlp.up_proj.weight,
                       saved.language_model.layers[0].mlp.up_proj.weight.to(torch.bfloat16))
    assert loaded.understanding.adapter[0].in_features == 32  # read from the checkpoint's config
