"""The exports of a labelled sample build (tiny VAE, tiny UMT5) and of every source kind.

`pyramid export-motus` is checked file by file against the rules of the original Motus `latent_action` loader
(all four folders, matching stems, tensor shapes and dtypes, enough frames); `pyramid export-lerobot` against the
LeRobot v3.0 schema, our own v3.0 reader and, where it is installed, the `lerobot` library itself.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import lance
import numpy as np
import pytest
import torch
import webdataset as wds
import yaml

import flow
from latent_action.action_space import ActionNormalizer
from latent_action.presets import build_vae
from pyramid.sample_data import write_sample_data
from pyramid.build_reader import decode_mp4
from pyramid.video_io import probe, read_frames
from tests.fixtures import builder, umt5
from tests.lerobot_video import pyav_video_reader

CLI = [sys.executable, "-m", "pyramid"]
EPISODES, FRAMES = 3, 60  # robot episodes (and one captioned clip), 6 s at 10 fps: long enough for Motus's default sampling (1 + 8 * 6 frames)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("motus")
    sample = write_sample_data(tmp / "sample", robot_episodes=EPISODES, video_clips=1, seed=3, num_frames=FRAMES)
    vae = tmp / "vae"
    build_vae("tiny", flow_backend="dis", flow_fps=10.0, flow_stride=1, frame_height=384, frame_width=320,
              flow_options=flow.resolved_options("dis", {"preset": "medium"})).save_pretrained(vae)
    ActionNormalizer({}).save(vae / "action_normalizer.json")  # an untrained VAE: its latent actions only need a shape here
    recipe = {"sources": [{"kind": "lerobot", "root": str(sample["lerobot"])}, {"kind": "videos", "root": str(sample["videos"]), "level": 2}],
              "output": str(tmp / "build"), "video_size": [384, 320], "fps": 10, "clip_frames": 20, "vae": str(vae),
              "flow": {"backend": "dis", "stride": 1, "options": {"preset": "medium"}},
              "filters": {"min_frames": 8, "static_motion_threshold": 0.0}}
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run([*CLI, "build", str(tmp / "recipe.yaml"), "--quiet", "--workers", "2"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "build", umt5.build(tmp / "wan")


def export(build_dir: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "export-motus", str(build_dir), str(out), *options], capture_output=True, text=True, timeout=600)


def motus_episodes(root: Path) -> list[str]:
    """The stems Motus's scan takes: those that all four folders hold (its leaf test needs the first three folders)."""
    assert all((root / sub).is_dir() for sub in ("videos", "umt5_wan", "latent_action_dim14"))
    stems = [{p.stem for p in (root / sub).iterdir() if p.suffix == suffix}
             for sub, suffix in (("videos", ".mp4"), ("umt5_wan", ".pt"), ("latent_action_dim14", ".pt"), ("metas", ".txt"))]
    assert all(s == stems[0] for s in stems), "every folder must hold the same stems, or Motus drops the odd ones"
    return sorted(stems[0])


def motus_indices(total_frames: int, rate: int, frames: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Motus's LatentActionDataset._select_indices, before its clamping: (video frame indices, latent action indices)."""
    cond = rng.randint(0, max(0, total_frames - 1 - frames * rate))
    return [cond + i * rate for i in range(frames + 1)], [cond + i * rate for i in range(frames)]


def build_clips(build_dir: Path) -> dict[str, list[dict]]:
    clips: dict[str, list[dict]] = {}
    for shard in sorted(build_dir.glob("webdataset/level*/shard-*.tar")):
        for sample in wds.WebDataset(str(shard), shardshuffle=False).decode():
            clips.setdefault(sample["json"]["episode_id"], []).append(sample)
    return clips


@pytest.mark.parametrize("options, rate", [((), 2), (("--downsample-rate", "6"), 6)])
def test_export_is_the_layout_motus_reads(build, tmp_path, options, rate):
    build_dir, encoder = build
    out = tmp_path / "export"
    result = export(build_dir, out, "--text-encoder", str(encoder), *options)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{EPISODES + 1} episodes from {3 * (EPISODES + 1)} clips" in result.stdout and "left out" not in result.stdout
    config = yaml.safe_load((out / "motus_latent_action.yaml").read_text())
    common = config["common"]
    assert (common["global_downsample_rate"], common["num_video_frames"]) == (rate, 8)
    assert (common["video_height"], common["video_width"]) == (384, 320)
    assert config["dataset"] == {"type": "latent_action", "dataset_dir": [str(out.resolve())]}

    manifest = json.loads((build_dir / "manifest.json").read_text())
    shared = manifest["shared_normalization"]["latent_actions"]  # robot episodes and the captioned clip, in one space
    assert shared["count"] == sum(arrays["latent_actions"]["count"] for arrays in manifest["normalization"].values()) > 0
    stems = motus_episodes(out)
    scan = pickle.loads((out / "cached_episodes.v2.pkl").read_bytes())  # our own file: what Motus's scan caches
    assert [entry["episode_name"] for entry in scan] == stems
    assert scan[0] == {"video_path": str(out.resolve() / "videos" / f"{stems[0]}.mp4"), "root": str(out.resolve()),
                       "lang_path": str(out.resolve() / "umt5_wan" / f"{stems[0]}.pt"), "episode_name": stems[0],
                       "latent_action_path": str(out.resolve() / "latent_action_dim14" / f"{stems[0]}.pt"),
                       "text_path": str(out.resolve() / "metas" / f"{stems[0]}.txt")}
    clips = build_clips(build_dir)
    flow_rows = lance.dataset(str(build_dir / "flow.lance")).to_table(columns=["episode_id", "pair_index", "latent_action"]).to_pylist()
    assert len(stems) == EPISODES + 1 and set(stems) == set(clips)
    rng = random.Random(0)
    for stem in stems:
        episode = sorted(clips[stem], key=lambda s: s["json"]["clip_index"])
        total = probe(out / "videos" / f"{stem}.mp4").num_frames
        assert total == sum(c["json"]["num_frames"] for c in episode) == FRAMES >= 1 + 8 * rate

        latents = torch.load(out / "latent_action_dim14" / f"{stem}.pt", weights_only=True)
        assert latents.dtype == torch.float32 and latents.shape == (total - 1, 14)
        pairs = {row["pair_index"]: row["latent_action"] for row in flow_rows if row["episode_id"] == stem}
        assert np.allclose(latents.numpy(), np.array([pairs[t] for t in range(total - 1)]), atol=1e-6)
        first = episode[0]["json"]["num_frames"]  # within a clip, the clip's own latent actions
        assert np.allclose(latents[: first - 1].numpy(), episode[0]["latent_actions.npy"], atol=1e-6)

        embedding = torch.load(out / "umt5_wan" / f"{stem}.pt", weights_only=True)
        assert embedding.dtype == torch.bfloat16 and embedding.ndim == 2 and embedding.shape[1] == umt5.DIM
        lines = (out / "metas" / f"{stem}.txt").read_text().splitlines()
        assert lines == [episode[0]["json"]["task"]] and embedding.shape[0] == len(lines[0].split()) + 1  # words + </s>

        frames = read_frames(out / "videos" / f"{stem}.mp4")
        originals = np.concatenate([decode_mp4(c["mp4"]) for c in episode])
        assert np.abs(frames.astype(int) - originals).mean() < 3  # the same frames, re-encoded once
        for _ in range(20):
            video, actions = motus_indices(total, rate, 8, rng)
            assert max(video) <= total - 1 and max(actions) <= latents.shape[0] - 1  # Motus never clamps: no repeats


def test_export_too_short_for_the_sampling_leaves_episodes_out(build, tmp_path):
    """Every run too short: an error naming the count and the run length the sampling needs, and no export."""
    build_dir, encoder = build
    result = export(build_dir, tmp_path / "export", "--text-encoder", str(encoder), "--downsample-rate", "8")
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"(left out: {EPISODES + 1} too short); a sample of --num-video-frames 8 frames 8 apart needs runs of 65 " \
           "stored frames" in result.stderr
    assert not (tmp_path / "export").exists()


def test_export_without_a_text_encoder_says_what_to_pass(build, tmp_path):
    build_dir, _ = build
    result = export(build_dir, tmp_path / "export")
    assert result.returncode == 2
    assert "--text-encoder PATH" in result.stderr and "umt5_wan" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "export").exists()
    result = export(build_dir, tmp_path / "export", "--text-encoder", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "not a directory" in result.stderr


def test_export_refuses_episode_ids_that_would_leave_the_export(build, tmp_path):
    build_dir, encoder = build
    copy = tmp_path / "build"
    shutil.copytree(build_dir, copy)
    shard = sorted(copy.glob("webdataset/level2/shard-*.tar"))[0]
    members = []
    with tarfile.open(shard) as tar:
        for member in tar:
            data = tar.extractfile(member).read()
            if member.name.endswith(".json"):
                data = json.dumps({**json.loads(data), "episode_id": "../../escaped"}).encode()
            members.append((member.name, data))
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    export_dir = tmp_path / "deep" / "export"
    result = export(copy, export_dir, "--text-encoder", str(encoder))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{EPISODES} episodes" in result.stdout and "1 unsafe id" in result.stdout
    assert "episode id '../../escaped' is not a safe file name" in result.stderr
    assert sorted(p.parent.name for p in tmp_path.rglob("*.mp4")) == ["videos"] * EPISODES
    assert not list(tmp_path.glob("escaped*")) and not list((tmp_path / "deep").glob("escaped*"))


def lerobot_rows(root: Path) -> "pd.DataFrame":
    import pandas as pd

    return pd.concat([pd.read_parquet(path) for path in sorted(root.glob("data/chunk-*/file-*.parquet"))], ignore_index=True)


def check_lerobot_v3(root: Path) -> dict:
    """The documented v3.0 layout (lerobot/datasets, our FORMATS.md section 5): info features are the parquet columns
    plus the videos; episode rows index the frames and the video spans; stats cover every feature; then our reader and
    lerobot's own LeRobotDataset open it."""
    import pandas as pd

    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    rows = lerobot_rows(root)
    videos = {k for k, f in info["features"].items() if f["dtype"] == "video"}
    assert set(info["features"]) - videos == set(rows.columns)
    assert info["total_frames"] == len(rows) and info["total_episodes"] == rows["episode_index"].nunique()
    episodes = pd.read_parquet(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    assert list(episodes["length"]) == list(rows.groupby("episode_index").size())
    for key in videos:
        path = root / info["video_path"].format(video_key=key, chunk_index=0, file_index=0)
        assert len(read_frames(path)) == info["total_frames"]
        assert np.allclose(episodes[f"videos/{key}/to_timestamp"] - episodes[f"videos/{key}/from_timestamp"], episodes["length"] / info["fps"])
    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert set(info["features"]) <= set(stats)
    tasks = pd.read_parquet(root / "meta" / "tasks.parquet")
    assert set(tasks["task_index"]) == set(rows["task_index"])
    result = subprocess.run([*CLI, "inspect", str(root), "--source", "lerobot", "--json"], capture_output=True, text=True, timeout=300)
    listed = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0 and len(listed) == info["total_episodes"] and not [r for r in listed if "error" in r]
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # installed beside ours by `make install`

    dataset = LeRobotDataset(repo_id=f"local/{root.name}", root=root)
    assert dataset.num_frames == info["total_frames"] and dataset.num_episodes == info["total_episodes"]
    assert set(dataset.hf_dataset[len(dataset) - 1]) == set(rows.columns)
    check_lerobot_items(root, info, rows, videos)
    return info


def check_lerobot_items(root: Path, info: dict, rows: "pd.DataFrame", videos: set[str]) -> None:
    """Items as a policy's loader asks for them: a frame before and the current one of every camera, and an action chunk
    reaching past the episode, at the first, a middle and the last frame of each episode. lerobot finds every frame at
    its timestamp (within its 1e-4 s), returns the export's own frames and pads outside the episode."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    fps, chunk = info["fps"], 4
    delta = {key: [-1 / fps, 0.0] for key in videos}
    if "action" in info["features"]:
        delta["action"] = [step / fps for step in range(chunk)]
    with pyav_video_reader():
        dataset = LeRobotDataset(repo_id=f"local/{root.name}", root=root, delta_timestamps=delta)
        decoded = {key: read_frames(root / info["video_path"].format(video_key=key, chunk_index=0, file_index=0), decord=False)
                   for key in videos}
        by_index = rows.set_index("index")
        for _, episode in rows.groupby("episode_index"):
            first, last = int(episode["index"].min()), int(episode["index"].max())
            for index in sorted({first, (first + last) // 2, last}):
                item = dataset[index]
                for key in videos:
                    assert item[f"{key}_is_pad"].tolist() == [index == first, False]
                    wanted = decoded[key][[max(index - 1, first), index]]
                    assert torch.equal(item[key], torch.from_numpy(wanted).permute(0, 3, 1, 2).float() / 255), (root, key, index)
                if "action" in delta:
                    beyond = [index + step > last for step in range(chunk)]
                    assert item["action_is_pad"].tolist() == beyond
                    expected = np.stack(by_index.loc[[min(index + step, last) for step in range(chunk)], "action"])
                    np.testing.assert_array_equal(item["action"].numpy(), expected)


def test_export_lerobot_of_a_labelled_build(build, tmp_path):
    build_dir, _ = build
    out = tmp_path / "lerobot"
    out.mkdir()  # an empty OUT is as good as none
    result = subprocess.run([*CLI, "export-lerobot", str(build_dir), str(out), "--codec", "libx264"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "1 episodes" in result.stdout and "--embodiment" in result.stdout  # the level-2 clip came first
    result = subprocess.run([*CLI, "export-lerobot", str(build_dir), str(out), "--codec", "libx264", "--embodiment", "sample_arm", "--overwrite"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{EPISODES} episodes" in result.stdout and "1 other embodiment" in result.stdout
    info = check_lerobot_v3(out)
    assert info["features"]["latent_action"]["shape"] == [14] and info["fps"] == 10
    rows = lerobot_rows(out)
    clips = build_clips(build_dir)
    flow_rows = lance.dataset(str(build_dir / "flow.lance")).to_table(columns=["episode_id", "pair_index", "latent_action"]).to_pylist()
    robot_ids = sorted(i for i in clips if i.startswith("lerobot-"))
    for index, episode_id in enumerate(robot_ids):  # written in build order: the robot episodes, by id
        episode = rows[rows["episode_index"] == index]
        assert len(episode) == FRAMES - 1  # the last stored frame starts no pair, so it has no latent action
        pairs = {r["pair_index"]: r["latent_action"] for r in flow_rows if r["episode_id"] == episode_id}
        np.testing.assert_allclose(np.stack(episode["latent_action"]), [pairs[t] for t in range(FRAMES - 1)], atol=1e-6)
        ordered = sorted(clips[episode_id], key=lambda s: s["json"]["clip_index"])
        state = np.concatenate([c["state.npy"] for c in ordered])
        actions = np.concatenate([c["actions.npy"] for c in ordered])
        np.testing.assert_allclose(np.stack(episode["observation.state"]), state[: FRAMES - 1], atol=1e-6)  # stored at the source's 10 fps
        np.testing.assert_allclose(np.stack(episode["action"]), actions[: FRAMES - 1], atol=1e-6)


def test_export_lerobot_of_a_build_fits_its_frames_to_the_size_asked_for(build, tmp_path):
    from pyramid.resize import resize_frames
    from pyramid.video_io import read_clip

    build_dir, _ = build
    out = tmp_path / "lerobot"
    result = subprocess.run([*CLI, "export-lerobot", str(build_dir), str(out), "--codec", "libx264", "--embodiment",
                             "sample_arm", "--size", "160x192", "--resize", "crop"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    info = check_lerobot_v3(out)
    [key] = [key for key, feature in info["features"].items() if feature["dtype"] == "video"]
    assert info["features"][key]["shape"][:2] == [160, 192]
    exported = read_frames(out / info["video_path"].format(video_key=key, chunk_index=0, file_index=0))
    first = min((c for i, clips in build_clips(build_dir).items() if i.startswith("lerobot-") for c in clips),
                key=lambda c: (c["json"]["episode_id"], c["json"]["clip_index"]))
    stored = read_clip(first["mp4"], range(first["json"]["num_frames"]), "clip")
    # 7 at x264's quality on the sample's texture; padded, 50, stretched, 28
    assert np.abs(exported[: len(stored)].astype(int) - resize_frames(stored, (160, 192), "crop")).mean() < 10


def rebuild(build_dir: Path, name: str, flow_changes: dict, vae: Path | None = None) -> Path:
    """The fixture's robot episodes built again with other flow settings (and another VAE when given)."""
    recipe = yaml.safe_load((build_dir.parent / "recipe.yaml").read_text())
    recipe.update(sources=recipe["sources"][:1], output=str(build_dir.parent / name), vae=str(vae or recipe["vae"]))
    recipe["flow"].update(flow_changes)
    path = build_dir.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = subprocess.run([*CLI, "build", str(path), "--quiet", "--workers", "2"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return build_dir.parent / name


def test_a_labelled_build_without_stored_flow_exports_each_clip_with_its_own_latent_actions(build, tmp_path):
    # the latent action from one clip's last frame to the next clip's first is only in flow.lance
    build_dir, encoder = build
    no_flow = rebuild(build_dir, "no_flow", {"store": False})
    assert not (no_flow / "flow.lance").exists()
    clips = build_clips(no_flow)
    result = export(no_flow, tmp_path / "motus", "--text-encoder", str(encoder))
    assert result.returncode == 0, result.stderr[-3000:]
    stems = motus_episodes(tmp_path / "motus")
    assert stems == sorted(f"{episode_id}_c{c['json']['clip_index']:04d}" for episode_id in clips for c in clips[episode_id])
    for episode_id, episode in clips.items():
        for clip in episode:
            latents = torch.load(tmp_path / "motus/latent_action_dim14" / f"{episode_id}_c{clip['json']['clip_index']:04d}.pt", weights_only=True)
            np.testing.assert_array_equal(latents.numpy(), clip["latent_actions.npy"])

    result = subprocess.run([*CLI, "export-lerobot", str(no_flow), str(tmp_path / "lerobot"), "--codec", "libx264"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{len(stems)} episodes" in result.stdout and "left out" not in result.stdout
    rows = lerobot_rows(tmp_path / "lerobot")
    ordered = [c for episode_id in sorted(clips) for c in sorted(clips[episode_id], key=lambda c: c["json"]["clip_index"])]
    for index, clip in enumerate(ordered):
        np.testing.assert_allclose(np.stack(rows[rows["episode_index"] == index]["latent_action"]), clip["latent_actions.npy"], atol=1e-6)


def test_export_lerobot_of_a_labelled_stride_2_build_leaves_latent_actions_out_and_says_so(build, tmp_path):
    build_dir, _ = build
    vae = tmp_path / "vae_stride2"
    build_vae("tiny", flow_backend="dis", flow_fps=10.0, flow_stride=2, frame_height=384, frame_width=320,
              flow_options=flow.resolved_options("dis", {"preset": "medium"})).save_pretrained(vae)
    ActionNormalizer({}).save(vae / "action_normalizer.json")
    stride_2 = rebuild(build_dir, "stride_2", {"stride": 2, "store": False}, vae)
    out = tmp_path / "lerobot"
    result = subprocess.run([*CLI, "export-lerobot", str(stride_2), str(out), "--codec", "libx264"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{EPISODES} episodes, {EPISODES * FRAMES} frames" in result.stdout
    assert "latent actions left out: the build's flow stride is 2" in result.stdout
    assert "latent_action" not in check_lerobot_v3(out)["features"]


@pytest.mark.parametrize("kind", ["agibot", "egodex", "lerobot", "robomind", "robotwin", "videos"])
def test_export_lerobot_of_each_source_kind(kind, tmp_path):
    from pyramid.sinks.lerobot_export import LeRobotExport, whole_rate
    from pyramid.sources import get_source

    root = tmp_path / kind
    builder(kind)(root)
    out = tmp_path / "exported"
    result = subprocess.run([*CLI, "export-lerobot", str(root), str(out), "--codec", "libx264"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    info = check_lerobot_v3(out)
    reader = get_source(kind)(root)
    first = None
    for ref in reader.discover():  # the first episode the export can take: readable, every camera decodes, a whole fps near its own
        try:
            episode = reader.load(ref)
            [episode.frames(camera) for camera in episode.cameras]
        except Exception:  # noqa: BLE001 - the fixtures hold corrupt episodes too; the export left them out
            continue
        if whole_rate(episode.fps, LeRobotExport()) is not None:
            first = episode
            break
    assert info["fps"] == whole_rate(first.fps, LeRobotExport())
    assert {k for k, f in info["features"].items() if f["dtype"] == "video"} == {f"observation.images.{c}" for c in first.cameras}
    rows = lerobot_rows(out)
    first_rows = rows[rows["episode_index"] == 0]
    assert len(first_rows) == first.num_frames
    if first.state is not None:
        np.testing.assert_allclose(np.stack(first_rows["observation.state"]), first.state, atol=1e-5)
    camera = next(iter(first.cameras))
    video = read_frames(out / info["video_path"].format(video_key=f"observation.images.{camera}", chunk_index=0, file_index=0))
    source = first.frames(camera)
    height, width = video.shape[1:3]
    assert np.abs(video[: first.num_frames].astype(int) - source[:, :height, :width]).mean() < 10  # H.264 on 32x40 frames


def tree_digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_lerobot_never_writes_over_its_input_or_a_directory_it_did_not_write(tmp_path):
    sample = write_sample_data(tmp_path / "sample", robot_episodes=2, video_clips=1, seed=1, num_frames=20)
    before = tree_digest(tmp_path / "sample")
    kept = tmp_path / "notes"
    kept.mkdir()
    (kept / "precious.txt").write_text("keep me")
    for out, words in [(sample["lerobot"], "overlaps the input"), (tmp_path / "sample", "overlaps the input"),
                       (sample["lerobot"] / "export", "overlaps the input"), (kept, "holds no meta/info.json")]:
        result = subprocess.run([*CLI, "export-lerobot", str(sample["lerobot"]), str(out), "--overwrite"],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert tree_digest(tmp_path / "sample") == before and (kept / "precious.txt").read_text() == "keep me"


def test_export_motus_replaces_only_an_earlier_export_and_never_its_build(build, tmp_path):
    build_dir, encoder = build
    out = tmp_path / "export"
    assert export(build_dir, out, "--text-encoder", str(encoder)).returncode == 0
    stale = out / "videos" / "from-an-earlier-export.mp4"
    stale.write_bytes(b"")
    result = export(build_dir, out, "--text-encoder", str(encoder))
    assert result.returncode == 2 and "already exists (pass --overwrite" in result.stderr
    result = export(build_dir, out, "--text-encoder", str(encoder), "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not stale.exists() and len(motus_episodes(out)) == EPISODES + 1
    for inside in (build_dir, build_dir / "motus"):
        result = export(build_dir, inside, "--text-encoder", str(encoder), "--overwrite")
        assert result.returncode == 2 and "overlaps the input" in result.stderr
    assert not (build_dir / "videos").exists() and not (build_dir / "motus").exists()
    result = export(build_dir, tmp_path / "other", "--text-encoder", str(encoder), "--device", "banana")
    assert result.returncode == 2 and "--device: device 'banana' is not one of" in result.stderr


def test_export_motus_leaves_out_as_it_was_until_the_new_export_is_whole(build, tmp_path, monkeypatch):
    """Stopped midway (as by a kill), a first export leaves nothing at OUT and an --overwrite leaves the earlier one."""
    from pyramid.sinks import motus_layout

    build_dir, encoder = build
    out, exported, seen = tmp_path / "export", motus_layout._export_run, []

    def stopped_at_the_second_run(*args):
        seen.append(sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else None)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return exported(*args)

    monkeypatch.setattr(motus_layout, "_export_run", stopped_at_the_second_run)
    with pytest.raises(KeyboardInterrupt):
        motus_layout.export_motus(build_dir, out, encoder, progress=False)
    assert seen == [None, None] and os.listdir(tmp_path) == []
    motus_layout.export_motus(build_dir, out, encoder, progress=False)  # its two first runs seen, then whole
    earlier = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        motus_layout.export_motus(build_dir, out, encoder, overwrite=True, progress=False)
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == earlier
    assert seen[0] == seen[1] == sorted(str(p.relative_to(out)) for p in out.rglob("*")) and os.listdir(tmp_path) == ["export"]


def test_export_motus_over_a_link_replaces_the_export_it_points_at(build, tmp_path):
    build_dir, encoder = build
    real, link = tmp_path / "export", tmp_path / "link"
    assert export(build_dir, real, "--text-encoder", str(encoder)).returncode == 0
    (real / "videos" / "from-an-earlier-export.mp4").write_bytes(b"")
    link.symlink_to(real, target_is_directory=True)
    result = export(build_dir, link, "--text-encoder", str(encoder), "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert link.is_symlink() and not (real / "videos" / "from-an-earlier-export.mp4").exists()
    assert len(motus_episodes(real)) == EPISODES + 1


def motus_fresh_scan(root: Path) -> list[dict]:
    """What Motus's LatentActionDataset._scan_all_episodes lists for a leaf folder `root`: the stems all four folders hold."""
    folders = {"videos": ".mp4", "umt5_wan": ".pt", "latent_action_dim14": ".pt", "metas": ".txt"}
    stems = set.intersection(*({p.stem for p in (root / sub).iterdir() if p.name.endswith(suffix)} for sub, suffix in folders.items()))
    return [{"video_path": str(root / "videos" / f"{stem}.mp4"), "lang_path": str(root / "umt5_wan" / f"{stem}.pt"),
             "latent_action_path": str(root / "latent_action_dim14" / f"{stem}.pt"), "text_path": str(root / "metas" / f"{stem}.txt"),
             "root": str(root), "episode_name": stem} for stem in sorted(stems)]


def test_a_moved_export_loads_after_rescan_motus(build, tmp_path):
    """Motus trusts an existing cache and never rescans: after a move the cache must be rewritten for the new place."""
    build_dir, encoder = build
    out, moved = tmp_path / "export", tmp_path / "cluster" / "export"
    result = export(build_dir, out, "--text-encoder", str(encoder))
    assert result.returncode == 0 and "run `pyramid rescan-motus` on it where it lies" in result.stdout, result.stderr[-3000:]
    moved.parent.mkdir()
    shutil.move(out, moved)
    paths = ("video_path", "lang_path", "latent_action_path", "text_path")
    stale = pickle.loads((moved / "cached_episodes.v2.pkl").read_bytes())
    assert stale and not any(Path(entry[key]).is_relative_to(moved.resolve()) for entry in stale for key in paths)
    (moved / "metas" / f"{stale[0]['episode_name']}.txt").unlink()  # a stem missing from one folder: Motus's scan drops it

    result = subprocess.run([*CLI, "rescan-motus", str(moved)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    cache = pickle.loads((moved / "cached_episodes.v2.pkl").read_bytes())
    assert cache == motus_fresh_scan(moved.resolve()) and len(cache) == len(stale) - 1
    assert all(Path(entry[key]).is_file() and Path(entry[key]).is_relative_to(moved.resolve()) for entry in cache for key in paths)
    config = yaml.safe_load((moved / "motus_latent_action.yaml").read_text())
    assert config["dataset"]["dataset_dir"] == [str(moved.resolve())] and config["common"]["num_video_frames"] == 8
    assert f"{len(cache)} episodes under {moved.resolve()}" in result.stdout

    result = subprocess.run([*CLI, "rescan-motus", str(build_dir)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "not a Motus export (no videos/" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    (moved / "motus_latent_action.yaml").unlink()  # written last: an export killed midway, or copied in part
    result = subprocess.run([*CLI, "rescan-motus", str(moved)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no motus_latent_action.yaml, so not a whole export" in result.stderr, result.stderr


def test_export_motus_refuses_frames_and_sizes_motus_model_cannot_use(build, tmp_path):
    """Motus's model (models/motus.py) sizes its latent grid 1 + num_video_frames // 4 by height // 32 x width // 32."""
    build_dir, encoder = build
    for frames in ("6", "10"):
        result = export(build_dir, tmp_path / "export", "--text-encoder", str(encoder), "--num-video-frames", frames)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-3000:]
        assert f"--num-video-frames {frames}: Motus needs a positive multiple of 4" in result.stderr
    copy = tmp_path / "build"
    shutil.copytree(build_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["recipe"]["video_size"] = [400, 320]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = export(copy, tmp_path / "export", "--text-encoder", str(encoder))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-3000:]
    assert "video_size is 400x320; Motus's video_height and video_width must be multiples of 32" in result.stderr
    assert not (tmp_path / "export").exists()
    from pyramid.errors import ExportError
    from pyramid.sinks.motus_layout import check_model_shape

    check_model_shape(build_dir, 8, (384, 320))  # the defaults
    check_model_shape(build_dir, 12, (320, 384))
    for frames, size in ((0, (384, 320)), (8, (384, 336)), (8, (392, 320))):
        with pytest.raises(ExportError):
            check_model_shape(build_dir, frames, size)


def test_both_trainer_formats_list_a_multi_level_build_in_one_order(build):
    from recipes.motus.shards import LanceClips, WebDatasetClips

    build_dir, _ = build
    order = [[(clips[index].meta["level"], clips[index].key) for index in range(len(clips))]
             for clips in (WebDatasetClips(build_dir), LanceClips(build_dir))]
    assert order[0] == order[1] and len({level for level, _ in order[0]}) == 2


def test_export_lerobot_of_a_dataset_lerobot_wrote_gives_back_its_recording(tmp_path):
    """A dataset written by lerobot 0.4.1 itself (AV1 by LeRobot's encoder) exported again: every frame's state,
    action, task and image as recorded."""
    from tests.fixtures.reference.make_lerobot import LENGTHS, expected
    from tests.test_source_lerobot import REFERENCE

    out = tmp_path / "again"
    result = subprocess.run([*CLI, "export-lerobot", str(REFERENCE), str(out), "--codec", "libx264"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == f"{out}: 3 episodes, {sum(LENGTHS)} frames", result.stdout + result.stderr[-3000:]
    info = check_lerobot_v3(out)
    rows = lerobot_rows(out)
    recorded = [expected(index) for index in range(len(LENGTHS))]
    np.testing.assert_array_equal(np.stack(rows["observation.state"]), np.concatenate([r["observation.state"] for r in recorded]))
    np.testing.assert_array_equal(np.stack(rows["action"]), np.concatenate([r["action"] for r in recorded]))
    video = read_frames(out / info["video_path"].format(video_key="observation.images.top", chunk_index=0, file_index=0))
    assert np.abs(video.astype(int) - np.concatenate([r["observation.images.top"] for r in recorded])).mean() < 12  # AV1 then H.264


def test_latent_actions_are_read_one_episode_at_a_time_in_shard_order(build):
    """An export takes each episode's latent actions from one ordered scan per level of flow.lance, never the whole
    table: every episode in the shards gets exactly its rows of flow.lance, and an id that flow.lance lacks (a
    damaged or edited shard) gets none without costing the episodes after it theirs."""
    from pyramid.build_reader import (LOOKAHEAD_EPISODES, PairLatents, build_recipe, build_samples, build_shards, episodes_of,
                                      pair_latents)

    build_dir, _ = build
    table = lance.dataset(str(build_dir / "flow.lance")).to_table(columns=["episode_id", "pair_index", "latent_action"]).to_pylist()
    episodes = [(episode_id, clips[0]["meta"]["level"]) for episode_id, clips in episodes_of(build_samples(build_shards(build_dir)))]
    assert len({level for _, level in episodes}) == 2 and len(episodes) == len({row["episode_id"] for row in table})
    for unknown in (None, "../../escaped"):
        latents = pair_latents(build_dir, build_recipe(build_dir))
        assert isinstance(latents, PairLatents)
        for episode_id, level in episodes:
            if unknown is not None:
                assert latents.episode(unknown, level) is None
            rows = sorted((row["pair_index"], row["latent_action"]) for row in table if row["episode_id"] == episode_id)
            episode = latents.episode(episode_id, level)
            assert [index for index, _ in rows] == list(range(len(episode)))
            np.testing.assert_array_equal(episode, np.array([values for _, values in rows], np.float32))
            assert len(latents.ahead) <= LOOKAHEAD_EPISODES


def test_a_damaged_clip_in_a_shard_leaves_out_its_run_by_name_and_the_exports_go_on(build, tmp_path):
    """A shard whose tar is whole but one clip's mp4 is cut short (a bad sector, a bit flip in transit): both
    exports name the shard and clip in one warning, leave that run out and export the rest."""
    build_dir, encoder = build
    copy = tmp_path / "build"
    shutil.copytree(build_dir, copy)
    shard = sorted(copy.glob("webdataset/level*/shard-*.tar"))[-1]
    with tarfile.open(shard) as tar:
        members = [(member.name, tar.extractfile(member).read()) for member in tar]
    damaged = next(name for name, _ in members if name.endswith(".mp4"))
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            data = data[: len(data) // 3] if name == damaged else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    named = f"{shard}:{damaged}"
    result = export(copy, tmp_path / "motus", "--text-encoder", str(encoder))
    assert result.returncode == 0 and "1 unreadable" in result.stdout, result.stdout + result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("warning")] == [
        f"warning: episode left out: {named}: cannot open video (Invalid data found when processing input)"]
    result = subprocess.run([*CLI, "export-lerobot", str(copy), str(tmp_path / "lerobot"), "--codec", "libx264",
                             "--embodiment", "sample_arm"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "1 unreadable" in result.stdout, result.stdout + result.stderr[-3000:]
    assert named in result.stderr
    check_lerobot_v3(tmp_path / "lerobot")


def test_lerobot_export_stores_a_near_whole_rate_and_says_so():
    from pyramid.sinks.lerobot_export import LeRobotExport, whole_rate

    summary = LeRobotExport()
    assert whole_rate(30.0, summary) == 30 and summary.notes == []
    assert whole_rate(250 / 15, summary) == 17 and whole_rate(250 / 15, summary) == 17  # RoboTwin: noted once
    assert summary.notes == ["episodes recorded at 16.67 fps are stored at 17 fps (LeRobot keeps a whole frame rate): "
                             "their timestamps are 2.0% off the recording's clock"]
    assert whole_rate(1.5, summary) is None and whole_rate(2.5, summary) is None  # too far from any whole rate


def exported_lines(source: Path, out: Path) -> list[str]:
    """What `pyramid export-lerobot SOURCE OUT` (H.264) prints, once it has succeeded."""
    result = subprocess.run([*CLI, "export-lerobot", str(source), str(out), "--codec", "libx264"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def test_export_lerobot_of_videos_at_two_sizes_names_the_size_it_kept(tmp_path):
    """A LeRobot dataset holds one frame size per camera. Phone clips at two sizes share an embodiment, so the hint to
    pick one with --embodiment (all that was said before) could not help: the count names the frame size."""
    from pyramid.video_io import write_video
    from tests.fixtures.media import moving_square_frames

    write_video(tmp_path / "clips/2024-05-01/a.mp4", moving_square_frames(8, 64, 96), fps=30.0)
    write_video(tmp_path / "clips/2024-05-01/b.mp4", moving_square_frames(8, 64, 96, seed=1), fps=30.0)
    write_video(tmp_path / "clips/2024-05-02/c.mp4", moving_square_frames(8, 48, 64), fps=30.0)
    out = tmp_path / "lerobot"
    assert exported_lines(tmp_path / "clips", out) == [
        f"{out}: 2 episodes, 16 frames; left out: 1 other frame size",
        "(a LeRobot dataset holds one frame size per camera: the first episode's (video 64x96); "
        "--size HEIGHTxWIDTH fits every episode to one)"]


def test_export_lerobot_fits_videos_of_every_size_to_the_size_asked_for(tmp_path):
    """With --size, phone clips at two sizes are all exported: each fitted as a build fits it (pyramid.resize)."""
    from pyramid.resize import resize_frames
    from pyramid.video_io import write_video
    from tests.fixtures.media import moving_square_frames

    sources = {"2024-05-01/a.mp4": moving_square_frames(8, 64, 96), "2024-05-02/c.mp4": moving_square_frames(6, 96, 64, seed=1)}
    for relpath, frames in sources.items():
        write_video(tmp_path / "clips" / relpath, frames, fps=30.0, crf=0)
    for fit in ("pad", "crop"):
        out = tmp_path / f"lerobot_{fit}"
        result = subprocess.run([*CLI, "export-lerobot", str(tmp_path / "clips"), str(out), "--codec", "libx264",
                                 "--size", "48x80", "--resize", fit], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.splitlines() == [f"{out}: 2 episodes, 14 frames"]
        info = check_lerobot_v3(out)
        assert info["features"]["observation.images.video"]["shape"][:2] == [48, 80]
        exported = read_frames(out / info["video_path"].format(video_key="observation.images.video", chunk_index=0, file_index=0))
        expected = np.concatenate([resize_frames(frames, (48, 80), fit) for frames in sources.values()])
        assert np.abs(exported.astype(int) - expected).mean() < 10, fit  # 5 at x264's quality; the other fit: 30+

    result = subprocess.run([*CLI, "export-lerobot", str(tmp_path / "clips"), str(tmp_path / "odd"), "--size", "47x80"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and result.stderr.strip() == (
        "error: --size: expected HEIGHTxWIDTH with positive even sides, e.g. 384x320; got '47x80'")
    result = subprocess.run([*CLI, "export-lerobot", str(tmp_path / "clips"), str(tmp_path / "odd"), "--resize", "crop"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and result.stderr.strip() == (
        "error: --resize fits frames to --size: give --size HEIGHTxWIDTH as well")


def test_export_motus_with_every_episode_left_out_fails_and_keeps_the_earlier_export(build, tmp_path):
    """Every run too short for the samples asked: the export said "0 episodes" with exit 0, and wrote a dataset Motus
    trains nothing from."""
    build_dir, encoder = build
    out = tmp_path / "export"
    assert export(build_dir, out, "--text-encoder", str(encoder)).returncode == 0
    before = tree_digest(out)
    for target, extra in ((tmp_path / "new", ()), (out, ("--overwrite",))):
        result = export(build_dir, target, "--text-encoder", str(encoder), "--num-video-frames", "512", *extra)
        last = result.stderr.strip().splitlines()[-1]  # after the progress bars
        assert result.returncode == 2 and last.startswith(f"error: {build_dir}: no episode to export (left out: "), result.stderr
        assert " too short); a sample of " in last and last.endswith("lower --num-video-frames or --downsample-rate")
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "new").exists() and tree_digest(out) == before


def test_export_lerobot_names_the_cameras_it_kept_where_episodes_have_others(tmp_path):
    """An AgiBot episode with a wrist camera more than the first (or a build mixing a T-layout and one camera) was
    left out as "other cameras" with nothing said of which ones the dataset holds."""
    from pyramid.video_io import write_video
    from tests.fixtures import agibot
    from tests.fixtures.media import moving_square_frames

    root = tmp_path / "agibot"
    for episode, cameras in ((5, ["head_color"]), (6, ["head_color", "hand_left_color"])):
        for camera in cameras:
            write_video(root / f"observations/1/{episode}/videos/{camera}.mp4", moving_square_frames(8, 48, 64, seed=episode), 30.0)
        agibot.write_proprio(root / f"proprio_stats/1/{episode}/proprio_stats.h5", agibot.proprio_arrays(8))
    out = tmp_path / "lerobot"
    assert exported_lines(root, out) == [
        f"{out}: 1 episodes, 8 frames; left out: 1 other cameras",
        "(a LeRobot dataset holds one set of cameras: the first episode's (head); export the episodes with other cameras "
        "from a build or dataset of their own)"]
    features = check_lerobot_v3(out)["features"]
    assert [key for key, feature in features.items() if feature["dtype"] == "video"] == ["observation.images.head"]
