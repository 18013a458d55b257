"""The PNG figures of training and evaluation: flow input vs reconstruction, probe fit, latent histograms, label curve."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pyramid.atomic import atomic_write


def write_preview(path: Path, inputs: np.ndarray, reconstructions: np.ndarray) -> Path:
    """A two-row image: input flow-RGB on top, reconstruction below (uint8 [N, H, W, 3] each)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    top, bottom = np.concatenate(list(inputs), axis=1), np.concatenate(list(reconstructions), axis=1)
    separator = np.zeros((2, top.shape[1], 3), np.uint8)
    grid = np.concatenate([top, separator, bottom], axis=0)
    atomic_write(path, lambda tmp: cv2.imwrite(str(tmp), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)))
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_probe(path: Path, truth: np.ndarray, predicted: np.ndarray, names: Sequence[str], title: str) -> Path:
    """Probe prediction vs true action, one panel per action dimension."""
    plt = _pyplot()
    dims = truth.shape[1]
    columns = min(dims, 4)
    rows = int(np.ceil(dims / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for d, axis in enumerate(axes.flat):
        if d >= dims:
            axis.axis("off")
            continue
        axis.scatter(truth[:, d], predicted[:, d], s=4, alpha=0.5)
        low, high = float(min(truth[:, d].min(), predicted[:, d].min())), float(max(truth[:, d].max(), predicted[:, d].max()))
        axis.plot([low, high], [low, high], color="gray", linewidth=0.8)
        axis.set_title(names[d] if d < len(names) else f"dim {d}", fontsize=9)
        axis.set_xlabel("true", fontsize=8)
        axis.set_ylabel("probe", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def plot_latent_histograms(path: Path, latents: np.ndarray) -> Path:
    plt = _pyplot()
    dims = latents.shape[1]
    figure, axes = plt.subplots(2, int(np.ceil(dims / 2)), figsize=(2.2 * np.ceil(dims / 2), 4.4), squeeze=False)
    for d, axis in enumerate(axes.flat):
        if d >= dims:
            axis.axis("off")
            continue
        axis.hist(latents[:, d], bins=40, color="tab:blue")
        axis.set_title(f"z[{d}]", fontsize=8)
        axis.tick_params(labelsize=6)
    figure.suptitle("latent action (mu) per dimension", fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def plot_label_curve(path: Path, shares: Sequence[float], latent: Sequence[float | None], baseline: Sequence[float | None]) -> Path:
    """Held-out probe R^2 against the share of labelled training pairs, with the flow-grid baseline."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.0, 3.4))
    percent = [100 * s for s in shares]
    axis.plot(percent, [np.nan if v is None else v for v in latent], marker="o", label="latent action probe")
    axis.plot(percent, [np.nan if v is None else v for v in baseline], marker="s", linestyle="--", color="gray",
              label="flow-grid baseline")
    axis.set_xscale("symlog", linthresh=1.0)
    axis.set_xticks(percent, [f"{p:g}%" for p in percent])
    axis.set_xlabel("training pairs with real actions")
    axis.set_ylabel("held-out probe R^2")
    axis.set_ylim(min(0.0, *[v for v in latent if v is not None]), 1.0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.suptitle("label efficiency", fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=90, format=path.suffix.lstrip(".")))
    _pyplot().close(figure)
    return path
