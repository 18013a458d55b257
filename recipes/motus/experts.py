"""The action and understanding experts: their own per-layer weights, joined to the video expert's attention.

Each expert keeps its tokens at its own width and owns, per layer, the projections into the video
expert's attention width (query, key, value) and back (output), its norms and its feed-forward
network. `recipes.motus.model` runs the shared attention over all three token sets.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def mlp3x_silu(in_dim: int, out_dim: int) -> nn.Sequential:
    """The projector Motus uses for the VLM adapter and the state/action encoders."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim), nn.SiLU(),
                         nn.Linear(out_dim, out_dim))


def sinusoidal_embedding(values: torch.Tensor, dim: int) -> torch.Tensor:
    """[...] float -> [..., dim] (cos, sin) embedding, computed in float32."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    angles = values.float()[..., None] * frequencies
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def modulate(norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: normalise in float32, then scale and shift from the timestep embedding."""
    return (norm(x.float()) * (1 + scale) + shift).type_as(x)


class ExpertBlock(nn.Module):
    """One layer of an expert. With `adaln` its norms are modulated by its own timestep (action expert);
    without, they are plain affine LayerNorms (understanding expert, whose tokens are never noised)."""

    def __init__(self, dim: int, ffn_dim: int, attention_dim: int, num_heads: int, eps: float, adaln: bool):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=not adaln)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=not adaln)
        self.to_qkv = nn.Linear(dim, 3 * attention_dim, bias=False)
        self.norm_q = nn.RMSNorm(attention_dim, eps=eps)
        self.norm_k = nn.RMSNorm(attention_dim, eps=eps)
        self.to_out = nn.Linear(attention_dim, dim, bias=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5) if adaln else None

    def adaln(self, time_projection: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[B, 6, dim] -> six [B, 1, dim]: attention shift, scale, gate; FFN shift, scale, gate."""
        return tuple(m for m in (self.modulation + time_projection.float()).unsqueeze(2).unbind(1))

    def qkv(self, x: torch.Tensor, mod: tuple | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens [B, L, dim] -> query, key, value [B, L, heads, head_dim] at the attention width."""
        normed = modulate(self.norm1, x, mod[0], mod[1]) if mod is not None else self.norm1(x)
        q, k, v = self.to_qkv(normed).chunk(3, dim=-1)
        heads = (self.num_heads, -1)
        return self.norm_q(q).unflatten(2, heads), self.norm_k(k).unflatten(2, heads), v.unflatten(2, heads)

    def attention_residual(self, x: torch.Tensor, attended: torch.Tensor, mod: tuple | None) -> torch.Tensor:
        out = self.to_out(attended.flatten(2))
        return x + (out * mod[2] if mod is not None else out).type_as(x)

    def ffn_residual(self, x: torch.Tensor, mod: tuple | None) -> torch.Tensor:
        if mod is None:
            return x + self.ffn(self.norm2(x))
        return (x.float() + self.ffn(modulate(self.norm2, x, mod[3], mod[4])).float() * mod[5]).type_as(x)


class ActionExpert(ModelMixin, ConfigMixin):
    """Tokens for the robot state and a noisy action chunk, AdaLN-conditioned on the action timestep."""

    @register_to_config
    def __init__(
        self,
        num_layers: int = 30,
        dim: int = 1024,
        ffn_dim: int = 4096,
        attention_dim: int = 3072,
        num_heads: int = 24,
        state_dim: int = 14,
        action_dim: int = 14,
        chunk_size: int = 48,
        num_registers: int = 4,
        freq_dim: int = 256,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.state_encoder = mlp3x_silu(state_dim, dim)
        self.action_encoder = mlp3x_silu(action_dim, dim)
        self.registers = nn.Parameter(torch.randn(1, num_registers, dim) * 0.02)
        positions = sinusoidal_embedding(torch.arange(1 + chunk_size + num_registers), dim)
        self.register_buffer("positions", positions[None], persistent=False)
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(
            ExpertBlock(dim, ffn_dim, attention_dim, num_heads, eps, adaln=True) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.out_modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, action_dim)

    def tokens(self, state: torch.Tensor | None, actions: torch.Tensor) -> torch.Tensor:
        """[B, Ds] state (or None) and [B, T, Da] actions -> [B, (1) + T + registers, dim] tokens."""
        parts = [self.state_encoder(state)[:, None]] if state is not None else []
        parts += [self.action_encoder(actions), self.registers.expand(actions.shape[0], -1, -1).to(actions.dtype)]
        tokens = torch.cat(parts, dim=1)
        return tokens + self.positions[:, : tokens.shape[1]].to(tokens.dtype)

    def timestep_embedding(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B] in [0, 1] -> embedding [B, dim] (for the output norm) and AdaLN parameters [B, 6, dim]."""
        embedding = self.time_embedding(sinusoidal_embedding(t * 1000, self.config.freq_dim))
        return embedding, self.time_projection(embedding).unflatten(1, (6, -1))

    def decode(self, tokens: torch.Tensor, embedding: torch.Tensor, num_actions: int, has_state: bool) -> torch.Tensor:
        """Final AdaLN norm and projection; keeps the action positions only (drops state and registers)."""
        shift, scale = (self.out_modulation + embedding[:, None].float()).unsqueeze(2).unbind(1)
        out = self.proj_out(modulate(self.norm_out, tokens, shift, scale))
        start = 1 if has_state else 0
        return out[:, start : start + num_actions]


class UnderstandingExpert(ModelMixin, ConfigMixin):
    """Adapts frozen VLM features to its own width; they take part in attention but are never noised."""

    @register_to_config
    def __init__(
        self,
        num_layers: int = 30,
        dim: int = 512,
        ffn_dim: int = 2048,
        attention_dim: int = 3072,
        num_heads: int = 24,
        vlm_dim: int = 2048,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.adapter = mlp3x_silu(vlm_dim, dim)
        self.blocks = nn.ModuleList(
            ExpertBlock(dim, ffn_dim, attention_dim, num_heads, eps, adaln=False) for _ in range(num_layers))

    def tokens(self, vlm_features: torch.Tensor) -> torch.Tensor:
        return self.adapter(vlm_features)

    def idle_parameters(self) -> list[nn.Parameter]:
        """The last block's output projection and FFN: their result would feed nothing, so they are skipped
        (kept only so the parameter count and checkpoints match the paper's layout)."""
        last = self.blocks[-1]
        return [*last.to_out.parameters(), *last.norm2.parameters(), *last.ffn.parameters()]
