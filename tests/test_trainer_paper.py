"""The paper configuration, built on the meta device (no weights, no memory): its parameter counts match the paper."""

from __future__ import annotations

import pytest
import torch

from recipes.motus.build import build_motus, build_vae, build_vlm
from recipes.motus.config import model_config

# Motus (arXiv 2512.13030): Wan2.2-TI2V-5B video expert, Qwen3-VL-2B, action expert 641.5M, understanding 253.5M.
PAPER = {"video": 5.00e9, "vlm": 2.13e9, "action": 641.5e6, "understanding": 253.5e6}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper():
    config = model_config("paper")
    with torch.device("meta"):
        return build_motus(config), build_vlm(config), build_vae(config)


@pytest.mark.parametrize("part", list(PAPER))
def test_parameter_counts_match_the_paper_within_2_percent(paper, part):
    motus, vlm, _ = paper
    actual = count(vlm if part == "vlm" else getattr(motus, part))
    assert abs(actual - PAPER[part]) / PAPER[part] < 0.02, f"{part}: {actual / 1e6:.1f}M vs {PAPER[part] / 1e6:.1f}M"


def test_nothing_was_allocated(paper):
    motus, vlm, vae = paper
    for module in (motus, vlm, vae):
        assert {p.device.type for p in module.parameters()} == {"meta"}


def test_the_experts_project_into_the_video_attention_width(paper):
    motus, vlm, vae = paper
    assert motus.video.config.num_attention_heads * motus.video.config.attention_head_dim == 3072
    assert motus.action.blocks[0].to_qkv.weight.shape == (3 * 3072, 1024)
    assert motus.understanding.blocks[0].to_qkv.weight.shape == (3 * 3072, 512)
    assert motus.understanding.adapter[0].in_features == vlm.config.text_config.hidden_size == 2048
    assert len(motus.video.blocks) == len(motus.action.blocks) == len(motus.understanding.blocks) == 30
    assert vae.config.z_dim == motus.video.config.in_channels == 48
    assert motus.action.config.chunk_size == 48  # 8 frames at 5 Hz = 1.6 s of actions at 30 Hz
