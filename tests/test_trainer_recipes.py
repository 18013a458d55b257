"""The stage recipes follow the paper; loading is strict and reports every bad key. (Every shipped recipe loads:
tests/test_configs.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recipes.motus.config import TrainRecipeError, load_recipe, model_config

RECIPES = Path(__file__).parent.parent / "recipes" / "configs" / "train"


def test_stages_follow_the_paper(monkeypatch):
    monkeypatch.setenv("PYRAMID_OUT", "/data/pyramid")
    stages = {n: load_recipe(RECIPES / f"stage{n}.yaml") for n in (1, 2, 3)}
    assert [stages[n].data.root for n in (1, 2, 3)] == [f"/data/pyramid/stage{n}" for n in (1, 2, 3)]  # as each stage's build writes
    assert stages[1].train.trainable == ["video"] and stages[1].data.targets == "none"
    assert stages[2].data.targets == "latent_actions" and set(stages[2].train.trainable) == {
        "video", "action", "understanding"}
    assert stages[3].data.targets == "actions" and stages[3].data.levels == [6]
    for recipe in stages.values():
        assert recipe.model.action.dim == 1024 and recipe.model.understanding.dim == 512
        assert recipe.model.inference_steps == 10 and recipe.train.timesteps == "logit_normal"


def test_unknown_keys_and_bad_values_are_all_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"preset": "tiny", "action": {"dim": 0, "width": 3}},
        "data": {"format": "tar", "root": "x", "targets": "actions"},
        "train": {"stage": 3, "trainable": ["video"], "output_dir": "o", "steps": 1, "batch_size": 1, "lr": 1e-3,
                  "learning_rate": 1e-3},
    }))
    with pytest.raises(TrainRecipeError) as error:
        load_recipe(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    for fragment in ("model.action.dim", "model.action.width", "data.format", "train.learning_rate"):
        assert fragment in message


def test_presets_take_overrides_and_reject_unknown_names():
    config = model_config({"preset": "tiny", "action": {"dim": 48}, "inference_steps": 4})
    assert config.action.dim == 48 and config.action.ffn_multiplier == 2 and config.inference_steps == 4
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        model_config("huge")
