"""The hostile corpus: every source at the public release's full path depth, beside a corrupt twin for each
fault a real dump has. `inspect` and `build` must run over all of it without a traceback, list or quarantine
every bad episode with a reason that says what is wrong, and build every good one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import yaml

from pyramid.episode import make_episode_id
from pyramid.errors import EpisodeError
from pyramid.sources import get_source
from tests.fixtures import HostileSpec

CLI = [sys.executable, "-m", "pyramid"]
# root folder name -> (source kind, fixture builder module, builder function)
CORPUS = {
    "egodex": ("egodex", "egodex", "build_hostile"),
    "agibot_world": ("agibot", "agibot", "build_hostile"),
    "robomind": ("robomind", "robomind", "build_hostile"),
    "robotwin2": ("robotwin", "robotwin", "build_hostile"),
    "aloha_v21": ("lerobot", "lerobot", "build_hostile"),
    "pusht_v30": ("lerobot", "lerobot", "build_hostile_v3"),
    "pusht_image_v30": ("lerobot", "lerobot", "build_hostile_v3_images"),
    "agibot_world_any4lerobot": ("lerobot", "lerobot", "build_hostile_a2d"),
    "clips": ("videos", "videos", "build_hostile"),
}


def _build_root(module: str, function: str, root: Path) -> HostileSpec:
    import importlib

    return getattr(importlib.import_module(f"tests.fixtures.{module}"), function)(root)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, tuple[str, Path, HostileSpec]]:
    base = tmp_path_factory.mktemp("hostile")
    built = {}
    for folder, (kind, module, function) in CORPUS.items():
        root = base / folder
        root.mkdir()
        built[folder] = (kind, root, _build_root(module, function, root))
    return built


def _found_at_decode(kind: str, root: Path, relpath: str) -> bool:
    """Whether a fault shows only when frames are decoded (inspect reads metadata only; a build decodes)."""
    reader = get_source(kind)(root)
    ref = next(r for r in reader.discover() if r.relpath == relpath)
    try:
        reader.load(ref)
    except EpisodeError:
        return False
    return True


def test_fixtures_hold_every_fault_class(corpus):
    faults = {case.fault for _, _, spec in corpus.values() for case in spec.bad}
    assert {"nan", "inf", "truncated", "empty", "bad_metadata_line", "implausible_fps", "symlink_loop", "symlink_out",
            "wrong_shape", "wrong_dtype", "missing_feature", "duplicate_id", "mismatched_lengths"} <= faults, faults
    for _, _, spec in corpus.values():
        assert len(spec.good) >= 2


@pytest.mark.parametrize("folder", sorted(CORPUS))
def test_inspect_lists_every_episode_and_names_what_is_wrong(corpus, folder):
    kind, root, spec = corpus[folder]
    result = subprocess.run([*CLI, "inspect", str(root), "--source", kind, "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row["episode_id"], []).append(row)
    for relpath in spec.good:
        listed = by_id[make_episode_id(kind, relpath, root.name)]
        assert "error" not in listed[0], listed
    for case in spec.bad:
        listed = by_id.get(make_episode_id(kind, case.relpath, root.name))
        assert listed, f"{folder}: {case.relpath} ({case.fault}) not listed"
        errors = [row["error"] for row in listed if "error" in row]
        if case.outcome == "failed" and not (case.fault != "duplicate_id" and _found_at_decode(kind, root, case.relpath)):
            assert errors and any(case.words in error and "\n" not in error for error in errors), (case, listed)


@pytest.fixture(scope="module")
def hostile_build(corpus, tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("hostile_build")
    recipe = {
        "sources": [{"kind": kind, "root": str(root)} for kind, root, _ in corpus.values()],
        "output": str(tmp / "out"), "video_size": [64, 96], "fps": 1000, "clip_frames": 4, "shard_size_mb": 0.2,
        "filters": {"min_frames": 3, "static_motion_threshold": 0.0}, "max_failed_fraction": 1.0,
    }
    (tmp / "hostile.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run([*CLI, "build", str(tmp / "hostile.yaml"), "--quiet", "--workers", "2"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-4000:]
    manifest = json.loads((tmp / "out" / "manifest.json").read_text(), parse_constant=_reject_constant)
    return tmp / "out", manifest


def _reject_constant(name: str):
    raise ValueError(f"manifest.json holds {name}: not strict JSON")


def _build_id(corpus, folder: str, relpath: str) -> str:
    kind, root, _ = corpus[folder]
    return make_episode_id(kind, relpath, root.name)


def test_build_quarantines_every_bad_episode_with_its_reason(corpus, hostile_build):
    _, manifest = hostile_build
    reasons: dict[str, list[str]] = {}
    for item in manifest["quarantined"]:
        reasons.setdefault(item["episode_id"].split("-dup")[0], []).append(item["reason"])
    skipped = {item["episode_id"]: item["reason"] for item in manifest["skipped"]}
    for folder, (_, _, spec) in corpus.items():
        for case in spec.bad:
            episode_id = _build_id(corpus, folder, case.relpath)
            if case.outcome == "skipped":
                assert case.words in skipped.get(episode_id, ""), (folder, case)
                continue
            found = reasons.get(episode_id, [])
            assert any(case.words in reason and "\n" not in reason for reason in found), (folder, case, found)


def test_build_keeps_every_good_episode_beside_the_bad_ones(corpus, hostile_build):
    output, manifest = hostile_build
    keys = set()
    for shard in sorted(output.glob("webdataset/level*/shard-*.tar")):
        keys |= {sample["__key__"] for sample in wds.WebDataset(str(shard), shardshuffle=False)}
    built_ids = {key.rsplit("_c", 1)[0] for key in keys}
    good = {_build_id(corpus, folder, relpath) for folder, (_, _, spec) in corpus.items() for relpath in spec.good}
    assert good <= built_ids, sorted(good - built_ids)
    assert manifest["episodes"]["ok"] == len(good)
    assert set(manifest["by_source"]) == {kind for kind, _, _ in corpus.values()}


def test_statistics_never_see_a_non_finite_value(hostile_build):
    _, manifest = hostile_build
    assert manifest["normalization"]
    for embodiment, arrays in manifest["normalization"].items():
        for name, summary in arrays.items():
            for key, value in summary.items():
                assert np.isfinite(np.asarray(value, dtype=np.float64)).all(), (embodiment, name, key)



def test_export_lerobot_leaves_out_a_video_that_breaks_after_frames_were_encoded(tmp_path):
    """A faststart mp4 cut short probes whole and decodes its first chunks: the export encodes those, then finds the
    damage. That episode is named and left out, with nothing of it in the dataset; the episodes around it are kept."""
    from pyramid.clips import DECODE_CHUNK
    from pyramid.video_io import probe, read_frames, write_video
    from tests.fixtures.media import moving_square_frames
    from tests.fixtures.videos import write_truncated_faststart

    root = tmp_path / "clips/kitchen/2024-05-01/cam0"
    good = {"clip_0001.mp4": moving_square_frames(12, 64, 96, seed=1), "clip_0003.mp4": moving_square_frames(9, 64, 96, seed=3)}
    for name, frames in good.items():
        write_video(root / name, frames, fps=30.0)
    broken = write_truncated_faststart(root / "clip_0002.mp4", moving_square_frames(4 * DECODE_CHUNK, 64, 96, seed=2))
    assert probe(broken).num_frames == 4 * DECODE_CHUNK and len(read_frames(broken, range(DECODE_CHUNK))) == DECODE_CHUNK

    out = tmp_path / "lerobot"
    result = subprocess.run([*CLI, "export-lerobot", str(tmp_path / "clips"), str(out), "--codec", "libx264"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: episode left out")]
    assert len(warnings) == 1 and "clip_0002.mp4" in warnings[0] and "video" in warnings[0], result.stderr
    assert result.stderr.strip() == warnings[0]  # none of FFmpeg's own complaints, which name no file
    assert result.stdout.startswith(f"{out}: 2 episodes, 21 frames; left out: 1 unreadable")
    info = json.loads((out / "meta/info.json").read_text())
    assert (info["total_episodes"], info["total_frames"]) == (2, 21)
    video = read_frames(out / "videos/observation.images.video/chunk-000/file-000.mp4")
    expected = np.concatenate(list(good.values()))
    assert video.shape == expected.shape and np.abs(video.astype(int) - expected).mean() < 10
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["file-000.mp4", "file-000.parquet", "file-000.parquet",
                                                                       "info.json", "stats.json", "tasks.parquet"]


@pytest.mark.parametrize("folder", list(CORPUS))
def test_export_lerobot_leaves_out_every_bad_episode_by_name_and_writes_a_whole_dataset(corpus, folder, tmp_path):
    """`export-lerobot` over a hostile dump: each bad episode left out in one warning line with the build's reason,
    nothing else on stderr, and what it wrote is a complete LeRobot v3.0 dataset. Faults found only when frames are
    decoded are left out of this check: an episode another rule leaves out first (a rate or features unlike the
    first episode's) is never decoded; the test above covers them. (Episodes a build skips, too short or static, are
    whole episodes to an export.)"""
    from tests.test_exports import check_lerobot_v3

    kind, root, spec = corpus[folder]
    out = tmp_path / "lerobot"
    result = subprocess.run([*CLI, "export-lerobot", str(root), str(out), "--codec", "libx264", "--source", kind],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = result.stderr.strip().splitlines()
    assert all(line.startswith("warning: episode left out: ") for line in warnings), result.stderr[-3000:]
    failed = [bad for bad in spec.bad if bad.outcome == "failed"]
    for bad in failed:
        if not _found_at_decode(kind, root, bad.relpath):
            assert any(bad.words in line for line in warnings), (bad.relpath, bad.words, result.stderr[-3000:])
    duplicates = sum(bad.fault == "duplicate_id" for bad in spec.bad)
    assert f"{len(warnings) - duplicates} unreadable" in result.stdout and (not duplicates or f"{duplicates} duplicate" in result.stdout)
    info = check_lerobot_v3(out)
    assert 0 < info["total_episodes"] <= len(spec.good) + len(spec.bad) - len(failed)  # a duplicate exported once
