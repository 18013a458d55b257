"""One flow path for builds and the VAE: stored frames, pair actions, recorded settings, label shares, the flow-grid baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

import flow
from latent_action.config import parse_config
from latent_action.evaluation import flow_grid
from latent_action.pairs import FlowSettings, PairTable, heldout_episodes, hide_labels
from latent_action.presets import build_vae
from pyramid.clips import pair_actions, stored_frames_of
from pyramid.errors import BuildError
from pyramid.pipeline import check_vae_config
from pyramid.recipe import Recipe


def test_pair_action_is_the_mean_of_the_source_actions_the_pair_spans():
    actions = np.arange(12, dtype=np.float32)[:, None] * [1.0, -2.0]
    assert np.array_equal(pair_actions(actions, np.arange(12), 1), actions[:-1])  # source rate: actions[t]
    rate, indices = stored_frames_of(12, 30.0, 10.0)
    assert rate == 10.0 and indices.tolist() == [0, 3, 6, 9]
    assert pair_actions(actions, indices, 1)[:, 0].tolist() == [1.0, 4.0, 7.0]  # mean of actions 0-2, 3-5, 6-8
    assert pair_actions(actions, indices, 2)[:, 1].tolist() == [-5.0, -11.0]  # mean of 0-5 and 3-8, times -2


def labelled_pairs(episodes: int, pairs: int, name: str = "ep{}") -> PairTable:
    """`pairs` labelled pairs of each of `episodes` episodes, named `name.format(index)`."""
    table = PairTable()
    for episode in range(episodes):
        for pair in range(pairs):
            table.append(name.format(episode), "s", "arm", pair, np.zeros(3, np.float32))
    return table


def test_label_share_is_deterministic_nested_and_by_episode_when_asked():
    def table() -> PairTable:
        return labelled_pairs(20, 50)

    kept = {}
    for share in (0.0, 0.025, 0.1, 0.5, 1.0):
        t = table()
        hidden = hide_labels(t, np.arange(len(t)), share, "pairs", seed=0)
        kept[share] = set(np.flatnonzero(t.labelled))
        assert hidden == len(t) - len(kept[share])
        assert abs(len(kept[share]) / len(t) - share) < 0.03
    assert kept[0.0] == set() and kept[0.025] <= kept[0.1] <= kept[0.5] <= kept[1.0]
    again = table()
    hide_labels(again, np.arange(len(again)), 0.1, "pairs", seed=0)
    assert set(np.flatnonzero(again.labelled)) == kept[0.1]
    other_seed = table()
    hide_labels(other_seed, np.arange(len(other_seed)), 0.1, "pairs", seed=1)
    assert set(np.flatnonzero(other_seed.labelled)) != kept[0.1]
    by_episode = table()
    hide_labels(by_episode, np.arange(500), 0.5, "episodes", seed=0)  # only the first 10 episodes are candidates
    labelled_episodes = {by_episode.episode_id[i] for i in np.flatnonzero(by_episode.labelled)}
    for episode in labelled_episodes - {f"ep{e}" for e in range(10, 20)}:
        assert all(by_episode.action[i] is not None for i in range(len(by_episode)) if by_episode.episode_id[i] == episode)
    assert all(by_episode.action[i] is not None for i in range(500, 1000))  # not a candidate: untouched


def test_a_share_of_episodes_keeps_that_many_episodes_whole():
    """By episodes, the share is met to the episode (a hash drawn per episode strays: 39 of 225 at 10% in one
    MetaWorld split), nested across shares, and other episodes lose every action."""
    def table() -> PairTable:
        return labelled_pairs(225, 3, "lerobot-metaworld-episodes_{:06d}")

    kept = {}
    for share in (0.025, 0.1, 0.5):
        t = table()
        hidden = hide_labels(t, np.arange(len(t)), share, "episodes", seed=0)
        kept[share] = {t.episode_id[i] for i in np.flatnonzero(t.labelled)}
        assert len(kept[share]) == int(share * 225 + 0.5) and hidden == 3 * (225 - len(kept[share]))
        assert all(t.labelled[i] == (t.episode_id[i] in kept[share]) for i in range(len(t)))
    assert kept[0.025] <= kept[0.1] <= kept[0.5]


def test_flow_grid_averages_each_cell():
    flows = np.zeros((1, 8, 8, 2), np.float32)
    flows[0, :2, :2] = (4.0, -4.0)  # top-left cell of a 4x4 grid
    features = flow_grid(flows, 4)
    assert features.shape == (1, 32) and features[0, :2].tolist() == [4.0, -4.0] and not features[0, 2:].any()


def test_flow_options_are_checked_against_the_backend():
    assert flow.resolved_options("dis", {"threads": 3}) == {"preset": "balanced", "scale": 1.0}
    assert flow.resolved_options("dis:fast")["preset"] == "fast"
    Recipe(sources=[{"kind": "videos", "root": "x"}], output="o", flow={"backend": "farneback"})  # loads and runs as is
    with pytest.raises(ValueError, match="flow backend 'farneback' has no option preset"):
        Recipe(sources=[{"kind": "videos", "root": "x"}], output="o", flow={"backend": "farneback", "options": {"preset": "fast"}})
    with pytest.raises(ValueError, match="has no option presett"):
        parse_config({"data": {"sources": [{"root": "x"}], "flow": {"options": {"presett": "fast"}}}, "run": {"out_dir": "o"}})


def saved_vae(tmp_path, **flow_settings):
    settings = {"flow_backend": "dis", "flow_fps": 10.0, "flow_stride": 1, "frame_height": 384, "frame_width": 320,
                "flow_options": flow.resolved_options("dis", {}), **flow_settings}
    directory = tmp_path / "vae"
    build_vae("tiny", **settings).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("settings, recipe_changes, words", [
    ({"flow_fps": 30.0}, {}, "trained on frames at 30 fps, the recipe stores 10 fps"),
    ({"flow_fps": None}, {}, "trained on every source frame"),
    ({"flow_stride": 2}, {}, "trained on pairs 2 stored frame(s) apart, the recipe's flow stride is 1"),
    ({}, {"flow": {"backend": "dis", "options": {"preset": "fast"}}}, "the recipe's resolve to {'preset': 'fast'"),
    ({"frame_height": 192}, {}, "trained on flow at 192x320, the recipe stores 384x320"),
    ({"flow_still_threshold": 6.0}, {}, "trained with flow.still_threshold/still_radius 6/6, the recipe's are 0/6"),
    ({}, {"flow": {"backend": "dis", "still_threshold": 4}}, "trained with flow.still_threshold/still_radius 0/6, the recipe's are 4/6"),
])
def test_a_build_refuses_a_vae_trained_on_other_flow_before_ray_starts(tmp_path, settings, recipe_changes, words):
    vae = saved_vae(tmp_path, **settings)
    recipe = Recipe(sources=[{"kind": "videos", "root": str(tmp_path)}], output=str(tmp_path / "out"), vae=str(vae), **recipe_changes)
    with pytest.raises(BuildError, match="VAE does not match the recipe") as caught:
        check_vae_config(recipe)
    assert words in str(caught.value)


def test_a_build_takes_a_vae_trained_on_its_flow(tmp_path):
    vae = saved_vae(tmp_path)
    check_vae_config(Recipe(sources=[{"kind": "videos", "root": str(tmp_path)}], output=str(tmp_path / "out"), vae=str(vae),
                            flow={"backend": "dis", "options": {"preset": "balanced", "threads": 2}}))
    assert json.loads((vae / "config.json").read_text())["flow_fps"] == 10.0
    assert FlowSettings.of_vae(json.loads((vae / "config.json").read_text())).fps == 10.0


def test_a_build_takes_a_vae_trained_with_its_still_mask_and_old_vaes_mean_no_mask(tmp_path):
    vae = saved_vae(tmp_path, flow_still_threshold=6.0, flow_still_radius=4)
    recipe = Recipe(sources=[{"kind": "videos", "root": str(tmp_path)}], output=str(tmp_path / "out"), vae=str(vae),
                    flow={"backend": "dis", "still_threshold": 6, "still_radius": 4})
    check_vae_config(recipe)
    settings = FlowSettings.of_vae(json.loads((vae / "config.json").read_text()))
    assert (settings.still_threshold, settings.still_radius) == (6.0, 4)
    config = json.loads((vae / "config.json").read_text())
    del config["flow_still_threshold"], config["flow_still_radius"]  # a VAE saved before the mask existed
    assert FlowSettings.of_vae(config).still_threshold == 0.0


def test_still_mask_keeps_no_recipe_fingerprint_change_at_its_default(tmp_path):
    base = {"sources": [{"kind": "videos", "root": str(tmp_path)}], "output": str(tmp_path / "out")}
    plain = Recipe(**base).content_fingerprint()
    assert Recipe(**base, flow={"still_threshold": 0, "still_radius": 6}).content_fingerprint() == plain
    assert Recipe(**base, flow={"still_threshold": 6}).content_fingerprint() != plain


def pairs_of_tasks(tasks: dict[str, int], labelled: bool = True) -> PairTable:
    """Two pairs of each of `count` episodes of each task, named `<task>-<n>`."""
    table = PairTable()
    for task, count in tasks.items():
        for episode in range(count):
            for pair in range(2):
                table.append(f"{task}-{episode}", "s", "arm", pair, np.zeros(3, np.float32) if labelled else None, task=task)
    return table


def test_holding_out_by_tasks_keeps_every_episode_of_a_share_of_the_tasks_out():
    table = pairs_of_tasks({f"task {n}": 5 for n in range(6)})
    table.append("unlabelled-0", "s", "arm", 0, None, task="task 0")  # a held-out task's unlabelled episode goes too
    task_of = dict(zip(table.episode_id, table.task))
    heldout = heldout_episodes(table, 0.25, "tasks")
    tasks = {task_of[episode] for episode in heldout}
    assert len(tasks) == 2  # round(0.25 x 6)
    assert heldout == {e for e, t in task_of.items() if t in tasks}
    assert ("unlabelled-0" in heldout) == ("task 0" in tasks)
    assert heldout_episodes(table, 0.25, "tasks") == heldout  # deterministic
    assert len({task_of[episode] for episode in heldout_episodes(table, 0.99, "tasks")}) == 5  # never every task
    assert heldout_episodes(table, 0.0, "tasks") == set()
    assert len(heldout_episodes(table, 0.25)) == 8  # by episodes: round(0.25 x 30) of the labelled episodes


def test_holding_out_by_tasks_needs_two_named_tasks():
    with pytest.raises(ValueError, match="two or more named tasks; these name 1$"):
        heldout_episodes(pairs_of_tasks({"pick": 4}), 0.25, "tasks")
    no_task = pairs_of_tasks({"": 4})
    with pytest.raises(ValueError, match="name 0 \\(a flow.lance records no task: train from data.sources\\)"):
        heldout_episodes(no_task, 0.25, "tasks")
    with pytest.raises(ValueError, match="two or more named tasks"):  # unlabelled tasks cannot be scored
        table = pairs_of_tasks({"pick": 3})
        for pair in range(2):
            table.append("push-0", "s", "arm", pair, None, task="push")
        heldout_episodes(table, 0.5, "tasks")


def test_holding_out_named_tasks_keeps_exactly_those_out():
    table = pairs_of_tasks({f"task {n}": 3 for n in range(4)})
    table.append("unlabelled-0", "s", "arm", 0, None, task="task 1")
    held = heldout_episodes(table, 0.25, "tasks", ["task 1", "task 3"])
    assert held == {f"task {t}-{e}" for t in (1, 3) for e in range(3)} | {"unlabelled-0"}
    assert heldout_episodes(table, 0.0, "tasks", ["task 2"]) == {f"task 2-{e}" for e in range(3)}  # the fraction unused
    with pytest.raises(ValueError, match="no labelled episode has the task 'task 9' \\(the tasks here: 'task 0', 'task 1'"):
        heldout_episodes(table, 0.25, "tasks", ["task 2", "task 9"])
    with pytest.raises(ValueError, match="names every labelled task \\(4\\)"):
        heldout_episodes(table, 0.25, "tasks", [f"task {n}" for n in range(4)])


def test_named_tasks_to_hold_out_need_holdout_by_tasks():
    from latent_action.config import DataConfig

    with pytest.raises(ValueError, match="set holdout_by: tasks as well"):
        DataConfig(sources=[{"root": "data"}], holdout_tasks=["pick"])
    assert DataConfig(sources=[{"root": "data"}], holdout_by="tasks", holdout_tasks=["pick"]).holdout_tasks == ["pick"]
