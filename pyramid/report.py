"""`report.html`: the pyramid's composition, flow previews and latent-action plots, as pictures.

Images are embedded as base64 PNGs so the report is one self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pyramid.staging import Staging  # noqa: E402
from pyramid.video_io import read_frames  # noqa: E402

PREVIEW_EPISODES = 4


def write_report(output: Path, manifest: dict, staging: Staging, episode_ids: list[str]) -> Path:
    sections = [_summary(manifest), _composition(manifest)]
    previews = [_flow_preview(staging, eid) for eid in episode_ids[:PREVIEW_EPISODES]]
    sections.append("<h2>Flow previews</h2>" + "".join(p for p in previews if p))
    latents = _latent_plot(staging, episode_ids) if manifest["recipe"].get("vae") else ""
    if latents:
        sections.append(latents)
    sections.append(_quarantine(manifest))
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>pyramid build report</title></head><body style='font-family:sans-serif;max-width:1100px'>{''.join(sections)}</body></html>"
    path = Path(output) / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return f"<img src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'/>"


def _image(rgb: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return f"<img style='margin:2px' src='data:image/png;base64,{base64.b64encode(encoded.tobytes()).decode()}'/>"


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


def _flow_preview(staging: Staging, episode_id: str) -> str:
    samples = list(staging.samples(episode_id))
    table = staging.flow_table(episode_id)
    if not samples or table is None or not table.num_rows:
        return ""
    sample = samples[0]
    meta = json.loads(sample["json"])
    with tempfile.NamedTemporaryFile(suffix=".mp4") as clip:
        clip.write(sample["mp4"])
        clip.flush()
        frames = read_frames(clip.name, [0, min(meta["flow"]["stride"], meta["num_frames"] - 1)])
    first_pair = meta["flow"]["pair_range"][0]
    flow_png = table.column("flow_rgb")[first_pair].as_py()
    flow_rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(flow_png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    small = [cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2)) for img in (frames[0], frames[1], flow_rgb)]
    cameras = f"{meta.get('layout', 'single')}: {', '.join(meta.get('cameras', []))}"
    heading = f"{episode_id} ({meta['task'] or 'no instruction'}; cameras {cameras})"
    return f"<h3>{html.escape(heading)}</h3>" + "".join(_image(img) for img in small)


def _latent_plot(staging: Staging, episode_ids: list[str]) -> str:
    series = []
    for episode_id in episode_ids[:64]:
        for sample in staging.samples(episode_id):
            if "latent_actions.npy" in sample:
                series.append(np.load(io.BytesIO(sample["latent_actions.npy"]), allow_pickle=False))
        if len(series) >= 8:
            break
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
