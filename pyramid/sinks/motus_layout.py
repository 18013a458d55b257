"""`pyramid export-motus`: a finished build in the layout the original Motus trainer reads.

    <out>/videos/<clip key>.mp4
    <out>/latent_action_dim14/<clip key>.pt     float32 [T - 1, 14] (labelled builds only)
    <out>/metas/<clip key>.txt                  the instruction

Each clip becomes one "episode" of that layout. Motus also wants `umt5_wan/<key>.pt` text embeddings,
which need the Wan UMT5 text encoder; they are not written here (the trainer computes them when
`enable_t5_fallback` is on).
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds
from tqdm import tqdm

from pyramid.paths import safe_name


def build_shards(build_dir: Path) -> list[Path]:
    shards = sorted(Path(build_dir).glob("webdataset/level*/shard-*.tar"))
    if not shards:
        raise FileNotFoundError(f"{build_dir}: no WebDataset shards (is this a finished `pyramid build` output?)")
    return shards


def build_samples(shards: list[Path]) -> Iterator[dict]:
    for shard in shards:
        yield from wds.WebDataset(str(shard), shardshuffle=False, empty_check=False)


def export_motus(build_dir: Path, out_dir: Path, progress: bool = True) -> dict[str, int]:
    shards = build_shards(build_dir)
    out_dir = Path(out_dir)
    for folder in ("videos", "latent_action_dim14", "metas"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    counts = {"clips": 0, "latent_actions": 0, "refused": 0}
    for sample in tqdm(build_samples(shards), desc="export", unit="clip", disable=not progress):
        try:
            wrote_latents = _export_sample(out_dir, sample)
        except ValueError as exc:  # a key that is no file name: it would write outside out_dir
            warn(f"{sample.get('__url__', build_dir)}: sample skipped: {exc}")
            counts["refused"] += 1
            continue
        counts["latent_actions"] += wrote_latents
        counts["clips"] += 1
    return counts


def _export_sample(out_dir: Path, sample: dict) -> bool:
    key = safe_name(str(sample["__key__"]), "sample key")
    meta = json.loads(sample["json"])
    _write(out_dir / "videos" / f"{key}.mp4", sample["mp4"])
    _write(out_dir / "metas" / f"{key}.txt", (meta.get("task") or "").encode())
    if "latent_actions.npy" not in sample:
        return False
    latents = np.load(io.BytesIO(sample["latent_actions.npy"]), allow_pickle=False)
    buffer = io.BytesIO()
    torch.save(torch.from_numpy(latents.astype(np.float32)), buffer)
    _write(out_dir / "latent_action_dim14" / f"{key}.pt", buffer.getvalue())
    return True


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
