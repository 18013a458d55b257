"""Motus: a mixture of three transformers (video, action, understanding) sharing one attention per layer.

Every layer: each expert normalises its own tokens and projects them to the video expert's
attention width; one self-attention runs over the concatenated [video | action | understanding]
tokens; each expert projects its share back, adds its residual and runs its own feed-forward
network. The video expert also cross-attends to the text embeddings. The video expert is the Wan 2.2
transformer from diffusers, used block by block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from torch import nn

from recipes.motus import schedule
from recipes.motus.experts import ActionExpert, UnderstandingExpert, modulate


@dataclass
class Velocities:
    video: torch.Tensor  # [B, C, F, H, W] latent velocity
    actions: torch.Tensor | None  # [B, T, Da]


class Motus(nn.Module):
    def __init__(self, video: WanTransformer3DModel, action: ActionExpert, understanding: UnderstandingExpert):
        super().__init__()
        self.video, self.action, self.understanding = video, action, understanding
        if not (len(video.blocks) == len(action.blocks) == len(understanding.blocks)):
            raise ValueError("the three experts must have the same number of layers")

    def forward(
        self,
        video_latents: torch.Tensor,  # [B, C, F, H, W], frame 0 is the (clean) condition frame
        video_t: torch.Tensor,  # [B, F] in [0, 1]; per latent frame, so the condition frame can sit at 0
        text: torch.Tensor,  # [B, Lt, text_dim] text-encoder embeddings
        actions: torch.Tensor | None = None,  # [B, T, Da] noisy actions; None runs the video expert alone
        action_t: torch.Tensor | None = None,  # [B] in [0, 1]
        state: torch.Tensor | None = None,  # [B, Ds]
        und_features: torch.Tensor | None = None,  # [B, Lu, vlm_dim] frozen VLM features
        und_mask: torch.Tensor | None = None,  # [B, Lu] bool, False at padding
    ) -> Velocities:
        video, v_emb, v_proj, text, rotary = self._video_inputs(video_latents, video_t, text)
        action = a_emb = a_proj = und = None
        if actions is not None:
            action = self.action.tokens(state, actions)
            a_emb, a_proj = self.action.timestep_embedding(action_t)
        if und_features is not None:
            und = self.understanding.tokens(und_features)
        key_mask = self._key_mask(video, action, und, und_mask)
        last = len(self.video.blocks) - 1

        for layer, vb in enumerate(self.video.blocks):
            ab, ub = self.action.blocks[layer], self.understanding.blocks[layer]
            v_mod = [m.squeeze(2) for m in (vb.scale_shift_table.unsqueeze(0) + v_proj.float()).chunk(6, dim=2)]
            a_mod = ab.adaln(a_proj) if action is not None else None  # both: shift, scale, gate (attn, then FFN)

            # 1. Tri-model joint self-attention: each expert brings its own q, k, v at the shared width.
            sides = [_video_qkv(vb, video, v_mod, rotary)]
            sides += [ab.qkv(action, a_mod)] if action is not None else []
            sides += [ub.qkv(und, None)] if und is not None else []
            q, k, val = (torch.cat(parts, dim=1) for parts in zip(*sides))
            attended = _attention(q, k, val, key_mask).split([side[0].shape[1] for side in sides], dim=1)
            video = (video.float() + vb.attn1.to_out[0](attended[0].flatten(2)) * v_mod[2]).type_as(video)
            if action is not None:
                action = ab.attention_residual(action, attended[1], a_mod)
            if und is not None and layer < last:  # after the last layer nothing reads the understanding tokens
                und = ub.attention_residual(und, attended[-1], None)

            # 2. The video expert alone cross-attends to the text.
            video = video + vb.attn2(vb.norm2(video.float()).type_as(video), text, None, None)

            # 3. Each expert's own feed-forward network.
            ffn_in = modulate(vb.norm3, video, v_mod[3], v_mod[4])
            video = (video.float() + vb.ffn(ffn_in).float() * v_mod[5]).type_as(video)
            if action is not None:
                action = ab.ffn_residual(action, a_mod)
            if und is not None and layer < last:
                und = ub.ffn_residual(und, None)

        video_velocity = self._video_output(video, v_emb, video_latents.shape)
        if action is None:
            return Velocities(video_velocity, None)
        return Velocities(video_velocity, self.action.decode(action, a_emb, actions.shape[1], state is not None))

    def predict(self, mode: schedule.Mode | str, condition_latents: torch.Tensor, num_latent_frames: int,
                text: torch.Tensor, **kwargs) -> schedule.Prediction:
        """Sample in one of the five modes (vla, vgm, world_model, idm, joint); see `schedule.predict`."""
        return schedule.predict(self, mode, condition_latents, num_latent_frames, text, **kwargs)

    def _video_inputs(self, latents: torch.Tensor, video_t: torch.Tensor, text: torch.Tensor):
        """Patchify, per-token timestep embedding (Wan 2.2 TI2V style) and text projection."""
        wan = self.video
        rotary = wan.rope(latents)
        tokens = wan.patch_embedding(latents).flatten(2).transpose(1, 2).contiguous()
        tokens_per_frame = tokens.shape[1] // latents.shape[2]
        timestep = (video_t * 1000).repeat_interleave(tokens_per_frame, dim=1)  # [B, L]
        embedding, projection, text, _ = wan.condition_embedder(
            timestep.flatten(), text, None, timestep_seq_len=timestep.shape[1])
        return tokens, embedding, projection.unflatten(2, (6, -1)), text, rotary

    def _video_output(self, tokens: torch.Tensor, embedding: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        wan = self.video
        shift, scale = (wan.scale_shift_table.unsqueeze(0) + embedding.unsqueeze(2)).chunk(2, dim=2)
        out = wan.proj_out(modulate(wan.norm_out, tokens, shift.squeeze(2), scale.squeeze(2)))
        batch, _, frames, height, width = shape
        p_t, p_h, p_w = wan.config.patch_size
        out = out.reshape(batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    @staticmethod
    def _key_mask(v, a, u, und_mask) -> torch.Tensor | None:
        if u is None or und_mask is None or bool(und_mask.all()):
            return None
        batch = v.shape[0]
        ones = [torch.ones(batch, x.shape[1], dtype=torch.bool, device=v.device) for x in (v, a) if x is not None]
        return torch.cat([*ones, und_mask.bool()], dim=1)[:, None, None, :]  # [B, 1, 1, L]: padding is never a key


def _video_qkv(block, tokens: torch.Tensor, mod, rotary):
    attn = block.attn1
    normed = modulate(block.norm1, tokens, mod[0], mod[1])
    heads = (attn.heads, -1)
    q = attn.norm_q(attn.to_q(normed)).unflatten(2, heads)
    k = attn.norm_k(attn.to_k(normed)).unflatten(2, heads)
    v = attn.to_v(normed).unflatten(2, heads)
    return _rotate(q, *rotary), _rotate(k, *rotary), v


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's 3D rotary embedding on interleaved pairs; only video tokens have a (t, h, w) position."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2].float(), sin[..., 1::2].float()
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)


def _attention(q, k, v, key_mask) -> torch.Tensor:
    """[B, L, heads, d] in, [B, L, heads, d] out."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=key_mask)
    return out.transpose(1, 2)
