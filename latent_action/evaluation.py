"""`pyramid eval-latents`: how well latent actions encode real actions, and how well the VAE reconstructs flow.

The probe is a ridge regression from mu to the pair's real action, per embodiment. With split
"heldout" it is fit on the episodes the VAE trained on and scored (R^2) on the episodes it held out;
with split "all" it is scored by k-fold cross-validation over whole episodes. Flow end-point error
of the reconstruction (stored-size pixels) and latent statistics come from the scored episodes.
Written as `eval.json`, PNG plots, and a `report.html` that shows them together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from latent_action.action_space import selected_dims
from latent_action.checkpoint import load_trained
from latent_action.eval_report import write_eval_report
from latent_action.images import resize_images, to_uint8
from latent_action.labelling import encode_flow_rgb, label_episode
from latent_action.model import LatentActionVAE
from latent_action.pairs import episode_flows, flow_to_rgb, pair_action, read_episodes, rgb_to_flow
from latent_action.plots import plot_latent_histograms, plot_probe, write_preview
from latent_action.probe import DEFAULT_ALPHA, cross_validated_predictions, fit_ridge, mean_r2, r2_per_dim
from latent_action.train import resolve_device
from pyramid.stats import RunningStats

MOVING_PX = 1.0  # pixels whose input flow is longer than this count as moving for `epe_moving_px`
PREVIEW_PAIRS = 8


@dataclass
class EmbodimentData:
    names: list[str]
    dims: list[int]
    latents: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    episodes: list[str] = field(default_factory=list)
    scored: list[bool] = field(default_factory=list)  # per pair: R^2 is measured on it (else only fits the probe)


@dataclass
class FlowErrors:
    """Running sums of end-point errors, over all pixels and over moving pixels.

    The `*_blank_px` figures are the errors of a reconstruction with no motion at all: a decoder
    has learned something only where it beats them (flow images are mostly still background).
    """

    total: float = 0.0
    pixels: int = 0
    moving_total: float = 0.0
    moving_pixels: int = 0
    blank_total: float = 0.0
    blank_moving_total: float = 0.0
    roundtrip_total: float = 0.0

    def add(self, reference: np.ndarray, reconstructed: np.ndarray, true_flow: np.ndarray) -> None:
        error = np.linalg.norm(reconstructed - reference, axis=-1)
        length = np.linalg.norm(reference, axis=-1)
        moving = length > MOVING_PX
        self.total += float(error.sum())
        self.pixels += error.size
        self.moving_total += float(error[moving].sum())
        self.moving_pixels += int(moving.sum())
        self.blank_total += float(length.sum())
        self.blank_moving_total += float(length[moving].sum())
        self.roundtrip_total += float(np.linalg.norm(reference - true_flow, axis=-1).sum())

    def summary(self) -> dict[str, float | None]:
        def mean(total: float, count: int) -> float | None:
            return total / count if count else None

        return {
            "epe_px": mean(self.total, self.pixels),
            "epe_moving_px": mean(self.moving_total, self.moving_pixels),
            "epe_blank_px": mean(self.blank_total, self.pixels),
            "epe_moving_blank_px": mean(self.blank_moving_total, self.moving_pixels),
            "moving_pixel_fraction": mean(self.moving_pixels, self.pixels),
            "flow_rgb_roundtrip_epe_px": mean(self.roundtrip_total, self.pixels),
        }


def evaluate_latents(
    checkpoint: str | Path,
    data_root: str | Path,
    out_dir: str | Path,
    kind: str | None = None,
    split: str = "heldout",
    alpha: float = DEFAULT_ALPHA,
    device: str = "auto",
    echo: Callable[[str], None] = print,
) -> dict:
    """Evaluate and write `<out_dir>/eval.json` plus plots; return the JSON content."""
    if split not in ("heldout", "all"):
        raise ValueError(f"split must be 'heldout' or 'all', got {split!r}")
    out_dir = Path(out_dir)
    vae, _, heldout = load_trained(checkpoint, resolve_device(device))
    per_embodiment: dict[str, EmbodimentData] = {}
    errors, stats = FlowErrors(), RunningStats(vae.config.action_dim)
    previews: list[tuple[float, np.ndarray, np.ndarray]] = []
    skipped: dict[str, str] = {}
    for episode in read_episodes(data_root, kind):
        if isinstance(episode, Exception):
            skipped[episode.path] = str(episode)
            echo(f"skipped: {episode}")
            continue
        if pair_action(episode, 0) is None:
            continue
        scored = split == "all" or episode.episode_id in heldout
        if scored:
            latents = _evaluate_episode(vae, episode, errors, previews)
            stats.update(latents)
        else:
            latents = label_episode(vae, episode)
        _collect(per_embodiment, episode, latents, scored)
    if not any(any(d.scored) for d in per_embodiment.values()):
        raise ValueError(f"{data_root}: none of the {len(heldout)} episodes the checkpoint held out is here; try --split all")
    result = {
        "checkpoint": str(checkpoint), "data": str(data_root), "split": split, "alpha": alpha,
        "probe": _probe_report(per_embodiment, alpha, out_dir),
        "flow": errors.summary(),
        "latent_stats": stats.summary(),
        "skipped": skipped,
    }
    scored_latents = [latents for d in per_embodiment.values() for latents, s in zip(d.latents, d.scored) if s]
    plot_latent_histograms(out_dir / "latent_histograms.png", np.concatenate(scored_latents))
    write_preview(out_dir / "flow_preview.png", np.stack([p[1] for p in previews]), np.stack([p[2] for p in previews]))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2))
    write_eval_report(out_dir, result)
    return result


@torch.no_grad()
def _evaluate_episode(vae: LatentActionVAE, episode, errors: FlowErrors, previews: list) -> np.ndarray:
    config = vae.config
    device = next(vae.parameters()).device
    chunks = []
    for flows in episode_flows(episode, config.frame_height, config.frame_width, config.flow_backend):
        rgb = flow_to_rgb(flows, config.flow_max_magnitude)
        mu = encode_flow_rgb(vae, rgb)
        recon_rgb = to_uint8(vae.decode(torch.from_numpy(mu).to(device)), config.input_encoding)
        reference = rgb_to_flow(rgb, config.flow_max_magnitude)
        reconstructed = _upscale_flow(rgb_to_flow(recon_rgb, config.flow_max_magnitude), flows.shape[1:3])
        errors.add(reference, reconstructed, flows)
        _keep_preview(previews, rgb, recon_rgb, flows, config.image_size)
        chunks.append(mu)
    return np.concatenate(chunks)


def _upscale_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a flow field to `size` without rescaling vectors: flow-RGB already encodes stored-size pixels."""
    height, width = size
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in flow])


def _keep_preview(previews: list, rgb: np.ndarray, recon_rgb: np.ndarray, flows: np.ndarray, image_size: int) -> None:
    """Keep the PREVIEW_PAIRS most moving pairs seen so far, at most half of them from one chunk."""
    motion = np.linalg.norm(flows, axis=-1).mean(axis=(1, 2))
    for best in np.argsort(-motion)[: max(1, PREVIEW_PAIRS // 2)]:
        shown = resize_images(rgb[best : best + 1], 2 * image_size, 2 * image_size)[0]
        recon = resize_images(recon_rgb[best : best + 1], 2 * image_size, 2 * image_size)[0]
        previews.append((float(motion[best]), shown, recon))
    previews.sort(key=lambda item: -item[0])
    del previews[PREVIEW_PAIRS:]


def _collect(per_embodiment: dict[str, EmbodimentData], episode, latents: np.ndarray, scored: bool) -> None:
    dims = selected_dims(episode.embodiment, episode.action_names, episode.action_dim)
    names = [episode.action_names[d] if d < len(episode.action_names) else f"a{d}" for d in dims]
    data = per_embodiment.setdefault(episode.embodiment, EmbodimentData(names, dims))
    count = min(len(latents), len(episode.actions))
    data.latents.append(latents[:count])
    data.actions.append(episode.actions[:count][:, data.dims])
    data.episodes.append(episode.episode_id)
    data.scored.append(scored)


def _probe_report(per_embodiment: dict[str, EmbodimentData], alpha: float, out_dir: Path) -> dict:
    report, residuals, shuffled_residuals = {}, [], []
    for embodiment, data in sorted(per_embodiment.items()):
        scored = _probe_embodiment(data, alpha)
        if scored is None:
            report[embodiment] = {"error": "needs two or more episodes with actions", "episodes": len(data.episodes)}
            continue
        truth, predicted, shuffled, summary = scored
        report[embodiment] = {**summary, "r2_per_dim": {n: (None if np.isnan(v) else float(v))
                                                        for n, v in zip(data.names, r2_per_dim(truth, predicted))}}
        residuals.append(_standardised(truth, predicted))
        shuffled_residuals.append(_standardised(truth, shuffled))
        plot_probe(out_dir / f"probe_{embodiment}.png", truth, predicted, data.names, f"{embodiment}: probe R^2 {summary['r2']:.3f}")
    overall = lambda parts: float(1.0 - np.mean(np.concatenate(parts))) if parts else None  # noqa: E731
    return {"overall_r2": overall(residuals), "overall_r2_shuffled_control": overall(shuffled_residuals),
            "per_embodiment": report}


def _probe_embodiment(data: EmbodimentData, alpha: float):
    """(truth, prediction, prediction of a probe fit on shuffled actions, summary) on the scored pairs, or None."""
    x, y = np.concatenate(data.latents), np.concatenate(data.actions)
    groups = np.concatenate([[i] * len(l) for i, l in enumerate(data.latents)])
    scored = np.concatenate([[s] * len(l) for s, l in zip(data.scored, data.latents)]).astype(bool)
    shuffled_y = y[np.random.default_rng(0).permutation(len(y))]
    if scored.all():  # split "all": every episode is scored by a probe fit on the other folds
        if len(data.latents) < 2:
            return None
        predicted = cross_validated_predictions(x, y, groups, alpha)
        shuffled = cross_validated_predictions(x, shuffled_y, groups, alpha)
        fit_episodes = len(data.latents)
    else:
        if not scored.any():
            return None
        predicted = fit_ridge(x[~scored], y[~scored], alpha).predict(x[scored])
        shuffled = fit_ridge(x[~scored], shuffled_y[~scored], alpha).predict(x[scored])
        x, y = x[scored], y[scored]
        fit_episodes = int(np.sum(~np.array(data.scored)))
    summary = {"r2": mean_r2(y, predicted), "r2_shuffled_control": mean_r2(y, shuffled),
               "scored_episodes": int(np.sum(data.scored)), "probe_fit_episodes": fit_episodes, "scored_pairs": int(len(y))}
    return y, predicted, shuffled, summary


def _standardised(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Squared residuals over each dim's variance (dims that never vary dropped): 1 - their mean is the mean R^2,
    so pooling them over embodiments gives an overall R^2 that weighs every (embodiment, dim, pair) the same."""
    variance = truth.var(0)
    varying = variance > 1e-12
    return (np.square(truth - predicted)[:, varying] / variance[varying]).ravel()
