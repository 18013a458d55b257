"""The trainer's loaders on shards written as pyramid/SHARDS.md specifies, in both formats."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from pyramid.errors import EpisodeError
from recipes.motus.config import DataConfig, FramesConfig, model_config
from recipes.motus.data import (ClipExamples, Normalizer, ResumableSampler, choose_window,
                                example_rng, make_loader, resample_hold, resample_linear, resample_moves, window_frames)
from recipes.motus.shards import LanceClips, WebDatasetClips
from tests.fixtures import shards
from tests.test_video_io import plain_decode

TINY = model_config("tiny")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return shards.build(tmp_path_factory.mktemp("build"))


def examples(build, format="webdataset", targets="actions", **extra):
    return ClipExamples(DataConfig(format=format, root=str(build.root), targets=targets, **extra), TINY)


def test_both_formats_hold_the_same_clips(build):
    web, lance = WebDatasetClips(build.root), LanceClips(build.root)
    assert [m["episode_id"] for m in web.metadata()] == [m["episode_id"] for m in lance.metadata()]
    for index in range(len(web)):
        a, b = web[index], lance[index]
        assert a.key == b.key and a.mp4 == b.mp4
        assert set(a.arrays) == set(b.arrays) == {"actions", "state", "latent_actions"}
        for name in a.arrays:
            np.testing.assert_array_equal(a.arrays[name], b.arrays[name])


def test_both_formats_give_identical_examples(build):
    web, lance = examples(build, "webdataset"), examples(build, "lance")
    for position in range(6):
        item = (position % len(web), position)
        a, b = web[item], lance[item]
        assert a["key"] == b["key"] and a["instruction"] == b["instruction"]
        for name in ("frames", "actions", "action_mask", "state"):
            assert torch.equal(a[name], b[name]), name


def test_an_example_has_a_condition_frame_eight_future_frames_and_48_actions(build):
    example = examples(build)[(0, 0)]
    assert example["frames"].shape == (9, 32, 32, 3) and example["frames"].dtype == torch.uint8
    assert example["actions"].shape == (48, 14) and example["state"].shape == (14,)
    assert example["action_mask"].tolist() == [True] * 7 + [False] * 7
    assert torch.all(example["actions"][:, 7:] == 0)
    assert example["instruction"] in build.metas[example["key"]]["instructions"]


def test_frames_are_the_clip_frames_at_5_hz(build):
    # Stored at 10 Hz, so 5 Hz is every second stored frame from the condition frame.
    assert window_frames(10.0, FramesConfig()) == [0, 2, 4, 6, 8, 10, 12, 14, 16]
    assert window_frames(30.0, FramesConfig()) == [6 * k for k in range(9)]
    data = examples(build, targets="none")
    for position in range(6):
        example = data[(0, position)]
        window = data.window((0, position))[0]
        assert window == choose_window(20, 10.0, TINY.frames, example_rng(data.seed, position), frames_after=20)
        episode = np.concatenate([plain_decode(io.BytesIO(data.clips[clip].mp4)) for clip in (0, 1)])  # its two clips
        assert torch.equal(example["frames"], torch.from_numpy(episode[window.frame_indices]))


def test_actions_are_resampled_to_30_hz_over_the_frames_span_and_normalised(build):
    data = examples(build)
    position = 5
    example = data[(1, position)]
    meta = build.metas[example["key"]]
    window = data.window((1, position))[0]
    times = window.start_time + np.arange(48) / 30.0
    raw = build.arrays[example["key"]]["actions"]  # at 30 Hz from the clip start: row i is time i / 30
    expected = raw[np.round(times * 30).astype(int)]
    low, high = data.normalizer.bounds(meta["embodiment"], "actions", 7)
    np.testing.assert_allclose(example["actions"][:, :7].numpy(), 2 * (expected - low) / (high - low) - 1, atol=1e-5)
    state = build.arrays[example["key"]]["state"][round(window.start_time * 30)]
    low, high = data.normalizer.bounds(meta["embodiment"], "state", 8)
    np.testing.assert_allclose(example["state"][:8].numpy(), 2 * (state - low) / (high - low) - 1, atol=1e-5)


def test_actions_start_at_the_condition_frames_own_source_frame(tmp_path):
    # 15 Hz source stored at 10 fps: stored frame k is source frame rint(1.5 k), not k / 10 s (half the
    # windows would start half a source frame off)
    build = shards.build(tmp_path, episodes=1, clips_per_episode=2, num_frames=24, source_fps=15.0)
    data = ClipExamples(DataConfig(format="webdataset", root=str(build.root), targets="actions"), TINY)
    odd_starts = 0
    for position in range(12):
        example = data[(1, position)]
        meta, raw = build.metas[example["key"]], build.arrays[example["key"]]
        window = data.window((1, position))[0]
        stored = meta["flow"]["pair_range"][0] + window.frame_indices[0]
        condition = int(np.rint(stored * 1.5)) - meta["start_frame"]  # row of the condition frame in actions.npy
        odd_starts += stored % 2
        source_rows = condition + np.arange(48) * 15 / 30
        expected = np.stack([np.interp(source_rows, np.arange(len(raw["actions"])), column) for column in raw["actions"].T], 1)
        low, high = data.normalizer.bounds(meta["embodiment"], "actions", 7)
        np.testing.assert_allclose(example["actions"][:, :7].numpy(), 2 * (expected - low) / (high - low) - 1, atol=1e-5)
        low, high = data.normalizer.bounds(meta["embodiment"], "state", 8)
        np.testing.assert_allclose(example["state"][:8].numpy(), 2 * (raw["state"][condition] - low) / (high - low) - 1, atol=1e-5)
    assert odd_starts  # the windows where k / fps and the source frame differ were checked


def test_displacement_actions_are_resampled_as_moves_that_add_up_to_the_motion(tmp_path):
    """Actions that are moves, at 15 Hz: a 30 Hz step moves half a row's move; the 48 steps add up to the 24 rows."""
    build = shards.build(tmp_path, episodes=1, clips_per_episode=2, num_frames=24, source_fps=15.0)
    embodiment = next(iter(build.metas.values()))["embodiment"]
    config = DataConfig(format="webdataset", root=str(build.root), targets="actions", displacement_actions=[embodiment])
    data, as_targets = ClipExamples(config, TINY), examples(build)
    for position in range(6):
        example = data[(1, position)]
        meta, raw = build.metas[example["key"]], build.arrays[example["key"]]["actions"]
        window = data.window((1, position))[0]
        condition = int(np.rint((meta["flow"]["pair_range"][0] + window.frame_indices[0]) * 1.5)) - meta["start_frame"]
        trained = data.normalizer.denormalize(example["actions"][:, :7].numpy(), embodiment, "actions")
        np.testing.assert_allclose(trained[::2], raw[condition : condition + 24], rtol=1e-4, atol=1e-4)  # a row's units
        moves = data.moves_per_step(trained, 1)
        np.testing.assert_allclose(moves[::2], raw[condition : condition + 24] / 2, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(moves.sum(0), raw[condition : condition + 24].sum(0), rtol=1e-4, atol=1e-4)
        assert not torch.equal(example["actions"], as_targets[(1, position)]["actions"])  # targets are interpolated
    with pytest.raises(EpisodeError, match=f"displacement_actions names tiny_armm, which the build does not hold .*{embodiment}"):
        ClipExamples(config.model_copy(update={"displacement_actions": ["tiny_armm"]}), TINY)


def test_moves_resampled_at_any_rate_keep_the_path():
    moves = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    path = np.concatenate([np.zeros((1, 3)), np.cumsum(moves, 0)])
    times = 0.3 + np.arange(30) / 25.0  # 25 Hz steps from between two 10 Hz rows
    resampled = resample_moves(moves, 10.0, times, 1 / 25.0) * (10.0 / 25.0)
    at = lambda t: np.stack([np.interp(t * 10.0, np.arange(21), column) for column in path.T], 1)  # noqa: E731
    np.testing.assert_allclose(resampled.sum(0), (at(times[-1:] + 1 / 25.0) - at(times[:1]))[0], atol=1e-5)
    np.testing.assert_allclose(resampled, at(times + 1 / 25.0) - at(times), atol=1e-5)
    assert np.all(resample_moves(moves, 10.0, np.array([2.0, 5.0]), 0.04) == 0)  # past the last row: no move


def test_clips_stored_below_the_models_frame_rate_are_skipped_and_counted(tmp_path):
    """A 4 Hz source is stored at 4 fps: a window at 5 Hz would show some stored frames twice."""
    build = shards.build(tmp_path, episodes=1, clips_per_episode=2, num_frames=24, fps=4.0, source_fps=4.0)
    with pytest.raises(EpisodeError, match=r"no usable clips \(\{\"stored below the model's 5 fps\": 2\}\)"):
        examples(build)


def test_resampling_interpolates_actions_and_holds_latent_actions():
    values = np.arange(10, dtype=np.float32)[:, None] * [1.0, -2.0]
    np.testing.assert_allclose(resample_linear(values, 10.0, np.array([0.05, 0.25, 5.0])),
                               [[0.5, -1.0], [2.5, -5.0], [9.0, -18.0]])
    latent = np.arange(4, dtype=np.float32)[:, None]  # pair k covers [k, k+1) / 10 s
    np.testing.assert_array_equal(resample_hold(latent, 10.0, np.array([0.0, 0.099, 0.1, 0.35, 2.0]))[:, 0],
                                  [0, 0, 1, 3, 3])


def test_latent_action_targets_come_from_latent_actions_npy(build):
    data = examples(build, targets="latent_actions")
    example = data[(2, 0)]
    assert example["actions"].shape == (48, 14) and example["action_mask"].all()
    assert "state" not in example  # human video has no robot state; the stage-2 expert runs without a state token
    latent = build.arrays[example["key"]]["latent_actions"]
    low, high = data.normalizer.bounds("tiny_arm", "latent_actions", 14)
    allowed = 2 * (latent - low) / (high - low) - 1
    for row in example["actions"].numpy():  # every step is one of the clip's latent actions, held
        assert np.isclose(allowed, row, atol=1e-5).all(axis=1).any()


def test_clips_too_short_or_without_targets_are_skipped_with_a_reason(tmp_path):
    short = shards.build(tmp_path / "short", episodes=1, clips_per_episode=1, num_frames=12)
    with pytest.raises(EpisodeError, match="shorter than one window"):
        examples(short)
    unlabelled = shards.build(tmp_path / "unlabelled", episodes=1, clips_per_episode=2, latent_actions=False)
    with pytest.raises(EpisodeError, match="no latent actions"):
        examples(unlabelled, targets="latent_actions")
    data = examples(unlabelled, embodiments=["tiny_arm"])
    assert len(data) == 2 and not data.skipped
    strided = shards.build(tmp_path / "strided", episodes=1, clips_per_episode=2, flow_stride=2)
    with pytest.raises(EpisodeError, match=r"manifest.json: the build's flow.stride is 2: its latent actions pair frames"):
        examples(strided, targets="latent_actions")
    assert len(examples(strided)) == 2  # its real actions are as good as any


def test_levels_pick_shard_folders_and_lance_rows(build):
    assert len(WebDatasetClips(build.root, levels=[6])) == len(build.keys)
    with pytest.raises(EpisodeError, match="no shards for levels"):
        WebDatasetClips(build.root, levels=[2])
    with pytest.raises(EpisodeError, match="no clips for levels"):
        LanceClips(build.root, levels=[2])


@pytest.mark.parametrize("content, problem", [(b"\xff\xfe garbage", "cannot read the build manifest"),
                                              (b"[1, 2]", "not a build manifest")])
def test_a_damaged_manifest_is_named(tmp_path, content, problem):
    path = tmp_path / "manifest.json"
    path.write_bytes(content)
    with pytest.raises(EpisodeError, match=f"manifest.json: {problem}"):
        Normalizer(path)


def test_missing_normalisation_statistics_name_the_manifest(build, tmp_path):
    manifest = json.loads((build.root / "manifest.json").read_text())
    del manifest["normalization"]["tiny_arm"]["actions"]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(EpisodeError, match="manifest.json: no q01/q99 normalisation statistics for tiny_arm actions"):
        Normalizer(path).normalize(np.zeros((2, 7), np.float32), "tiny_arm", "actions")


def test_a_second_action_width_of_one_embodiment_is_normalised_by_its_own_statistics(tmp_path):
    # what finalize writes when two datasets name one robot alike but record 3-D and 2-D actions
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"normalization": {"arm": {
        "actions": {"q01": [0.0, 0.0, 0.0], "q99": [1.0, 1.0, 1.0]},
        "actions@2d": {"q01": [10.0, -10.0], "q99": [20.0, 10.0]}}}}))
    normalizer = Normalizer(path)
    np.testing.assert_allclose(normalizer.normalize(np.array([[15.0, 0.0]]), "arm", "actions"), [[0.0, 0.0]])
    np.testing.assert_allclose(normalizer.normalize(np.array([[0.5, 1.0, 0.0]]), "arm", "actions"), [[0.0, 1.0, -1.0]])
    np.testing.assert_allclose(normalizer.denormalize(np.array([[0.0, 1.0]]), "arm", "actions"), [[15.0, 10.0]])
    with pytest.raises(EpisodeError, match="no q01/q99 normalisation statistics for arm actions with 1 dims"):
        normalizer.normalize(np.zeros((4, 1)), "arm", "actions")


def test_latent_actions_of_every_embodiment_share_one_normalisation(tmp_path):
    path = tmp_path / "manifest.json"
    per_robot = {"latent_actions": {"q01": [5.0] * 14, "q99": [6.0] * 14}}
    manifest = {"normalization": {"arm": per_robot, "human": per_robot},
                "shared_normalization": {"latent_actions": {"q01": [0.0] * 14, "q99": [2.0] * 14}}}
    path.write_text(json.dumps(manifest))
    for embodiment in ("arm", "human", "video"):  # one latent space: the same motion, the same target
        np.testing.assert_allclose(Normalizer(path).normalize(np.ones((3, 14)), embodiment, "latent_actions"), np.zeros((3, 14)))
    del manifest["shared_normalization"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(EpisodeError, match="manifest.json: no shared_normalization .* run the build again"):
        Normalizer(path).normalize(np.ones((3, 14)), "arm", "latent_actions")


def test_frames_are_resized_to_the_model_size(tmp_path):
    wide = shards.build(tmp_path, episodes=1, clips_per_episode=1, height=48, width=64)
    example = examples(wide, targets="none")[(0, 0)]
    assert example["frames"].shape == (9, 32, 32, 3)


def test_truncated_shard_member_is_an_episode_error(build, tmp_path):
    shard = next((build.root / "webdataset").glob("level*/shard-*.tar"))
    broken = tmp_path / "webdataset" / "level6" / shard.name
    broken.parent.mkdir(parents=True)
    broken.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(EpisodeError, match=shard.name):
        WebDatasetClips(tmp_path)[0]


def test_sampler_resumes_exactly_and_splits_positions_between_ranks():
    stream = ResumableSampler(5, seed=3)
    items = [item for _, item in zip(range(23), stream)]
    assert sorted(i for i, _ in items[:5]) == list(range(5))  # each epoch is a permutation
    resumed = [item for _, item in zip(range(10), ResumableSampler(5, seed=3, start=13))]
    assert resumed == items[13:23]
    rank1 = [item for _, item in zip(range(4), ResumableSampler(5, seed=3, start=2, rank=1, world_size=2))]
    assert rank1 == [items[3], items[5], items[7], items[9]]


def test_loader_batches_and_workers_agree(build):
    data = examples(build, "lance")
    inline = next(iter(make_loader(data, 2, seed=1)))
    threaded = next(iter(make_loader(data, 2, seed=1, num_workers=1)))
    assert inline["key"] == threaded["key"]
    assert torch.equal(inline["frames"], threaded["frames"]) and torch.equal(inline["actions"], threaded["actions"])


def test_the_trainer_reads_only_what_the_build_schema_defines():
    from pyramid.schema import CLIP_JSON, CLIP_SCHEMA
    from recipes.motus.shards import ARRAY_FIELDS, METADATA_FIELDS

    assert set(METADATA_FIELDS) <= set(CLIP_JSON)
    assert ARRAY_FIELDS == ("actions", "state", "latent_actions")
    assert {f"{name}_npy" for name in ARRAY_FIELDS} | {"key", "video"} <= set(CLIP_SCHEMA.names)


def test_a_window_may_start_anywhere_in_an_episode_and_run_into_its_next_clip(tmp_path):
    """As Motus's loaders draw a window anywhere in an episode: windows inside 20-frame clips would start only in the
    first 4 frames of each (a 17-frame window at 10 fps)."""
    build = shards.build(tmp_path, episodes=1, clips_per_episode=3, num_frames=20)
    data = examples(build)
    assert data.following == {0: 1, 1: 2} and len(data) == 3  # the last clip starts windows in its first 4 frames
    episode = np.concatenate([plain_decode(io.BytesIO(data.clips[clip].mp4)) for clip in range(3)])
    actions = np.concatenate([build.arrays[key]["actions"] for key in build.keys])  # 30 Hz rows of the whole episode
    starts = set()
    for position in range(400):
        index = position % 2  # clips 0 and 1: windows from any of their frames
        window = data.window((index, position))[0]
        first = 20 * index + window.frame_indices[0]  # the condition frame in the episode
        starts.add(first)
        example = data[(index, position)]
        assert torch.equal(example["frames"], torch.from_numpy(episode[[20 * index + i for i in window.frame_indices]]))
        expected = actions[np.round(first * 3 + np.arange(48)).astype(int)]  # stored frame k is source frame 3k
        low, high = data.normalizer.bounds("tiny_arm", "actions", 7)
        np.testing.assert_allclose(example["actions"][:, :7].numpy(), 2 * (expected - low) / (high - low) - 1, atol=1e-5)
    assert starts == set(range(40))  # every frame of the first two clips starts a window


def test_windows_stay_inside_clips_across_a_gap_and_for_latent_actions(tmp_path):
    build = shards.build(tmp_path, episodes=1, clips_per_episode=2, num_frames=20)
    assert examples(build, targets="latent_actions").following == {}  # the pair across two clips is in flow.lance alone
    first = dict(build.metas[build.keys[0]])
    second = dict(build.metas[build.keys[1]], start_frame=first["end_frame"] + 30, clip_index=2)  # a static clip left out
    from recipes.motus.data import following_clips

    assert following_clips([first, second]) == {}
    assert following_clips([first, dict(second, start_frame=first["end_frame"], clip_index=1)]) == {0: 1}
