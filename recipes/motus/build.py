"""Build Motus and its frozen encoders from a `ModelConfig`: pretrained weights from local paths, or random init.

Everything here also works under `torch.device("meta")`, which is how the paper configuration's
parameter counts are checked without any weights.
"""

from __future__ import annotations

import copy

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from recipes.motus.config import ModelConfig
from recipes.motus.encoders import (HashingTextEmbedder, HashingTokenizer, Umt5TextEmbedder, UnderstandingFeatures,
                                    VideoAutoencoder)
from recipes.motus.experts import ActionExpert, UnderstandingExpert
from recipes.motus.model import Motus


def build_motus(config: ModelConfig) -> Motus:
    video = build_video_expert(config)
    width = video.config.num_attention_heads * video.config.attention_head_dim
    shared = dict(num_layers=video.config.num_layers, attention_dim=width,
                  num_heads=video.config.num_attention_heads, eps=config.eps)
    action = ActionExpert(dim=config.action.dim, ffn_dim=config.action.dim * config.action.ffn_multiplier,
                          state_dim=config.action.state_dim, action_dim=config.action.action_dim,
                          chunk_size=config.frames.action_chunk, num_registers=config.action.num_registers,
                          freq_dim=video.config.freq_dim, **shared)
    understanding = UnderstandingExpert(
        dim=config.understanding.dim, ffn_dim=config.understanding.dim * config.understanding.ffn_multiplier,
        vlm_dim=vlm_hidden_size(config), **shared)
    return Motus(video, action, understanding)


def build_video_expert(config: ModelConfig) -> WanTransformer3DModel:
    if config.video.pretrained_path and not _on_meta():
        return WanTransformer3DModel.from_pretrained(config.video.pretrained_path, subfolder="transformer")
    return WanTransformer3DModel(**config.video.transformer)


def build_vae(config: ModelConfig) -> AutoencoderKLWan:
    if config.video.pretrained_path and not _on_meta():
        return AutoencoderKLWan.from_pretrained(config.video.pretrained_path, subfolder="vae")
    return AutoencoderKLWan(**config.video.vae)


def build_vlm(config: ModelConfig):
    """The Qwen3-VL backbone (vision tower + language model, without the LM head's own weights: they are tied)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLModel

    if config.vlm.pretrained_path and not _on_meta():
        return Qwen3VLForConditionalGeneration.from_pretrained(config.vlm.pretrained_path, dtype=torch.bfloat16).model
    vlm_config = Qwen3VLConfig.from_pretrained(config.vlm.pretrained_path) if config.vlm.pretrained_path \
        else Qwen3VLConfig(**copy.deepcopy(config.vlm.architecture))  # transformers fills its dicts in place: the recipe stays as given
    return Qwen3VLModel(vlm_config)


def vlm_hidden_size(config: ModelConfig) -> int:
    if config.vlm.architecture is not None:
        return int(config.vlm.architecture["text_config"]["hidden_size"])
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig.from_pretrained(config.vlm.pretrained_path).text_config.hidden_size


@dataclass
class Encoders:
    video: VideoAutoencoder
    text: HashingTextEmbedder | Umt5TextEmbedder
    understanding: UnderstandingFeatures | None  # None when the stage does not use the understanding expert

    def inputs(self, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
        """A collated batch -> the keyword arguments of `schedule.training_loss` (all on `device`)."""
        inputs = {"latents": self.video.encode(batch["frames"]).to(device),
                  "text": self.text(batch["instruction"]).to(device)}
        for name in ("actions", "action_mask", "state"):
            if name in batch:
                inputs[name] = batch[name].to(device)
        if self.understanding is not None:
            features, mask = self.understanding(batch["frames"][:, 0], batch["instruction"])
            inputs["und_features"], inputs["und_mask"] = features.to(device), mask.to(device)
        return inputs


def build_encoders(config: ModelConfig, device: torch.device | str = "cpu", with_vlm: bool = True,
                   seed: int = 0) -> Encoders:
    """The frozen encoders; random-init ones (tiny config) are seeded so every process builds the same ones."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = build_vae(config).to(device)
        understanding = _understanding(config, device) if with_vlm else None
    return Encoders(VideoAutoencoder(vae), _text_encoder(config, device), understanding)


def _text_encoder(config: ModelConfig, device) -> HashingTextEmbedder | Umt5TextEmbedder:
    text_dim = config.video.transformer["text_dim"]
    if config.text.encoder == "hashing":
        return HashingTextEmbedder(text_dim, config.text.max_tokens)
    path = config.text.pretrained_path or config.video.pretrained_path
    if not path:
        raise ValueError("model.text: the umt5 encoder needs text.pretrained_path or video.pretrained_path")
    return Umt5TextEmbedder(Path(path), config.text.max_tokens, device)


def _understanding(config: ModelConfig, device) -> UnderstandingFeatures:
    vlm = build_vlm(config).to(device)
    if config.vlm.tokenizer == "processor":
        if not config.vlm.pretrained_path:
            raise ValueError("model.vlm: tokenizer 'processor' needs pretrained_path ('hashing' suits a random VLM)")
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(config.vlm.pretrained_path, max_pixels=config.vlm.image_max_pixels)
        return UnderstandingFeatures(vlm, processor=processor)
    from transformers import Qwen2VLImageProcessor

    vision = vlm.config.vision_config
    image_processor = Qwen2VLImageProcessor(
        patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
        temporal_patch_size=vision.temporal_patch_size, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        min_pixels=(vision.patch_size * vision.spatial_merge_size) ** 2, max_pixels=config.vlm.image_max_pixels)
    return UnderstandingFeatures(vlm, image_processor=image_processor,
                                 tokenizer=HashingTokenizer(vlm.config.text_config.vocab_size - 16))


def _on_meta() -> bool:
    return torch.empty(0).device.type == "meta"
