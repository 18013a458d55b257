"""`report.html` of `pyramid eval-latents`: the figures of eval.json beside its plots, in one self-contained page."""

from __future__ import annotations

import base64
import html
from pathlib import Path

FLOW_ROWS = [
    ("flow EPE over all pixels", "epe_px", "epe_blank_px"),
    ("flow EPE over moving pixels", "epe_moving_px", "epe_moving_blank_px"),
]


def write_eval_report(out_dir: Path, result: dict) -> Path:
    """Write `<out_dir>/report.html` from the eval result and the PNGs already in `out_dir`."""
    sections = [
        f"<h1>Latent-action evaluation</h1><p>checkpoint {html.escape(result['checkpoint'])}<br>data "
        f"{html.escape(result['data'])}, split '{result['split']}'</p>",
        _probe_table(result["probe"]),
        _flow_table(result["flow"]),
        "<h2>Flow input (top) and reconstruction (bottom), most moving held-out pairs</h2>" + _embed(out_dir / "flow_preview.png"),
        "<h2>Probe predictions</h2>" + "".join(_embed(p) for p in sorted(out_dir.glob("probe_*.png"))),
        "<h2>Latent actions</h2>" + _embed(out_dir / "latent_histograms.png"),
    ]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>latent-action evaluation</title></head>"
            f"<body style='font-family:sans-serif;max-width:1100px'>{''.join(sections)}</body></html>")
    path = out_dir / "report.html"
    partial = path.with_name(".report.html.partial")
    partial.write_text(page)
    partial.replace(path)
    return path


def _probe_table(probe: dict) -> str:
    rows = []
    for embodiment, scores in probe["per_embodiment"].items():
        if "error" in scores:
            rows.append(f"<tr><td>{html.escape(embodiment)}</td><td colspan='3'>{html.escape(scores['error'])}</td></tr>")
            continue
        dims = ", ".join(f"{html.escape(name)} {_number(value)}" for name, value in scores["r2_per_dim"].items())
        rows.append(f"<tr><td>{html.escape(embodiment)}</td><td>{_number(scores['r2'])}</td>"
                    f"<td>{_number(scores['r2_shuffled_control'])}</td><td>{dims}</td></tr>")
    rows.append(f"<tr><td><b>overall</b></td><td><b>{_number(probe['overall_r2'])}</b></td>"
                f"<td>{_number(probe['overall_r2_shuffled_control'])}</td><td></td></tr>")
    return ("<h2>Probe: ridge regression from latent actions to real actions, R^2 on scored episodes</h2>"
            "<table border='1' cellpadding='4' style='border-collapse:collapse'><tr><th>embodiment</th><th>R^2</th>"
            f"<th>shuffled-action control</th><th>per dimension</th></tr>{''.join(rows)}</table>")


def _flow_table(flow: dict) -> str:
    rows = "".join(f"<tr><td>{label}</td><td>{_number(flow.get(value), ' px')}</td><td>{_number(flow.get(blank), ' px')}</td></tr>"
                   for label, value, blank in FLOW_ROWS)
    return ("<h2>Flow reconstruction at the stored frame size</h2>"
            "<table border='1' cellpadding='4' style='border-collapse:collapse'><tr><th></th><th>VAE</th>"
            f"<th>a blank reconstruction</th></tr>{rows}</table>"
            f"<p>moving pixels: {_number(flow.get('moving_pixel_fraction'))} of all; flow-RGB round trip error "
            f"{_number(flow.get('flow_rgb_roundtrip_epe_px'), ' px')}</p>")


def _number(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.3f}{unit}"


def _embed(path: Path) -> str:
    if not path.is_file():
        return ""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f"<img style='margin:2px;max-width:100%' src='data:image/png;base64,{encoded}'/>"
