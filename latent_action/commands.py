"""The latent-action commands of the `pyramid` CLI: `train-vae`, `label`, `eval-latents`, `label-curve` (added by `register`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pyramid.cli_errors import fail as _fail
from pyramid.errors import EpisodeError, SourceError


def _echo_err(message: str) -> None:
    typer.echo(message, err=True)


CAMERAS_HELP = ("The cameras to read: 'primary' (the reader's first), a camera name, or 't:HEAD,LEFT_WRIST,RIGHT_WRIST' "
                "(Motus's T-layout), as the VAE was trained on them (a recipe source's `cameras`).")


def train_vae(
    config: Path = typer.Argument(..., help="Training config YAML (see recipes/configs/vae/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in run.out_dir."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with the losses."),
) -> None:
    """Train the latent-action VAE on flow pairs (from episodes or a flow.lance dataset)."""
    from latent_action.config import ConfigError, load_config
    from latent_action.train import train

    try:
        checkpoint = train(load_config(config), resume=resume, show_progress=progress, echo=_echo_err)
    except (ConfigError, EpisodeError, SourceError, ValueError, OSError) as exc:  # OSError: a busy run.out_dir
        _fail(str(exc))
    typer.echo(f"checkpoint: {checkpoint}")


def label(
    source_root: Path = typer.Argument(..., help="A source root of any registered kind."),
    out_dir: Path = typer.Argument(..., help="Where latent_actions/, latent_action_dim14/ and latent_stats.json go."),
    vae: Path = typer.Option(..., "--vae", help="A checkpoint written by train-vae, or its run.out_dir (the latest checkpoint)."),
    source: Optional[str] = typer.Option(None, "--source", "-s", help="Source kind; auto-detected when omitted."),
    motus_layout: bool = typer.Option(False, "--motus-layout", help="Also write latent_action_dim14/<episode>.pt: Motus's latent actions only, without the videos/, umt5_wan/ and metas/ they pair with (export-motus of a build writes all four); needs a stride-1 VAE."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Relabel episodes already labelled in OUT_DIR."),
    cameras: str = typer.Option("primary", "--cameras", help=CAMERAS_HELP),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
) -> None:
    """Write the latent action (mu, float32 [T-1, 14]) of every frame pair of every episode, in one process.

    For large inputs, name the VAE in a build recipe (`vae:`): `pyramid build` labels every clip as a Ray stage.
    """
    from latent_action.labelling import label_source

    try:
        report = label_source(vae, source_root, out_dir, source, motus_layout, overwrite, device, echo=_echo_err, cameras=cameras)
    except (EpisodeError, SourceError, ValueError, OSError) as exc:  # OSError: an output that is busy or a file
        _fail(str(exc))
    typer.echo(f"labelled {report['episodes']} episodes ({report['pairs']} pairs, {report['reused']} reused), "
               f"{len(report['errors'])} unreadable; stats in {out_dir / 'latent_stats.json'}")


def eval_latents(
    data: Path = typer.Argument(..., help="A source root with real actions."),
    vae: Path = typer.Option(..., "--vae", help="A checkpoint written by train-vae, or its run.out_dir (the latest checkpoint)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: <run>/eval/<checkpoint name>)."),
    source: Optional[str] = typer.Option(None, "--source", "-s", help="Source kind; auto-detected when omitted."),
    split: str = typer.Option("heldout", help="'heldout': only episodes the VAE did not train on; 'all': every episode."),
    alpha: float = typer.Option(1e-3, help="Ridge regularisation of the probe (on standardised latents)."),
    dims: Optional[str] = typer.Option(None, "--dims", help="Score only these action dimensions, by name (e.g. x,y,z)."),
    cameras: str = typer.Option("primary", "--cameras", help=CAMERAS_HELP),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
) -> None:
    """Probe R^2 (latents -> real actions) beside a flow-grid baseline, flow reconstruction EPE and latent statistics."""
    from latent_action.eval_report import REPORT_FILE
    from latent_action.evaluation import evaluate_latents

    from latent_action.checkpoint import resolve_checkpoint

    try:
        vae = resolve_checkpoint(vae)
    except EpisodeError as exc:
        _fail(str(exc))
    if out_dir is None:  # <run>/eval/<step> for a train-vae checkpoint, else beside the checkpoint
        out_dir = vae.parent.parent / "eval" / vae.name if vae.parent.name == "checkpoints" else vae.with_name(vae.name + "-eval")
    try:
        result = evaluate_latents(vae, data, out_dir, source, split, alpha, device, echo=_echo_err, dims=_names(dims), cameras=cameras)
    except (EpisodeError, SourceError, ValueError, OSError) as exc:  # OSError: an output that is busy or a file
        _fail(str(exc))
    probe = result["probe"]
    summary = {key: probe[key] for key in ("overall_r2", "overall_r2_flow_grid", "overall_r2_shuffled_control")} | result["flow"]
    typer.echo(json.dumps(summary))
    typer.echo(f"report: {out_dir / REPORT_FILE} (figures: {out_dir / 'eval.json'})", err=True)


def label_curve(
    config: Path = typer.Argument(..., help="Training config YAML; one VAE is trained per share, in <run.out_dir>/labels-<percent>pct "
                                            "(labels-10pct for share 0.1)."),
    data: Path = typer.Argument(..., help="The source root with real actions to score on (its held-out episodes)."),
    shares: str = typer.Option("0,0.025,0.1,0.5", help="Shares of labelled training pairs, comma-separated."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: <run.out_dir>/label_curve)."),
    dims: Optional[str] = typer.Option(None, "--dims", help="Score only these action dimensions, by name (e.g. x,y,z)."),
    holdout_by: Optional[str] = typer.Option(None, "--holdout-by", help="'episodes' or 'tasks' (whole tasks kept out of "
                                             "training, so the probe scores tasks the VAE never saw); the config's "
                                             "data.holdout_by when omitted. Runs of another split go to <run.out_dir>-heldout-<by>."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show training progress bars."),
) -> None:
    """Train at each label share and score each: held-out probe R^2 against the share, beside the flow-grid baseline."""
    from latent_action.config import ConfigError
    from latent_action.label_curve import label_curve as run_curve

    try:
        wanted = [float(value) for value in shares.split(",") if value.strip()]
    except ValueError:
        _fail(f"--shares: expected numbers between 0 and 1 separated by commas, got {shares!r}")
    if not wanted or any(not 0 <= share <= 1 for share in wanted):
        _fail(f"--shares: expected numbers between 0 and 1 separated by commas, got {shares!r}")
    try:
        if holdout_by not in (None, "episodes", "tasks"):
            raise ValueError(f"--holdout-by: expected 'episodes' or 'tasks', got {holdout_by!r}")
        curve = run_curve(config, data, out_dir, wanted, _names(dims), device, progress, _echo_err, holdout_by)
    except (ConfigError, EpisodeError, SourceError, ValueError, OSError) as exc:  # OSError: a busy output
        _fail(str(exc))
    for point in curve["points"]:
        typer.echo(json.dumps({key: point[key] for key in ("share", "r2", "r2_flow_grid", "epe_moving_px", "epe_moving_blank_px")}))


def _names(dims: str | None) -> list[str] | None:
    """--dims 'x, y' as ['x', 'y']; None (every dimension) when it names none."""
    names = [name.strip() for name in (dims or "").split(",") if name.strip()]
    return names or None


def register(app: typer.Typer) -> None:
    app.command("train-vae")(train_vae)
    app.command("label")(label)
    app.command("eval-latents")(eval_latents)
    app.command("label-curve")(label_curve)
