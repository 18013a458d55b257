"""The two model sizes: `paper` (the published DC-AE f128c512 at 256x256) and `tiny` (a few MB, for tests and CPU demos).

Parameter counts (`pyramid train-vae` prints them too):

| preset | DC-AE encoder | DC-AE decoder | light heads | total     | fp32 size |
|--------|---------------|---------------|-------------|-----------|-----------|
| paper  | 415.66 M      | 705.02 M      | 6.34 M      | 1127.02 M | 4.5 GB    |
| tiny   | 0.56 M        | 0.93 M        | 1.19 M      | 2.69 M    | 10.8 MB   |

Both turn a flow-RGB image into a 2x2 grid of 512 channels: 4 tokens of 512.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latent_action.model import LatentActionVAE

# The architecture of the published `mit-han-lab/dc-ae-f128c512-{in,mix}-1.0-diffusers` checkpoints
# (from diffusers' scripts/convert_dcae_to_diffusers.py): 8 stages, 128x downsampling, 512 latent channels.
PAPER_DCAE: dict[str, Any] = {
    "in_channels": 3,
    "latent_channels": 512,
    "attention_head_dim": 32,
    "encoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 5,
    "decoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 5,
    "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024, 2048, 2048],
    "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024, 2048, 2048],
    "encoder_layers_per_block": [0, 4, 8, 2, 2, 2, 2, 2],
    "decoder_layers_per_block": [0, 5, 10, 2, 2, 2, 2, 2],
    "encoder_qkv_multiscales": [[]] * 8,
    "decoder_qkv_multiscales": [[]] * 8,
    "upsample_block_type": "pixel_shuffle",
    "downsample_block_type": "pixel_unshuffle",
    "decoder_norm_types": ["batch_norm"] * 3 + ["rms_norm"] * 5,
    "decoder_act_fns": ["relu"] * 3 + ["silu"] * 5,
}

# Six stages (32x downsampling: 64x64 -> 2x2), narrow, one ResBlock per stage after a pixel-unshuffle
# stem (as the published model's first stage); its shortcuts need widths that are multiples of 512,
# so they are off here.
TINY_DCAE: dict[str, Any] = {
    "in_channels": 3,
    "latent_channels": 512,
    "attention_head_dim": 8,
    "encoder_block_types": "ResBlock",
    "decoder_block_types": "ResBlock",
    "encoder_block_out_channels": [8, 16, 32, 64, 64, 64],
    "decoder_block_out_channels": [8, 16, 32, 64, 64, 64],
    "encoder_layers_per_block": [0, 1, 1, 1, 1, 1],
    "decoder_layers_per_block": [0, 1, 1, 1, 1, 1],
    "encoder_qkv_multiscales": [[]] * 6,
    "decoder_qkv_multiscales": [[]] * 6,
    "encoder_out_shortcut": False,
    "decoder_in_shortcut": False,
}


@dataclass(frozen=True)
class Preset:
    dcae_config: dict[str, Any]
    image_size: int
    head_hidden_dim: int
    input_encoding: str  # "signed" for a DC-AE pretrained on images, "ink" when trained from scratch


PRESETS = {
    "paper": Preset(PAPER_DCAE, image_size=256, head_hidden_dim=1024, input_encoding="signed"),
    "tiny": Preset(TINY_DCAE, image_size=64, head_hidden_dim=256, input_encoding="ink"),
}


def build_vae(preset: str, dcae_path: str | Path | None = None, freeze_dcae: bool = False, **settings: Any) -> LatentActionVAE:
    """A fresh VAE of the named size; with `dcae_path`, the DC-AE weights come from that diffusers directory.

    `settings` are the remaining `LatentActionVAE` config values (flow settings, `head_hidden_dim`).
    """
    spec = PRESETS[preset]
    settings = {"image_size": spec.image_size, "head_hidden_dim": spec.head_hidden_dim,
                "input_encoding": spec.input_encoding, **settings}
    if dcae_path is None:
        return LatentActionVAE(dcae_config=dict(spec.dcae_config), freeze_dcae=freeze_dcae, **settings)
    from diffusers import AutoencoderDC

    pretrained = AutoencoderDC.from_pretrained(str(dcae_path), torch_dtype=torch.float32, low_cpu_mem_usage=False)
    config = {key: value for key, value in pretrained.config.items() if not key.startswith("_")}
    vae = LatentActionVAE(dcae_config=config, freeze_dcae=freeze_dcae, **settings)
    vae.dcae.load_state_dict(pretrained.state_dict())
    return vae


def parameter_counts(vae: LatentActionVAE) -> dict[str, int]:
    def count(module: torch.nn.Module, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

    return {
        "dcae_encoder": count(vae.dcae.encoder),
        "dcae_decoder": count(vae.dcae.decoder),
        "heads": count(vae.action_encoder) + count(vae.action_decoder),
        "total": count(vae),
        "trainable": count(vae, trainable_only=True),
    }


def describe_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {value / 1e6:.2f}M" for name, value in counts.items())
