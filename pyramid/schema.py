"""The one schema of what a build writes: the clip json, the `clips.lance` and `flow.lance` columns.

The writers (staging, the Lance sink) import it; the tables in SHARDS.md are generated from it
(`python -m pyramid.schema --write`) and a test fails when the two differ.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

# Lance file format the sink writes. 2.0, not the newer default: pylance 0.20 and 0.30 read 2.0 but fail on 2.1
# (tried with both against 14.0.2's writes), and 7.1 on blob-v2 columns. pyproject states the same minimum.
LANCE_STORAGE_VERSION = "2.0"
MIN_PYLANCE = "0.20"

# The `json` member of every WebDataset sample (and the `json` column of clips.lance): field -> meaning.
CLIP_JSON = {
    "episode_id": "`<source>-<dataset>-<readable>-<hash>` (see above)",
    "source": "the source kind (`lerobot`, `agibot`, ...)",
    "embodiment": "the robot, `human` (EgoDex) or `video` (plain videos) unless the recipe names it; the key of `manifest.json` normalisation statistics",
    "level": "pyramid level, 1-6",
    "instructions": "list of instructions (may be empty)",
    "task": "the first instruction, or empty",
    "fps": "stored frame rate of the clip (the recipe's, or the source's when lower)",
    "source_fps": "frame rate of the source episode",
    "num_source_frames": "frames of the whole source episode",
    "cameras": "the cameras in the video, in layout order (list)",
    "layout": "`single` (one camera) or `t` (head on top, left and right wrist at half size below)",
    "clip_index": "clip number within the episode (a static clip left out leaves a gap)",
    "start_frame": "first source frame of the clip",
    "end_frame": "source frame after the clip (the next clip's first; exclusive)",
    "num_frames": "stored frames in the clip's video",
    "height": "stored frame height",
    "width": "stored frame width",
    "state_names": "names of the state dimensions (list)",
    "action_names": "names of the action dimensions (list)",
    "action_fps": "rate of `actions.npy` and `state.npy` rows (the source fps)",
    "has_actions": "whether `actions.npy` is present",
    "has_latent_actions": "whether `latent_actions.npy` is present",
    "motion": "flow magnitude over the clip's pairs, px: `{mean, median, p95, moving_fraction}` (static clips are left out by it)",
    "flow": "`{backend, stride, max_magnitude, dataset: \"flow.lance\" (null when the recipe's `flow.store` is false), "
            "pair_range: [first, stop)}`: the flow.lance `pair_index` range of this clip's pairs (the rows of its "
            "`latent_actions.npy`)",
}

_CLIP_COLUMNS = [
    ("key", pa.string(), "`<episode_id>_c<clip_index:04d>`, the sample's `__key__`"),
    *[(name, kind, f"json `{name}`") for name, kind in [
        ("episode_id", pa.string()), ("source", pa.string()), ("embodiment", pa.string()), ("level", pa.int8()),
        ("task", pa.string()), ("instructions", pa.list_(pa.string())), ("fps", pa.float64()),
        ("source_fps", pa.float64()), ("action_fps", pa.float64()), ("clip_index", pa.int32()),
        ("start_frame", pa.int32()), ("end_frame", pa.int32()), ("num_frames", pa.int32()), ("height", pa.int32()),
        ("width", pa.int32()), ("state_names", pa.list_(pa.string())), ("action_names", pa.list_(pa.string())),
        ("has_actions", pa.bool_()), ("has_latent_actions", pa.bool_())]],
    ("json", pa.string(), "the whole sample json, as text"),
    ("video", pa.large_binary(), "the mp4 bytes (plain binary, not blob-encoded: DuckDB and `to_pandas()` give bytes)"),
    ("actions_npy", pa.binary(), "`actions.npy` bytes, null when absent"),
    ("state_npy", pa.binary(), "`state.npy` bytes, null when absent"),
    ("latent_actions_npy", pa.binary(), "`latent_actions.npy` bytes, null when absent"),
]

_FLOW_COLUMNS = [
    ("episode_id", pa.string(), "as in clips.lance"),
    ("source", pa.string(), "as in clips.lance"),
    ("embodiment", pa.string(), "as in clips.lance"),
    ("level", pa.int8(), "as in clips.lance"),
    ("pair_index", pa.int32(), "the pair (stored frame t, t + stride) of the episode"),
    ("clip_key", pa.string(), "`key` of the clip whose `latent_actions.npy` holds this pair; null for a pair across "
                              "a clip boundary or in a static clip left out"),
    ("flow_npy_zst", pa.binary(), "the pair's flow (u, v) at the stored size: zstd-compressed `.npy` of int16 [H, W, 2] in "
     "1/16 px (`flow.storage.unpack`); the VAE renders its flow-RGB from it"),
    ("action", pa.list_(pa.float32()), "the mean raw action over the pair's span, null without actions"),
    ("latent_action", pa.list_(pa.float32()), "the pair's latent action (14), null in an unlabelled build"),
]

CLIP_SCHEMA = pa.schema([(name, kind) for name, kind, _ in _CLIP_COLUMNS])
FLOW_SCHEMA = pa.schema([(name, kind) for name, kind, _ in _FLOW_COLUMNS])
NPY_COLUMNS = {"actions.npy": "actions_npy", "state.npy": "state_npy", "latent_actions.npy": "latent_actions_npy"}


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as the .npy bytes a clip's tar member or npy column holds."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def npy_array(data: bytes) -> np.ndarray:
    """The array in a clip's .npy bytes (never unpickled: a build holds plain numeric arrays)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def check_pylance() -> None:
    """Refuse to write Lance datasets with a pylance older than the one their format and readers need."""
    from importlib.metadata import version

    found = version("pylance")
    if _release(found) < _release(MIN_PYLANCE):
        from pyramid.errors import BuildError

        raise BuildError(f"pylance {found} is older than {MIN_PYLANCE}, which a build's Lance datasets need: "
                           f"pip install 'pylance>={MIN_PYLANCE}'")


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def markdown() -> str:
    """The SHARDS.md tables of the json fields and both Lance datasets' columns."""
    parts = [f"Lance file format {LANCE_STORAGE_VERSION}; reading it needs pylance >= {MIN_PYLANCE}.\n",
             "Sample json fields:\n", "| field | meaning |", "|---|---|"]
    parts += [f"| `{name}` | {meaning} |" for name, meaning in CLIP_JSON.items()]
    for title, columns in (("`clips.lance` columns", _CLIP_COLUMNS), ("`flow.lance` columns", _FLOW_COLUMNS)):
        parts += ["", f"{title}:\n", "| column | type | meaning |", "|---|---|---|"]
        parts += [f"| `{name}` | {kind} | {meaning} |" for name, kind, meaning in columns]
    return "\n".join(parts) + "\n"


BEGIN, END = "<!-- schema: generated by `python -m pyramid.schema --write` -->", "<!-- schema: end -->"
SHARDS_MD = Path(__file__).with_name("SHARDS.md")


def documented(text: str) -> str:
    """The generated block of SHARDS.md."""
    match = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), text, re.S)
    return match.group(1) if match else ""


def write_shards_md() -> None:
    text = SHARDS_MD.read_text()
    SHARDS_MD.write_text(text.replace(f"{BEGIN}\n{documented(text)}{END}", f"{BEGIN}\n{markdown()}{END}"))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_shards_md()
    else:
        print(markdown(), end="")
