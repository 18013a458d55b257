"""`pyramid eval-latents`: how well latent actions encode real actions, and how well the VAE reconstructs flow.

Pairs are made as the VAE was trained (`FlowSettings.of_vae`): frames at its stored rate and size, flow
from stored frame t to t + stride, each pair's action the mean of the source actions it spans.

The probe is a ridge regression from mu to the pair's real action, per embodiment. With split
"heldout" it is fit on the episodes the VAE trained on and scored (R^2 per action dimension) on the
episodes it held out; with split "all" it is scored by k-fold cross-validation over whole episodes.
Beside it, on the same pairs and split:
- a shuffled-action control (a probe fit on permuted actions: what chance looks like);
- the naive baseline: the same ridge from the mean flow over a GRID x GRID grid of cells
  (2 * GRID^2 numbers per pair), which a latent action must beat to be worth more than averaged flow;
- when the episodes name several tasks, the probe across tasks: each task's scored episodes are
  predicted by a probe fit only on the other tasks' episodes.
Flow end-point error of the reconstruction (stored-size pixels) beside a blank (no-motion) image, and
latent statistics, come from the scored episodes. Written as `eval.json`, PNG plots, and `report.html`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from latent_action.action_space import selected_dims
from latent_action.checkpoint import load_holdout, load_trained, resolve_checkpoint
from latent_action.eval_report import (HISTOGRAM_FILE, PREVIEW_FILE, PROBE_PLOTS, REPORT_FILE, number,
                                        write_eval_report)
from latent_action.images import resize_images, to_uint8
from latent_action.labelling import LOCK_FILE, OUTPUT_BUSY, encode_flow_rgb, view_for
from latent_action.model import LatentActionVAE
from latent_action.pairs import (EPISODE_FAILURES, FlowSettings, SkippedEpisodes, UnreadableEpisode, episode_flows, episode_pair_actions,
                                 flow_to_rgb, read_episodes, rgb_to_flow)
from latent_action.plots import plot_latent_histograms, plot_probe, write_preview
from latent_action.probe import DEFAULT_ALPHA, cross_validated_predictions, fit_ridge, r2_per_dim
from latent_action.train import resolve_device
from pyramid.atomic import atomic_write_bytes, remove_temporaries
from pyramid.locks import exclusive
from pyramid.paths import file_name_of, overlap_problem
from pyramid.stats import RunningStats

MOVING_PX = 1.0  # pixels whose input flow is longer than this count as moving for `epe_moving_px`
PREVIEW_PAIRS = 8
EVAL_FILE = "eval.json"
GRID = 4  # the flow-grid baseline averages flow over GRID x GRID cells


@dataclass
class EpisodeRecord:
    episode_id: str
    task: str
    scored: bool  # R^2 is measured on it (else it only fits the probe)
    latents: np.ndarray  # [P, 14]
    grid: np.ndarray  # [P, 2 * GRID^2], the baseline's features
    actions: np.ndarray  # [P, len(dims)]


@dataclass
class EmbodimentData:
    names: list[str]
    dims: list[int]
    episodes: list[EpisodeRecord] = field(default_factory=list)

    def stacked(self, what: str, which: Sequence[EpisodeRecord] | None = None) -> np.ndarray:
        return np.concatenate([getattr(e, what) for e in (self.episodes if which is None else which)])


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

    def merge(self, other: "FlowErrors") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

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
    dims: Sequence[str] | None = None,
    cameras: str | None = None,
) -> dict:
    """Evaluate and write `<out_dir>/eval.json` plus plots; return the JSON content.

    `dims` restricts the probe's scores to the action dimensions of these names (default: every one that varies).
    """
    if split not in ("heldout", "all"):
        raise ValueError(f"split must be 'heldout' or 'all', got {split!r}")
    check_alpha(alpha)
    device = resolve_device(device)
    check_dims(dims, data_root, kind)
    out_dir = Path(out_dir)
    if problem := overlap_problem(out_dir, [data_root, checkpoint], "--out"):
        raise ValueError(problem)
    vae, _, heldout = load_trained(checkpoint, device)
    with exclusive(out_dir, LOCK_FILE, OUTPUT_BUSY):  # else plots of one, JSON of the other; or label's files removed
        return _evaluate(vae, heldout, checkpoint, data_root, out_dir, kind, split, alpha, echo, dims, cameras)


def _evaluate(vae: LatentActionVAE, heldout: set[str], checkpoint: str | Path, data_root: str | Path, out_dir: Path,
              kind: str | None, split: str, alpha: float, echo: Callable[[str], None], dims: Sequence[str] | None,
              cameras: str | None) -> dict:
    remove_temporaries(out_dir)  # what a killed run left: this run holds the lock
    held_by, unseen_tasks = load_holdout(resolve_checkpoint(checkpoint))
    settings = FlowSettings.of_vae(vae.config)
    view = view_for(vae.config, cameras)
    estimator = settings.estimator()
    per_embodiment: dict[str, EmbodimentData] = {}
    errors, stats = FlowErrors(), RunningStats(vae.config.action_dim)
    previews: list[tuple[float, np.ndarray, np.ndarray]] = []
    skipped = SkippedEpisodes(echo)
    for episode in read_episodes(data_root, kind):
        if isinstance(episode, UnreadableEpisode):
            skipped.add(episode)
            continue
        actions = episode_pair_actions(episode, settings)
        if actions is None or len(actions) == 0:
            continue
        scored = split == "all" or episode.episode_id in heldout or (episode.task or "") in unseen_tasks
        episode_errors, kept_previews = FlowErrors(), list(previews)  # counted only once the whole episode is read
        try:
            latents, grid = _evaluate_episode(vae, episode, settings, estimator, view, episode_errors if scored else None, kept_previews)
        except EPISODE_FAILURES as exc:  # its video, as the first read of it shows
            skipped.add(episode, exc)
            continue
        errors.merge(episode_errors)
        previews[:] = kept_previews
        if scored:
            stats.update(latents)
        _collect(per_embodiment, episode, latents, grid, actions, scored, dims)
    if not any(e.scored for d in per_embodiment.values() for e in d.episodes):
        raise ValueError(nothing_scored(data_root, split, heldout, per_embodiment, skipped))
    clear_previous_results(out_dir)
    result = {
        "checkpoint": str(checkpoint), "data": str(data_root), "split": split, "heldout_by": held_by, "alpha": alpha,
        "pairs": {"fps": settings.fps, "stride": settings.stride, "size": [settings.frame_height, settings.frame_width],
                  "backend": settings.backend, "resize": settings.fit, "cameras": view.as_option()},
        "probe": _probe_report(per_embodiment, alpha, out_dir, unseen_only=split == "heldout" and held_by == "tasks"),
        "flow": errors.summary(),
        "latent_stats": stats.summary(),
        "skipped": skipped,
    }
    scored_latents = [e.latents for d in per_embodiment.values() for e in d.episodes if e.scored]
    plot_latent_histograms(out_dir / HISTOGRAM_FILE, np.concatenate(scored_latents))
    write_preview(out_dir / PREVIEW_FILE, np.stack([p[1] for p in previews]), np.stack([p[2] for p in previews]))
    atomic_write_bytes(out_dir / EVAL_FILE, json.dumps(result, indent=2).encode())
    write_eval_report(out_dir, result)
    return result


def nothing_scored(data_root: str | Path, split: str, heldout: set[str], per_embodiment: dict, skipped: dict) -> str:
    """Why no episode was scored, in one line."""
    lost = [reason for episode_id, reason in skipped.items() if split == "all" or episode_id in heldout]
    if lost:
        return (f"{data_root}: no episode scored: the {len(lost)} {'' if split == 'all' else 'held-out '}episode(s) here "
                f"were skipped (the first: {lost[0]})")
    if per_embodiment and not heldout:
        return (f"{data_root}: the checkpoint held out no episode (holdout_fraction 0, or fewer than two labelled "
                "episodes to draw from); --split all scores every episode")
    if per_embodiment:
        return f"{data_root}: none of the {len(heldout)} episodes the checkpoint held out is here; try --split all"
    return f"{data_root}: no episode with actions to score the latent actions against"


def clear_previous_results(out_dir: Path) -> None:
    """Remove what an earlier evaluation wrote in `out_dir` (its probe plots are per embodiment), before this one writes:
    a run killed while writing then leaves no eval.json or report.html, rather than one over other plots."""
    for name in (REPORT_FILE, EVAL_FILE, PREVIEW_FILE, HISTOGRAM_FILE):
        (out_dir / name).unlink(missing_ok=True)
    for plot in out_dir.glob(PROBE_PLOTS):
        plot.unlink()


def check_alpha(alpha: float) -> None:
    # 0 is plain least squares, which has no solution when a feature never varies (a still cell of the flow grid).
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha (the probe's ridge penalty) must be a finite number > 0, got {alpha}")


def check_dims(wanted: Sequence[str] | None, data_root: str | Path, kind: str | None = None) -> None:
    """A ValueError naming the asked action dimensions that no episode under `data_root` has, and those it has."""
    if not wanted:
        return
    known = action_dimension_names(data_root, kind)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"{data_root}: no action dimension named {', '.join(map(repr, unknown))}; its episodes have "
                         + (", ".join(known) if known else "no actions"))


def action_dimension_names(data_root: str | Path, kind: str | None = None) -> list[str]:
    """The names of the action dimensions the probe can score, over every readable episode (episodes load lazily)."""
    names: dict[str, None] = {}
    for episode in read_episodes(data_root, kind):
        if not isinstance(episode, UnreadableEpisode):
            names.update(dict.fromkeys(_scorable_dims(episode)[1]))
    return list(names)


def _scorable_dims(episode) -> tuple[list[int], list[str]]:
    """(index, name) of each action dimension the probe scores: those the 14-D action space takes."""
    dims = selected_dims(episode.embodiment, episode.action_names, episode.action_dim)
    return dims, [episode.action_names[d] if d < len(episode.action_names) else f"a{d}" for d in dims]


@torch.no_grad()
def _evaluate_episode(vae: LatentActionVAE, episode, settings: FlowSettings, estimator, view, errors: "FlowErrors | None",
                      previews: list) -> tuple[np.ndarray, np.ndarray]:
    """(latents, flow-grid features) of every pair; for a scored episode also reconstruction errors and previews."""
    device = next(vae.parameters()).device
    latents, grids = [], []
    for flows in episode_flows(episode, settings, estimator, view):
        rgb = flow_to_rgb(flows, settings.max_magnitude)
        mu = encode_flow_rgb(vae, rgb)
        if errors is not None:
            recon_rgb = to_uint8(vae.decode(torch.from_numpy(mu).to(device)), vae.config.input_encoding)
            reference = rgb_to_flow(rgb, settings.max_magnitude)
            reconstructed = _upscale_flow(rgb_to_flow(recon_rgb, settings.max_magnitude), flows.shape[1:3])
            errors.add(reference, reconstructed, flows)
            _keep_preview(previews, rgb, recon_rgb, flows, vae.config.image_size)
        latents.append(mu)
        grids.append(flow_grid(flows))
    return np.concatenate(latents), np.concatenate(grids)


def flow_grid(flows: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Mean flow (u, v) in each of grid x grid cells: [N, H, W, 2] -> [N, 2 * grid^2]."""
    rows = np.array_split(np.arange(flows.shape[1]), grid)
    cols = np.array_split(np.arange(flows.shape[2]), grid)
    cells = [flows[:, r[0] : r[-1] + 1, c[0] : c[-1] + 1].mean(axis=(1, 2)) for r in rows for c in cols]
    return np.concatenate(cells, axis=1).astype(np.float32)


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


def _collect(per_embodiment: dict[str, EmbodimentData], episode, latents: np.ndarray, grid: np.ndarray,
             actions: np.ndarray, scored: bool, wanted: Sequence[str] | None) -> None:
    dims, names = _scorable_dims(episode)
    if wanted:
        dims, names = [d for d, n in zip(dims, names) if n in wanted], [n for n in names if n in wanted]
    data = per_embodiment.setdefault(episode.embodiment, EmbodimentData(names, dims))
    count = min(len(latents), len(actions))
    data.episodes.append(EpisodeRecord(episode.episode_id, episode.task or "", scored, latents[:count], grid[:count],
                                       actions[:count][:, data.dims]))


def _probe_report(per_embodiment: dict[str, EmbodimentData], alpha: float, out_dir: Path, unseen_only: bool = False) -> dict:
    """`unseen_only`: the scored episodes are of tasks the VAE never saw, and so must be those the probe is fit on."""
    report = {}
    pooled: dict[str, list[np.ndarray]] = {"latent": [], "shuffled": [], "flow_grid": []}
    plot_names: set[str] = set()
    for embodiment, data in sorted(per_embodiment.items()):
        if not data.dims:
            report[embodiment] = {"error": "none of the asked action dimensions is here", "episodes": len(data.episodes)}
            continue
        scored = _probe_embodiment(data, alpha, unseen_only)
        if isinstance(scored, str):
            report[embodiment] = {"error": scored, "episodes": len(data.episodes)}
            continue
        truth, predictions, summary = scored
        report[embodiment] = summary
        for name, predicted in predictions.items():
            pooled[name].append(_standardised(truth, predicted))
        plot_probe(out_dir / _plot_name(embodiment, plot_names), truth, predictions["latent"], data.names,
                   f"{embodiment}: probe R^2 {number(summary['r2'])} (flow-grid baseline {number(summary['flow_grid']['r2'])})")
    def overall(parts: list[np.ndarray]) -> float | None:  # None where no scored dimension varies (not NaN: not JSON)
        pooled_errors = np.concatenate(parts) if parts else np.empty(0)
        return float(1.0 - np.mean(pooled_errors)) if pooled_errors.size else None

    return {"overall_r2": overall(pooled["latent"]), "overall_r2_shuffled_control": overall(pooled["shuffled"]),
            "overall_r2_flow_grid": overall(pooled["flow_grid"]), "per_embodiment": report}


def _plot_name(embodiment: str, taken: set[str]) -> str:
    """probe_<embodiment>.png inside OUT whatever the dataset names its robot (`x/../../y` wrote outside it), one file
    per embodiment (`a b` and `a/b` both read `a_b`)."""
    stem = f"probe_{file_name_of(embodiment)}"
    name, number = f"{stem}.png", 0
    while name in taken:
        number += 1
        name = f"{stem}_{number}.png"
    taken.add(name)
    return name


def _probe_embodiment(data: EmbodimentData, alpha: float, unseen_only: bool = False):
    """(truth, {latent, shuffled, flow_grid: predictions}, summary) on the scored pairs, or why there is none.

    The VAE's held-out episodes are drawn over every embodiment's together, so one embodiment may have none of
    them (nothing to score) or only them (the probe is then fit across folds of them, as with split "all"; not
    where they are of tasks the VAE never saw, which the probe must not see either)."""
    scored = [e for e in data.episodes if e.scored]
    fit = [e for e in data.episodes if not e.scored]
    if fit and not scored:
        return ("none of its episodes with actions is among the VAE's held-out ones (drawn over every embodiment "
                "together); --split all scores every episode")
    if scored and not fit and unseen_only:
        return ("every episode of it is of a task the VAE never saw (holdout_by: tasks): no training episode to fit "
                "the probe on, and a probe fit on some of them would have seen their task; --split all scores them so")
    y = data.stacked("actions")
    shuffled_y = y[np.random.default_rng(0).permutation(len(y))]
    features = {"latent": data.stacked("latents"), "flow_grid": data.stacked("grid")}
    if not fit:  # split "all": every episode is scored by a probe fit on the other folds
        if len(data.episodes) < 2:
            return "needs two or more episodes with actions"
        groups = np.concatenate([[i] * len(e.actions) for i, e in enumerate(data.episodes)])
        predictions = {name: cross_validated_predictions(x, y, groups, alpha) for name, x in features.items()}
        predictions["shuffled"] = cross_validated_predictions(features["latent"], shuffled_y, groups, alpha)
        truth, fit_count = y, len(data.episodes)
    else:
        is_scored = np.concatenate([[e.scored] * len(e.actions) for e in data.episodes]).astype(bool)
        predictions = {name: fit_ridge(x[~is_scored], y[~is_scored], alpha).predict(x[is_scored]) for name, x in features.items()}
        predictions["shuffled"] = fit_ridge(features["latent"][~is_scored], shuffled_y[~is_scored], alpha).predict(features["latent"][is_scored])
        truth, fit_count = y[is_scored], len(fit)
    summary = {**_scores(truth, predictions["latent"], data.names),
               "r2_shuffled_control": _scores(truth, predictions["shuffled"], data.names)["r2"],
               "flow_grid": _scores(truth, predictions["flow_grid"], data.names),
               "scored_episodes": len(scored) if fit else len(data.episodes), "probe_fit_episodes": fit_count,
               "probe_fit_on": "the training episodes" if fit else "the other folds of the scored episodes, by episode",
               "scored_pairs": int(len(truth))}
    across = _across_tasks(data, alpha)
    if across is not None:
        summary["across_tasks"] = across
    return truth, predictions, summary


def _across_tasks(data: EmbodimentData, alpha: float) -> dict | None:
    """Each task's scored episodes predicted by probes fit on the other tasks' fit episodes; None with one task."""
    scored = [e for e in data.episodes if e.scored]
    fit = [e for e in data.episodes if not e.scored] or data.episodes
    tasks = sorted({e.task for e in scored})
    if len({e.task for e in fit}) < 2 or len(tasks) < 2:
        return None
    truth, predicted = [], {"latent": [], "flow_grid": []}
    for task in tasks:
        train = [e for e in fit if e.task != task]
        test = [e for e in scored if e.task == task]
        if not train:
            continue
        truth.append(data.stacked("actions", test))
        for name, what in (("latent", "latents"), ("flow_grid", "grid")):
            model = fit_ridge(data.stacked(what, train), data.stacked("actions", train), alpha)
            predicted[name].append(model.predict(data.stacked(what, test)))
    truth = np.concatenate(truth)
    return {**_scores(truth, np.concatenate(predicted["latent"]), data.names), "tasks": len(tasks),
            "flow_grid": _scores(truth, np.concatenate(predicted["flow_grid"]), data.names)}


def _scores(truth: np.ndarray, predicted: np.ndarray, names: Sequence[str]) -> dict:
    per_dim = r2_per_dim(truth, predicted)
    return {"r2": float(np.nanmean(per_dim)) if np.isfinite(per_dim).any() else None,
            "r2_per_dim": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, per_dim)}}


def _standardised(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Squared residuals over each dim's variance (dims that never vary dropped): 1 - their mean is the mean R^2,
    so pooling them over embodiments gives an overall R^2 that weighs every (embodiment, dim, pair) the same."""
    variance = truth.var(0)
    varying = variance > 1e-12
    return (np.square(truth - predicted)[:, varying] / variance[varying]).ravel()
