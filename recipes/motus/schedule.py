"""Rectified flow for Motus: timestep sampling, the training loss, and Euler sampling in five modes.

Convention: x_t = (1 - t) * clean + t * noise, so t = 1 is pure noise; the model predicts the
velocity noise - clean, and sampling steps from t = 1 to t = 0. Video and actions get independent
timesteps; the condition frame (latent frame 0) always sits at t = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F


class Mode(str, Enum):
    VLA = "vla"  # video kept at full noise, actions denoised
    VGM = "vgm"  # actions kept at full noise, video denoised
    WORLD_MODEL = "world_model"  # clean actions given, video denoised
    IDM = "idm"  # clean video given, actions denoised
    JOINT = "joint"  # both denoised


# mode -> (video is denoised, actions are denoised); what is not denoised is held at t = 1 (noise) or t = 0 (given)
DENOISED = {Mode.VLA: (False, True), Mode.VGM: (True, False), Mode.WORLD_MODEL: (True, False),
            Mode.IDM: (False, True), Mode.JOINT: (True, True)}
GIVEN_CLEAN = {Mode.WORLD_MODEL: "actions", Mode.IDM: "video"}


def sample_timesteps(batch: int, method: str = "logit_normal", generator: torch.Generator | None = None,
                     sigmoid_scale: float = 1.0, min_t: float = 0.0, max_t: float = 1.0) -> torch.Tensor:
    """[batch] timesteps in [min_t, max_t]; logit-normal puts most of them mid-way, where learning is hardest."""
    if method == "logit_normal":
        t = torch.sigmoid(torch.randn(batch, generator=generator) * sigmoid_scale)
    elif method == "uniform":
        t = torch.rand(batch, generator=generator)
    else:
        raise ValueError(f"unknown timestep sampling method {method!r} (logit_normal or uniform)")
    return min_t + (max_t - min_t) * t


def noised(clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(t.shape + (1,) * (clean.dim() - t.dim())).to(clean.dtype)
    return (1 - t) * clean + t * noise


def video_timesteps(t: torch.Tensor, num_latent_frames: int) -> torch.Tensor:
    """[B] -> [B, F]: the condition frame at 0, every other latent frame at t."""
    per_frame = t[:, None].expand(-1, num_latent_frames).clone()
    per_frame[:, 0] = 0
    return per_frame


@dataclass
class Losses:
    total: torch.Tensor
    video: torch.Tensor
    actions: torch.Tensor | None


def training_loss(model, latents: torch.Tensor, text: torch.Tensor, *, actions: torch.Tensor | None = None,
                  action_mask: torch.Tensor | None = None, state: torch.Tensor | None = None,
                  und_features: torch.Tensor | None = None, und_mask: torch.Tensor | None = None,
                  method: str = "logit_normal", video_weight: float = 1.0, action_weight: float = 1.0,
                  generator: torch.Generator | None = None) -> Losses:
    """One rectified-flow loss: w_v * MSE(video velocity) + w_a * MSE(action velocity).

    latents [B, C, F, H, W] are clean, frame 0 the condition; actions [B, T, Da] clean, or None to
    train the video expert alone (stage 1); action_mask [B, Da] marks the real (unpadded) dimensions.
    """
    batch, device = latents.shape[0], latents.device
    t_video = sample_timesteps(batch, method, generator).to(device)
    video_noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
    noisy_video = noised(latents, video_noise, t_video)
    noisy_video[:, :, :1] = latents[:, :, :1]
    noisy_actions = t_action = action_noise = None
    if actions is not None:
        t_action = sample_timesteps(batch, method, generator).to(device)
        action_noise = torch.randn(actions.shape, generator=generator).to(device, actions.dtype)
        noisy_actions = noised(actions, action_noise, t_action)
    out = model(noisy_video, video_timesteps(t_video, latents.shape[2]), text, noisy_actions, t_action, state,
                und_features, und_mask)
    video_loss = F.mse_loss(out.video[:, :, 1:].float(), (video_noise - latents)[:, :, 1:].float())
    if actions is None:
        return Losses(video_weight * video_loss, video_loss, None)
    mask = torch.ones_like(actions[:, :1]) if action_mask is None else action_mask[:, None].to(actions.dtype)
    squared = (out.actions.float() - (action_noise - actions).float()) ** 2 * mask
    action_loss = squared.sum() / (mask.expand_as(squared).sum()).clamp(min=1)
    return Losses(video_weight * video_loss + action_weight * action_loss, video_loss, action_loss)


@dataclass
class Prediction:
    video_latents: torch.Tensor  # [B, C, F, H, W], frame 0 the condition
    actions: torch.Tensor  # [B, T, Da]


@torch.no_grad()
def predict(model, mode: Mode | str, condition_latents: torch.Tensor, num_latent_frames: int, text: torch.Tensor,
            *, action_shape: tuple[int, int] | None = None, actions: torch.Tensor | None = None,
            video_latents: torch.Tensor | None = None, state: torch.Tensor | None = None,
            und_features: torch.Tensor | None = None, und_mask: torch.Tensor | None = None,
            num_steps: int = 10, generator: torch.Generator | None = None) -> Prediction:
    """Euler-integrate the denoised modalities from t = 1 to 0; the others stay fixed throughout.

    condition_latents [B, C, 1, H, W]; `actions` (clean, [B, T, Da]) is required for world_model,
    `video_latents` (clean, [B, C, F, H, W]) for idm; otherwise `action_shape` = (T, Da).
    """
    mode = Mode(mode)
    batch, device, dtype = condition_latents.shape[0], condition_latents.device, condition_latents.dtype
    denoise_video, denoise_actions = DENOISED[mode]
    if mode is Mode.WORLD_MODEL and actions is None:
        raise ValueError("world_model mode needs the clean actions")
    if mode is Mode.IDM and video_latents is None:
        raise ValueError("idm mode needs the clean video latents")
    if actions is None and action_shape is None:
        raise ValueError(f"{mode.value} mode needs action_shape (chunk length, action dim)")

    latent_shape = (batch, condition_latents.shape[1], num_latent_frames, *condition_latents.shape[3:])
    video = video_latents.clone() if mode is Mode.IDM else _noise(latent_shape, generator, device, dtype)
    video[:, :, :1] = condition_latents
    action = actions.clone() if mode is Mode.WORLD_MODEL else _noise((batch, *action_shape), generator, device, dtype)
    fixed_video_t = 0.0 if mode is Mode.IDM else 1.0
    fixed_action_t = 0.0 if mode is Mode.WORLD_MODEL else 1.0

    times = torch.linspace(1.0, 0.0, num_steps + 1)
    for t, t_next in zip(times[:-1], times[1:]):
        t_video = torch.full((batch,), float(t) if denoise_video else fixed_video_t, device=device)
        t_action = torch.full((batch,), float(t) if denoise_actions else fixed_action_t, device=device)
        out = model(video, video_timesteps(t_video, num_latent_frames), text, action, t_action, state,
                    und_features, und_mask)
        step = float(t_next - t)
        if denoise_video:
            video[:, :, 1:] = video[:, :, 1:] + step * out.video[:, :, 1:].to(dtype)
        if denoise_actions:
            action = action + step * out.actions.to(dtype)
    return Prediction(video, action)


def _noise(shape, generator, device, dtype) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(device, dtype)
