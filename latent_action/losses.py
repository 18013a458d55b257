"""The training objective: reconstruction + lambda_a * ||a_real - z||^2 (labelled pairs only) + beta * KL.

Defaults and why:
- `motion_weight = 10`: a flow image is mostly white (no motion); under a plain mean the few moving
  pixels are about a percent of the loss, so a blank image is already a near-perfect answer. Each
  pixel's squared error is weighted by 1 + motion_weight * (how far its colour is from white, 0..1)
  and the weighted mean is taken, so the loss keeps the scale of a mean squared error.
- `beta = 1e-4`: the reconstruction term is a per-pixel mean while the KL is summed over 14 dims, so
  at beta ~ 1 the KL would outweigh reconstruction and pull every latent to the prior (posterior
  collapse); a small beta keeps z informative and only regularises its scale.
- `lambda_a = 1.0`: normalised actions live in [-1, 1], so ||a_real - z||^2 is O(1) per labelled pair.
  It is averaged over the whole batch (unlabelled pairs add zero), so its pull grows with the
  labelled fraction: about 0.1 per pair at the paper's 90/10 mix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_LAMBDA_A = 1.0
DEFAULT_BETA = 1e-4
DEFAULT_MOTION_WEIGHT = 10.0


@dataclass
class LossTerms:
    total: torch.Tensor
    reconstruction: torch.Tensor
    alignment: torch.Tensor
    kl: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {name: float(getattr(self, name).detach()) for name in ("total", "reconstruction", "alignment", "kl")}


def reconstruction_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, motion: torch.Tensor | None = None, motion_weight: float = DEFAULT_MOTION_WEIGHT
) -> torch.Tensor:
    """Squared error of the flow image ([B, 3, H, W]), weighted towards moving pixels.

    `motion` [B, 1, H, W] in [0, 1] says how far each target pixel is from white (no motion), see
    `images.distance_from_white`; without it, or with motion_weight = 0, this is the plain mean squared error.
    """
    squared = torch.square(reconstruction.float() - target.float())
    if motion is None or motion_weight == 0:
        return squared.mean()
    weight = 1.0 + motion_weight * motion.float()
    return torch.sum(squared * weight) / (torch.sum(weight) * squared.shape[1])


def alignment_loss(z: torch.Tensor, action: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared distance between z and the normalised real action over the masked slots, averaged over the batch.

    Pairs without an action have an all-zero mask and contribute exactly zero.
    """
    return torch.sum(torch.square(z - action) * mask, dim=-1).mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dims, averaged over the batch; zero at the prior."""
    return torch.sum(0.5 * (torch.exp(logvar) + torch.square(mu) - 1.0 - logvar), dim=-1).mean()


def latent_action_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    z: torch.Tensor,
    action: torch.Tensor,
    mask: torch.Tensor,
    motion: torch.Tensor | None = None,
    lambda_a: float = DEFAULT_LAMBDA_A,
    beta: float = DEFAULT_BETA,
    motion_weight: float = DEFAULT_MOTION_WEIGHT,
) -> LossTerms:
    recon = reconstruction_loss(reconstruction, target, motion, motion_weight)
    align = alignment_loss(z, action, mask)
    kl = kl_divergence(mu, logvar)
    return LossTerms(recon + lambda_a * align + beta * kl, recon, align, kl)
