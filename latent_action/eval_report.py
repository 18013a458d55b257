"""`report.html` of `pyramid eval-latents`: the figures of eval.json beside its plots, in one self-contained page."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from pyramid.atomic import atomic_write_bytes

# The files of an evaluation beside eval.json, which the report embeds
REPORT_FILE, PREVIEW_FILE, HISTOGRAM_FILE = "report.html", "flow_preview.png", "latent_histograms.png"
PROBE_PLOTS = "probe_*.png"  # probe_<embodiment>.png, one per embodiment

FLOW_ROWS = [
    ("flow EPE over all pixels", "epe_px", "epe_blank_px"),
    ("flow EPE over moving pixels", "epe_moving_px", "epe_moving_blank_px"),
]


def write_eval_report(out_dir: Path, result: dict) -> Path:
    """Write `<out_dir>/report.html` from the eval result and the PNGs already in `out_dir`."""
    sections = [
        f"<h1>Latent-action evaluation</h1><p>checkpoint {html.escape(result['checkpoint'])}<br>data "
        f"{html.escape(result['data'])}, split '{result['split']}'"
        f"{' (held out by whole tasks, unseen in training)' if (result['split'], result.get('heldout_by')) == ('heldout', 'tasks') else ''}<br>{_pairs_line(result.get('pairs'))}</p>",
        _probe_table(result["probe"]),
        _flow_table(result["flow"]),
        "<h2>Flow input (top) and reconstruction (bottom), most moving held-out pairs</h2>" + embed(out_dir / PREVIEW_FILE),
        "<h2>Probe predictions</h2>" + "".join(embed(p) for p in sorted(out_dir.glob(PROBE_PLOTS))),
        "<h2>Latent actions</h2>" + embed(out_dir / HISTOGRAM_FILE),
    ]
    return write_page(out_dir / REPORT_FILE, "latent-action evaluation", "".join(sections))


def write_page(path: Path, title: str, body: str) -> Path:
    """A self-contained HTML page, written under a temporary name and renamed."""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif;max-width:1100px'>{body}</body></html>")
    atomic_write_bytes(path, page.encode())
    return path


def _probe_table(probe: dict) -> str:
    rows = []
    for embodiment, scores in probe["per_embodiment"].items():
        if "error" in scores:
            rows.append(f"<tr><td>{html.escape(embodiment)}</td><td colspan='4'>{html.escape(scores['error'])}</td></tr>")
            continue
        rows.append(_probe_row(html.escape(embodiment), scores, scores["r2_shuffled_control"]))
        if "across_tasks" in scores:
            across = scores["across_tasks"]
            rows.append(_probe_row(f"{html.escape(embodiment)}, across {across['tasks']} tasks", across, None))
    rows.append(f"<tr><td><b>overall</b></td><td><b>{number(probe['overall_r2'])}</b></td>"
                f"<td>{number(probe.get('overall_r2_flow_grid'))}</td>"
                f"<td>{number(probe['overall_r2_shuffled_control'])}</td><td></td></tr>")
    return ("<h2>Probe: ridge regression from latent actions to real actions, R^2 on scored episodes</h2>"
            "<p>Beside it, the naive baseline (the same ridge from the mean flow in a 4x4 grid of cells, 32 numbers) "
            "and a probe fit on shuffled actions. 'Across tasks': each task predicted by a probe fit on the other tasks.</p>"
            "<table border='1' cellpadding='4' style='border-collapse:collapse'><tr><th>embodiment</th><th>latent R^2</th>"
            f"<th>flow-grid baseline R^2</th><th>shuffled-action control</th><th>per dimension (latent / baseline)</th></tr>"
            f"{''.join(rows)}</table>")


def _probe_row(label: str, scores: dict, shuffled: float | None) -> str:
    baseline = scores.get("flow_grid", {})
    dims = ", ".join(f"{html.escape(name)} {number(value)} / {number(baseline.get('r2_per_dim', {}).get(name))}"
                     for name, value in scores["r2_per_dim"].items())
    return (f"<tr><td>{label}</td><td>{number(scores['r2'])}</td><td>{number(baseline.get('r2'))}</td>"
            f"<td>{number(shuffled)}</td><td>{dims}</td></tr>")


def _flow_table(flow: dict) -> str:
    rows = "".join(f"<tr><td>{label}</td><td>{number(flow.get(value), ' px')}</td><td>{number(flow.get(blank), ' px')}</td></tr>"
                   for label, value, blank in FLOW_ROWS)
    return ("<h2>Flow reconstruction at the stored frame size</h2>"
            "<table border='1' cellpadding='4' style='border-collapse:collapse'><tr><th></th><th>VAE</th>"
            f"<th>a blank reconstruction</th></tr>{rows}</table>"
            f"<p>moving pixels: {number(flow.get('moving_pixel_fraction'))} of all; flow-RGB round trip error "
            f"{number(flow.get('flow_rgb_roundtrip_epe_px'), ' px')}</p>")


def _pairs_line(pairs: dict | None) -> str:
    if not pairs:
        return ""
    rate = "every source frame" if pairs["fps"] is None else f"{pairs['fps']:g} fps"
    return (f"pairs: frames at {rate}, {pairs['size'][0]}x{pairs['size'][1]}, {html.escape(pairs['backend'])} flow "
            f"{pairs['stride']} stored frame(s) apart")


def number(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.3f}{unit}"


def embed(path: Path) -> str:
    if not path.is_file():
        return ""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f"<img style='margin:2px;max-width:100%' src='data:image/png;base64,{encoded}'/>"
