"""`pyramid label-curve`: how the latent action's held-out probe R^2 grows with the share of labelled pairs.

One VAE per share (the training config with `data.labels.share` set, each in `<run.out_dir>/labels-<percent>pct`,
e.g. labels-10pct for share 0.1),
each scored by `eval-latents` on the same held-out episodes (the split does not depend on the share),
then one `curve.json`, `label_curve.png` and `report.html` that puts them side by side with the naive
flow-grid baseline. A finished run (its last checkpoint at `max_steps`) of the same config is reused, an unfinished
one resumed; a run trained with other settings is refused.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Callable, Sequence

from latent_action.checkpoint import latest_checkpoint, saved_train_config
from latent_action.config import TrainConfig, load_config
from latent_action.eval_report import REPORT_FILE, embed, number, write_page
from latent_action.evaluation import action_dimension_names, check_dims, evaluate_latents
from latent_action.plots import plot_label_curve
from latent_action.train import refuse_changed_config, resolve_device, train
from pyramid.atomic import atomic_write_bytes
from pyramid.cameras import CameraView
from pyramid.errors import EpisodeError
from pyramid.paths import overlap_problem
from pyramid.training.checkpoints import STEP_DIR

DEFAULT_SHARES = (0.0, 0.025, 0.1, 0.5)


def share_name(share: float) -> str:
    return f"labels-{100 * share:g}pct"


def check_share_names(shares: Sequence[float]) -> None:
    """A ValueError for two shares whose runs would share a folder (they differ past 6 significant digits)."""
    seen: dict[str, float] = {}
    for share in sorted(set(shares)):
        if (name := share_name(share)) in seen:
            raise ValueError(f"shares {seen[name]!r} and {share!r} would train in one folder, {name}: give shares that "
                             "differ within 6 significant digits")
        seen[name] = share


def config_for_share(config: TrainConfig, share: float) -> TrainConfig:
    data = config.data.model_copy(update={"labels": config.data.labels.model_copy(update={"share": share})})
    run = config.run.model_copy(update={"out_dir": config.run.out_dir / share_name(share)})
    return config.model_copy(update={"data": data, "run": run})


def trained_checkpoint(config: TrainConfig, show_progress: bool, echo: Callable[[str], None]) -> Path:
    """The run's final checkpoint: trained now, resumed, or reused when already trained with this config."""
    last = finished_checkpoint(config)
    if last is not None:
        echo(f"reusing {last}")
        return last
    resume = latest_checkpoint(config.run.out_dir / "checkpoints") is not None
    return train(config, resume=resume, show_progress=show_progress, echo=echo)


def finished_checkpoint(config: TrainConfig) -> Path | None:
    """The run's checkpoint at max_steps, trained with this config; None when the run is still to train or to resume.

    An EpisodeError for a run of other settings: retraining would mean deleting it, which is the user's call.
    """
    last = latest_checkpoint(config.run.out_dir / "checkpoints")
    if last is None:
        return None
    refuse_changed_config(last, config)
    step = int(STEP_DIR.match(last.name).group(1))
    trained_for = (saved_train_config(last) or {}).get("optim", {}).get("max_steps")
    if step < config.optim.max_steps:
        return None
    if step == trained_for == config.optim.max_steps:
        return last
    raise EpisodeError(last, f"step {step} of a run trained for {trained_for or 'unrecorded'} steps, not the config's "
                             f"optim.max_steps {config.optim.max_steps}: use another run.out_dir, or delete this run")


def cameras_of_root(config: TrainConfig, data_root: str | Path) -> str | None:
    """The cameras the config trains on from `data_root` (`--cameras` form): its source's, or where DATA is none of
    its sources (a copy, say), the cameras every source reads; a ValueError where they read different ones."""
    views = {Path(source.root).resolve(): CameraView.of_recipe(source.cameras, config.data.flow.resize).as_option()
             for source in config.data.sources}
    if (own := views.get(Path(data_root).resolve())) is not None:
        return own
    if len(set(views.values())) > 1:
        raise ValueError(f"{data_root}: none of the config's sources, whose cameras differ ({', '.join(sorted(set(views.values())))}): "
                         "score it from one of them, or with pyramid eval-latents --cameras")
    return next(iter(views.values()), None)


def with_holdout(config: TrainConfig, holdout_by: str | None) -> TrainConfig:
    """The config with `data.holdout_by` set, its runs beside the config's own (`<out_dir>-heldout-<by>`) where that
    changes the split: a run trained on another split is another run."""
    if holdout_by is None or holdout_by == config.data.holdout_by:
        return config
    data = config.data.model_copy(update={"holdout_by": holdout_by, "holdout_tasks": []})  # tasks named hold out tasks only
    run = config.run.model_copy(update={"out_dir": config.run.out_dir.with_name(f"{config.run.out_dir.name}-heldout-{holdout_by}")})
    return config.model_copy(update={"data": data, "run": run})


def label_curve(config_path: str | Path, data_root: str | Path, out_dir: str | Path | None = None,
                shares: Sequence[float] = DEFAULT_SHARES, dims: Sequence[str] | None = None, device: str = "auto",
                show_progress: bool = True, echo: Callable[[str], None] = print, holdout_by: str | None = None) -> dict:
    base = with_holdout(load_config(config_path), holdout_by)
    out_dir = Path(out_dir) if out_dir is not None else base.run.out_dir / "label_curve"
    # Everything that can refuse does so before the first VAE trains (minutes to hours).
    from pyramid.sources import open_source

    resolve_device(device)
    open_source(data_root)  # a DATA that is no dataset
    if problem := overlap_problem(out_dir, [data_root], "--out"):
        raise ValueError(problem)
    check_dims(dims, data_root)
    if not dims and not action_dimension_names(data_root):
        raise ValueError(f"{data_root}: no episode has actions to score the latent actions against")
    check_share_names(shares)
    configs = {share: config_for_share(base, share) for share in sorted(shares)}
    for share, config in configs.items():
        finished_checkpoint(config)
        if overlap_problem(scored_in := out_dir / share_name(share), [config.run.out_dir], "--out"):
            raise ValueError(f"--out {out_dir}: share {share:g} would be scored in {scored_in}, which overlaps the run that "
                             f"trains it ({config.run.out_dir}): give label-curve another --out")
    cameras = cameras_of_root(base, data_root)
    points = []
    for share, config in configs.items():
        echo(f"labels.share {share:g}: training in {config.run.out_dir}")
        checkpoint = trained_checkpoint(config, show_progress, echo)
        result = evaluate_latents(checkpoint, data_root, out_dir / share_name(share), device=device, echo=echo, dims=dims,
                                  cameras=cameras)
        probe = result["probe"]
        points.append({"share": share, "checkpoint": str(checkpoint), "r2": probe["overall_r2"],
                       "r2_flow_grid": probe["overall_r2_flow_grid"], "r2_shuffled_control": probe["overall_r2_shuffled_control"],
                       "epe_moving_px": result["flow"]["epe_moving_px"], "epe_moving_blank_px": result["flow"]["epe_moving_blank_px"],
                       "report": f"{share_name(share)}/{REPORT_FILE}"})
    curve = {"config": str(config_path), "data": str(data_root), "dims": list(dims) if dims else None,
             "heldout_by": base.data.holdout_by, "points": points}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "curve.json", json.dumps(curve, indent=2).encode())
    plot_label_curve(out_dir / "label_curve.png", [p["share"] for p in points], [p["r2"] for p in points],
                     [p["r2_flow_grid"] for p in points])
    write_curve_report(out_dir, curve)
    return curve


def write_curve_report(out_dir: Path, curve: dict) -> Path:
    rows = "".join(
        f"<tr><td>{100 * p['share']:g}%</td><td>{number(p['r2'])}</td><td>{number(p['r2_flow_grid'])}</td>"
        f"<td>{number(p['r2_shuffled_control'])}</td><td>{number(p['epe_moving_px'])} / {number(p['epe_moving_blank_px'])} px</td>"
        f"<td><a href='{html.escape(p['report'])}'>report</a></td></tr>" for p in curve["points"])
    dims = ", ".join(curve["dims"]) if curve["dims"] else "every action dimension that varies"
    body = ("<h1>Label efficiency of the latent action</h1>"
            f"<p>config {html.escape(curve['config'])}<br>data {html.escape(curve['data'])}<br>held-out probe R^2 over {html.escape(dims)}</p>"
            + embed(out_dir / "label_curve.png") +
            "<table border='1' cellpadding='4' style='border-collapse:collapse'><tr><th>labelled training pairs</th>"
            "<th>latent R^2</th><th>flow-grid baseline R^2</th><th>shuffled control</th><th>moving-pixel EPE (VAE / blank)</th>"
            f"<th></th></tr>{rows}</table>")
    return write_page(out_dir / "report.html", "label efficiency", body)
