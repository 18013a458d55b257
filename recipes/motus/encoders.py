"""The frozen encoders around Motus: the Wan VAE (frames <-> latents), the text encoder and the VLM.

None of them is trained; each turns a batch of raw inputs into the tensors `Motus.forward` takes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan


class VideoAutoencoder:
    """uint8 RGB frames [B, T, H, W, 3] <-> normalised latents [B, C, 1 + T'/4, H/s, W/s] (posterior mode)."""

    def __init__(self, vae: AutoencoderKLWan):
        self.vae = vae.eval().requires_grad_(False)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        self.mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(shape)
        self.std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(shape)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        device, dtype = self._device_dtype()
        pixels = frames.to(device).permute(0, 4, 1, 2, 3).to(dtype) / 127.5 - 1.0
        latents = self.vae.encode(pixels).latent_dist.mode().float()
        return (latents - self.mean.to(device)) / self.std.to(device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        device, dtype = self._device_dtype()
        latents = latents.float().to(device) * self.std.to(device) + self.mean.to(device)
        pixels = self.vae.decode(latents.to(dtype)).sample.float()
        return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)

    def _device_dtype(self):
        parameter = next(self.vae.parameters())
        return parameter.device, parameter.dtype


class HashingTextEmbedder:
    """Not a language model: each lower-cased word maps to a fixed random vector seeded by the word's hash.

    Used by the tiny config and tests so that different instructions give different, repeatable
    embeddings without any checkpoint. Output [B, max_tokens, dim], zero past the last word.
    """

    def __init__(self, dim: int, max_tokens: int):
        self.dim, self.max_tokens = dim, max_tokens

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.max_tokens, self.dim)
        for row, text in enumerate(texts):
            for column, word in enumerate(text.lower().split()[: self.max_tokens]):
                out[row, column] = torch.from_numpy(self._vector(word))
        return out

    def _vector(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)


class Umt5TextEmbedder:
    """Wan's text encoder (UMT5-XXL) from a local diffusers directory; padding positions are zeroed, as Wan does."""

    def __init__(self, path: str | Path, max_tokens: int, device: torch.device | str = "cpu"):
        from transformers import AutoTokenizer, UMT5EncoderModel

        path = Path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(_subfolder(path, "tokenizer"))
        self.model = UMT5EncoderModel.from_pretrained(_subfolder(path, "text_encoder"), dtype=torch.bfloat16)
        self.model.to(device).eval().requires_grad_(False)
        self.max_tokens = max_tokens
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            device = next(self.model.parameters()).device
            tokens = self.tokenizer(missing, padding="max_length", max_length=self.max_tokens, truncation=True,
                                    return_tensors="pt").to(device)
            hidden = self.model(tokens.input_ids, tokens.attention_mask).last_hidden_state.float()
            hidden = hidden * tokens.attention_mask[..., None]
            for text, row in zip(missing, hidden.cpu()):
                self.cache[text] = row
        return torch.stack([self.cache[t] for t in texts])

    @torch.no_grad()
    def sequences(self, texts: list[str]) -> list[torch.Tensor]:
        """One [tokens, dim] tensor per text, cut at its last token, in the model's dtype (what Wan's T5 encoder returns)."""
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.max_tokens, truncation=True,
                                return_tensors="pt").to(device)
        hidden = self.model(tokens.input_ids, tokens.attention_mask).last_hidden_state
        lengths = tokens.attention_mask.sum(dim=1).tolist()
        return [row[:length].cpu().clone() for row, length in zip(hidden, lengths)]


class HashingTokenizer:
    """Not a trained tokenizer: each lower-cased word maps to an id by hash, below the VLM's special ids."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, text: str) -> list[int]:
        digest = lambda word: int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
        return [digest(word) % self.vocab_size for word in text.lower().split()]


class UnderstandingFeatures:
    """Last hidden states of a frozen Qwen3-VL reading the condition frame and the instruction.

    With a checkpoint's processor the prompt is its chat template; with the hashing tokenizer (tiny
    config) it is [vision start, image tokens, vision end, word ids]. Returns features [B, L, D] and
    a mask [B, L] that is False at right padding.
    """

    def __init__(self, model, processor=None, image_processor=None, tokenizer: HashingTokenizer | None = None):
        self.model = model.eval().requires_grad_(False)
        self.processor, self.image_processor, self.tokenizer = processor, image_processor, tokenizer

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self._processor_inputs(images, texts) if self.processor else self._hashed_inputs(images, texts)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        hidden = self.model(**inputs).last_hidden_state.float()
        return hidden, inputs["attention_mask"].bool()

    def _processor_inputs(self, images: torch.Tensor, texts: list[str]) -> dict:
        messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
                    for text in texts]
        # with the assistant's turn opened, as Motus's utils/vlm_utils.py asks its processor
        prompts = [self.processor.apply_chat_template(m, add_generation_prompt=True) for m in messages]
        inputs = self.processor(text=prompts, images=list(images.numpy()), padding=True, return_tensors="pt")
        return {k: v for k, v in inputs.items() if k in _MODEL_INPUTS}

    def _hashed_inputs(self, images: torch.Tensor, texts: list[str]) -> dict:
        config = self.model.config
        vision = self.image_processor(images=list(images.numpy()), return_tensors="pt")
        merge = config.vision_config.spatial_merge_size ** 2
        rows = []
        for grid, text in zip(vision["image_grid_thw"], texts):
            image_tokens = [config.image_token_id] * (int(grid.prod()) // merge)
            vision_tokens = [config.vision_start_token_id, *image_tokens, config.vision_end_token_id]
            rows.append(vision_tokens + self.tokenizer(text))
        length = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [0] * (length - len(r)) for r in rows])
        attention_mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": vision["pixel_values"],
                "image_grid_thw": vision["image_grid_thw"],
                "mm_token_type_ids": (input_ids == config.image_token_id).int()}


_MODEL_INPUTS = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}


def _subfolder(path: Path, name: str) -> Path:
    return path / name if (path / name).is_dir() else path
