"""`report.html`: the pyramid's composition, flow previews and latent-action plots, as pictures.

Images are embedded as base64 PNGs so the report is one self-contained file. Flow previews are the ones
workers made while the frames were in memory (`episode_outputs.previews`): nothing is decoded here.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pyramid.atomic import atomic_write_bytes  # noqa: E402


def write_report(output: Path, manifest: dict, previews: list[dict], latents: list[list]) -> Path:
    """`previews`: statuses with `preview_png` (frame, frame + stride, flow; base64); `latents`: one clip's each."""
    sections = [_summary(manifest), _composition(manifest)]
    sections.append("<h2>Flow previews</h2>" + "".join(_flow_preview(p) for p in previews))
    latents = _latent_plot([np.asarray(series, np.float32) for series in latents]) if manifest["recipe"].get("vae") else ""
    if latents:
        sections.append(latents)
    sections.append(_quarantine(manifest))
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>pyramid build report</title></head><body style='font-family:sans-serif;max-width:1100px'>{''.join(sections)}</body></html>"
    path = Path(output) / "report.html"
    atomic_write_bytes(path, page.encode())
    return path


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return f"<img src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'/>"


def _summary(manifest: dict) -> str:
    e = manifest["episodes"]
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['episodes']:.0f}</td><td>{v['clips']:.0f}</td><td>{v['hours']:.3f}</td></tr>"
                   for k, v in {**manifest["by_level"], **manifest["by_source"]}.items())
    return (f"<h1>Pyramid build</h1><p>{e['ok']} episodes built, {e['skipped']} skipped, {e['failed']} quarantined "
            f"({e['failed_fraction']:.1%}).</p><table border=1 cellpadding=4><tr><th>level / source</th><th>episodes</th>"
            f"<th>clips</th><th>hours</th></tr>{rows}</table>")


def _composition(manifest: dict) -> str:
    levels = list(range(1, 7))
    hours = [manifest["by_level"].get(f"level{level}", {}).get("hours", 0.0) for level in levels]
    clips = [manifest["by_level"].get(f"level{level}", {}).get("clips", 0) for level in levels]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3))
    for ax, values, label in ((axes[0], hours, "hours"), (axes[1], clips, "clips")):
        ax.barh([f"level {level}" for level in levels], values, color="#4a7bb7")
        ax.set_xlabel(label)
        ax.invert_yaxis()
    figure.suptitle("Pyramid composition")
    return "<h2>Composition</h2>" + _png(figure)


def _flow_preview(preview: dict) -> str:
    images = "".join(f"<img style='margin:2px' src='data:image/png;base64,{png}'/>" for png in preview["preview_png"])
    return f"<h3>{html.escape(preview['episode_id'])} ({html.escape(preview.get('preview_heading', ''))})</h3>" + images


def _latent_plot(series: list[np.ndarray]) -> str:
    series = [s for s in series if len(s)]
    if not series:
        return ""
    first, stacked = series[0], np.concatenate(series)
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.2))
    axes[0].plot(first)
    axes[0].set_title("latent actions of one clip (14 dims)")
    axes[0].set_xlabel("frame pair")
    axes[1].boxplot(stacked, showfliers=False)
    axes[1].set_title("latent action distribution per dim")
    return "<h2>Latent actions</h2>" + _png(figure)


def _quarantine(manifest: dict) -> str:
    rows = "".join(f"<li><code>{html.escape(q['episode_id'])}</code>: {html.escape(q['reason'])}</li>" for q in manifest["quarantined"])
    return f"<h2>Quarantined episodes ({len(manifest['quarantined'])})</h2><ul>{rows}</ul>"
