"""Camera layouts in a build recipe: aspect-preserving resize, a named camera, Motus's T-layout of a 3-camera robot."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import webdataset as wds
import yaml

from pyramid.cameras import t_layout
from pyramid.clips import resize_frames
from pyramid.recipe import Recipe, load_recipe
from pyramid.sources import get_source
from pyramid.video_io import read_frames
from tests.fixtures import builder

CLI = [sys.executable, "-m", "pyramid"]
T_CAMERAS = ["head", "hand_left", "hand_right"]


def square_frame(height: int, width: int, side: int) -> np.ndarray:
    frame = np.zeros((1, height, width, 3), np.uint8)
    top, left = (height - side) // 2, (width - side) // 2
    frame[0, top : top + side, left : left + side] = 255
    return frame


def bright_box(frame: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(frame[..., 0] > 127)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


@pytest.mark.parametrize("fit, box", [("pad", (80, 80)), ("crop", (128, 128))])
def test_resize_keeps_the_aspect_ratio(fit, box):
    frame = square_frame(96, 128, 32)  # a 128x96 camera: stretching to 320x384 would make the square 80 wide, 128 tall
    resized = resize_frames(frame, (384, 320), fit)[0]
    assert resized.shape == (384, 320, 3)
    assert bright_box(resized) == box
    if fit == "pad":  # scaled by 2.5 to 320x240, centred: black bars of 72 rows above and below
        assert resized[:72].max() == 0 and resized[-72:].max() == 0 and resized[72:-72].max() == 255


def test_t_layout_puts_the_head_on_top_and_the_wrists_at_half_size_below():
    rng = np.random.default_rng(0)
    head, left, right = (rng.integers(0, 255, (2, 48, 64, 3), dtype=np.uint8) for _ in range(3))
    composed = t_layout(head, left, right)
    assert composed.shape == (2, 72, 64, 3)
    np.testing.assert_array_equal(composed[:, :48], head)
    np.testing.assert_array_equal(composed[:, 48:, :32], resize_frames(left, (24, 32)))
    np.testing.assert_array_equal(composed[:, 48:, 32:], resize_frames(right, (24, 32)))


def test_recipe_camera_settings_are_checked():
    recipe = Recipe(sources=[{"kind": "agibot", "root": "r", "cameras": {"layout": "t", "names": T_CAMERAS}}], output="o")
    assert recipe.sources[0].cameras.names == tuple(T_CAMERAS) and recipe.resize == "pad"
    with pytest.raises(ValueError, match="names"):
        Recipe(sources=[{"kind": "agibot", "root": "r", "cameras": {"layout": "t", "names": ["head"]}}], output="o")
    with pytest.raises(ValueError, match="resize"):
        Recipe(sources=[{"kind": "agibot", "root": "r"}], output="o", resize="stretch")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cameras")
    builder("agibot")(tmp / "agibot_t")
    shutil.copytree(tmp / "agibot_t", tmp / "agibot_left")
    recipe = {"sources": [{"kind": "agibot", "root": str(tmp / "agibot_t"), "cameras": {"layout": "t", "names": T_CAMERAS}},
                          {"kind": "agibot", "root": str(tmp / "agibot_left"), "cameras": "hand_left"}],
              "output": str(tmp / "out"), "video_size": [96, 64], "fps": 30, "clip_frames": 4, "formats": ["webdataset"],
              "filters": {"min_frames": 3, "static_motion_threshold": 0.0}, "max_failed_fraction": 1.0}
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run([*CLI, "build", str(tmp / "recipe.yaml"), "--quiet", "--workers", "2"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = [s for shard in sorted((tmp / "out").glob("webdataset/level*/shard-*.tar"))
               for s in wds.WebDataset(str(shard), shardshuffle=False)]
    return load_recipe(tmp / "recipe.yaml"), tmp / "out", samples


def first_clip(samples, root_name: str, tmp) -> tuple[dict, np.ndarray]:
    sample = next(s for s in samples if f"-{root_name}-" in s["__key__"] and s["__key__"].endswith("_c0000"))
    path = tmp / f"{sample['__key__']}.mp4"
    path.write_bytes(sample["mp4"])
    return json.loads(sample["json"]), read_frames(path)


def source_episode(recipe, index: int, episode_id: str):
    spec = recipe.sources[index]
    reader = get_source(spec.kind)(spec.root)
    return reader.load(next(ref for ref in reader.discover() if ref.episode_id == episode_id))


def test_a_three_camera_robot_builds_in_t_layout(built, tmp_path):
    recipe, output, samples = built
    meta, frames = first_clip(samples, "agibot_t", tmp_path)
    assert meta["cameras"] == T_CAMERAS and meta["layout"] == "t"
    episode = source_episode(recipe, 0, meta["episode_id"])
    composed = t_layout(*(episode.frames(name, [meta["start_frame"]]) for name in T_CAMERAS))  # 72x64
    expected = resize_frames(composed, (96, 64))  # fitted into 96x64: 12 black rows above and below
    assert frames.shape == (meta["num_frames"], 96, 64, 3)
    assert frames[0, :10].max() < 20 and frames[0, -10:].max() < 20
    assert np.abs(frames[0].astype(int) - expected[0]).mean() < 4
    manifest = json.loads((output / "manifest.json").read_text())
    missing = [q["reason"] for q in manifest["quarantined"] if "agibot_t" in q["episode_id"]]
    assert any("no camera 'hand_left'" in reason and "hand_left_fisheye" in reason for reason in missing)  # the dex-hand episode
    assert (output / "report.html").read_text().count("<img") >= 2


def test_a_named_camera_is_the_one_stored(built, tmp_path):
    recipe, _, samples = built
    meta, frames = first_clip(samples, "agibot_left", tmp_path)
    assert meta["cameras"] == ["hand_left"] and meta["layout"] == "single"
    episode = source_episode(recipe, 1, meta["episode_id"])
    expected = resize_frames(episode.frames("hand_left", [meta["start_frame"]]), (96, 64))
    head = resize_frames(episode.frames("head", [meta["start_frame"]]), (96, 64))
    error = np.abs(frames[0].astype(int) - expected[0]).mean()
    assert error < 4 and error < np.abs(frames[0].astype(int) - head[0]).mean()


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_stored_frames_decoded_in_chunks_are_those_decoded_at_once(built, chunk):
    """decode_stored reads a video once and resizes chunk by chunk: the same frames as decoding all, then resizing."""
    from pyramid.cameras import CameraView
    from pyramid.clips import decode_stored

    recipe = built[0]
    spec = recipe.sources[0]
    reader = get_source(spec.kind)(spec.root)
    episode = next(reader.load(ref) for ref in reader.discover() if set(T_CAMERAS) <= set(reader.load(ref).cameras))
    view = CameraView.of_recipe(spec.cameras, "pad")
    indices = list(range(0, episode.num_frames, 2))
    at_once = resize_frames(view.frames(episode, indices), (96, 64))
    np.testing.assert_array_equal(decode_stored(episode, indices, (96, 64), chunk=chunk, view=view), at_once)
    primary = resize_frames(episode.frames(indices=indices), (96, 64))
    np.testing.assert_array_equal(decode_stored(episode, indices, (96, 64), chunk=chunk), primary)
