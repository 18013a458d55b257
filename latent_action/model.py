"""The latent-action VAE: a DC-AE turns a flow-RGB image into 4 tokens of 512, light heads squeeze them to a 14-D z.

    flow-RGB [B,3,S,S] --DC-AE encoder--> [B,512,2,2] = 4 tokens x 512 --TokenEncoder--> (mu, logvar) [B,14]
    z [B,14] --TokenDecoder--> 4 tokens x 512 = [B,512,2,2] --DC-AE decoder--> reconstructed flow-RGB [B,3,S,S]

The DC-AE is diffusers' `AutoencoderDC`, built from the config stored in ours, so `save_pretrained` /
`from_pretrained(dir)` round-trip the whole model. Images are float tensors in the encoding named by `input_encoding` (see `images.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderDC, ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

INITIAL_LOGVAR = -6.0


@dataclass
class LatentActionOutput:
    reconstruction: torch.Tensor  # [B, 3, S, S]
    mu: torch.Tensor  # [B, action_dim], float32
    logvar: torch.Tensor  # [B, action_dim], float32
    z: torch.Tensor  # [B, action_dim], float32: a sample of N(mu, exp(logvar)), or mu when not sampling


class TokenEncoder(nn.Module):
    """4 x 512 tokens -> (mu, logvar) of the latent action."""

    def __init__(self, num_tokens: int, token_dim: int, hidden_dim: int, action_dim: int):
        super().__init__()
        # No LayerNorm on the tokens: a flow image is mostly static background, so tokens share a large
        # common part and normalising each token shrinks what tells pairs apart (training stalls).
        self.mlp = nn.Sequential(
            nn.Linear(num_tokens * token_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, 2 * action_dim),
        )
        # Start with mu ~ 0 and a narrow posterior (std ~ 0.05): with the prior's unit noise the decoder
        # first learns to ignore z, and reconstruction never starts to shape the latent (posterior collapse).
        nn.init.normal_(self.mlp[-1].weight, std=1e-3)
        nn.init.zeros_(self.mlp[-1].bias)
        nn.init.constant_(self.mlp[-1].bias[action_dim:], INITIAL_LOGVAR)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.mlp(tokens.flatten(1)).float()
        mu, logvar = stats.chunk(2, dim=-1)
        return mu, logvar.clamp(-20.0, 10.0)


class TokenDecoder(nn.Module):
    """Latent action -> 4 x 512 tokens for the DC-AE decoder."""

    def __init__(self, num_tokens: int, token_dim: int, hidden_dim: int, action_dim: int):
        super().__init__()
        self.num_tokens, self.token_dim = num_tokens, token_dim
        self.mlp = nn.Sequential(
            nn.Linear(action_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, num_tokens * token_dim),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(z).unflatten(-1, (self.num_tokens, self.token_dim))


class LatentActionVAE(ModelMixin, ConfigMixin):
    """A VAE whose latent is one 14-D action per flow image (one per consecutive frame pair).

    `dcae_config` is the keyword config of the `AutoencoderDC` inside (see `presets.py`);
    `input_encoding` is how flow-RGB pixels become input values ("signed" or "ink", see `images.py`);
    the flow settings (`flow_*`, `frame_*`) record how the training flow images were made, so
    labelling makes its inputs the same way and a build with other settings refuses the VAE:
    `flow_fps` is the stored frame rate (None: every source frame, VAEs from before it was recorded),
    `flow_stride` the pair distance in stored frames, `flow_options` the backend's resolved options,
    `flow_still_*` where flow was zeroed for lack of change (`flow/still.py`; threshold 0 = never),
    `flow_resize` how frames were fitted to the stored size (a recipe's `resize`), `flow_camera_layouts` the camera
    layouts its flow came from ("single", "t"; None: a VAE from before they were recorded, taken as ["single"]),
    `flow_camera_t_names` the cameras of each T-layout among them, head first (None: not recorded).
    """

    @register_to_config
    def __init__(
        self,
        dcae_config: dict[str, Any],
        image_size: int = 64,
        action_dim: int = 14,
        head_hidden_dim: int = 256,
        freeze_dcae: bool = False,
        input_encoding: str = "signed",
        flow_backend: str = "dis",
        flow_max_magnitude: float | None = None,
        frame_height: int = 384,
        frame_width: int = 320,
        flow_fps: float | None = None,
        flow_stride: int = 1,
        flow_options: dict[str, Any] | None = None,
        flow_still_threshold: float = 0.0,
        flow_still_radius: int = 6,
        flow_resize: str = "pad",
        flow_camera_layouts: list[str] | None = None,
        flow_camera_t_names: list[list[str]] | None = None,
    ):
        super().__init__()
        self.dcae = AutoencoderDC(**dcae_config)
        grid = image_size // self.dcae.spatial_compression_ratio
        if grid < 1 or grid * self.dcae.spatial_compression_ratio != image_size:
            raise ValueError(f"image_size {image_size} is not a multiple of the DC-AE downsampling {self.dcae.spatial_compression_ratio}")
        self.grid = grid
        token_dim = int(dcae_config["latent_channels"])
        self.action_encoder = TokenEncoder(grid * grid, token_dim, head_hidden_dim, action_dim)
        self.action_decoder = TokenDecoder(grid * grid, token_dim, head_hidden_dim, action_dim)
        if freeze_dcae:
            self.dcae.requires_grad_(False)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def train(self, mode: bool = True) -> "LatentActionVAE":
        super().train(mode)
        if self.config.freeze_dcae:
            self.dcae.eval()  # a frozen DC-AE keeps its batch-norm statistics
        return self

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """DC-AE latent grid as tokens [B, grid*grid, latent_channels], scaled to about unit variance.

        `scaling_factor` is the DC-AE's own latent scale (published checkpoints carry it; 1.0 for tiny).
        """
        latents = self.dcae.encoder(images) * self.dcae.config.scaling_factor
        return latents.flatten(2).transpose(1, 2)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each float32 [B, action_dim]."""
        return self.action_encoder(self.tokens(images))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        tokens = self.action_decoder(z.to(self.action_decoder.mlp[0].weight.dtype))
        grid = tokens.transpose(1, 2).unflatten(-1, (self.grid, self.grid))
        return self.dcae.decoder(grid / self.dcae.config.scaling_factor)

    def forward(self, images: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None) -> LatentActionOutput:
        mu, logvar = self.encode(images)
        z = mu
        if sample:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * noise
        return LatentActionOutput(self.decode(z), mu, logvar, z)
