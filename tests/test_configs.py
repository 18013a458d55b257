"""Every config the project ships loads, and all three kinds share one loader: strict keys, one ${VAR} rule,
paths relative to the file, and an error class of their own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from latent_action.config import VaeConfigError, load_config
from pyramid.recipe import BuildRecipeError, load_recipe as load_build_recipe
from pyramid.yaml_config import ConfigError
from recipes.motus.config import TrainRecipeError, load_recipe as load_train_recipe

REPO = Path(__file__).resolve().parent.parent
FINGERPRINT_BEFORE_REMOVAL = "2a0d95f3e0be5e08"  # measured on main at cad1880
SHIPPED = sorted([*REPO.joinpath("recipes").rglob("*.yaml"), *REPO.joinpath("latent_action", "configs").rglob("*.yaml")])


def loader_of(path: Path):
    """(load function, error class) for a shipped YAML: VAE configs live in latent_action/configs/,
    build recipes are recipes/build_*.yaml, every other recipe trains."""
    if "latent_action" in path.relative_to(REPO).parts:
        return load_config, VaeConfigError
    if path.name.startswith("build_"):
        return load_build_recipe, BuildRecipeError
    return load_train_recipe, TrainRecipeError


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_yaml_loads(path, tmp_path, monkeypatch):
    for name in set(re.findall(r"\$\{(\w+)\}", path.read_text())):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    load, _ = loader_of(path)
    assert load(path) is not None


def test_the_three_kinds_are_shipped():
    kinds = {loader_of(path)[1] for path in SHIPPED}
    assert kinds == {VaeConfigError, BuildRecipeError, TrainRecipeError}
    assert len({error.__name__ for error in kinds}) == 3 and all(issubclass(error, ConfigError) for error in kinds)


def _minimal(kind: type[ConfigError], root: str) -> dict:
    if kind is BuildRecipeError:
        return {"sources": [{"kind": "videos", "root": root}], "output": "out"}
    if kind is VaeConfigError:
        return {"data": {"sources": [{"root": root}]}, "run": {"out_dir": "out"}}
    return {"model": "tiny", "data": {"format": "lance", "root": root, "targets": "none"},
            "train": {"stage": 1, "trainable": ["video"], "output_dir": "out", "steps": 1, "batch_size": 1, "lr": 1e-3}}


def _root(kind: type[ConfigError], loaded) -> Path:
    if kind is BuildRecipeError:
        return Path(loaded.sources[0].root)
    if kind is VaeConfigError:
        return Path(loaded.data.sources[0].root)
    return Path(loaded.data.root)


LOADERS = {BuildRecipeError: load_build_recipe, VaeConfigError: load_config, TrainRecipeError: load_train_recipe}


@pytest.mark.parametrize("kind", list(LOADERS), ids=lambda k: k.__name__)
def test_one_environment_rule_and_one_path_rule(kind, tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_minimal(kind, "${PYRAMID_TEST_DATA}/episodes")))
    monkeypatch.delenv("PYRAMID_TEST_DATA", raising=False)
    with pytest.raises(kind, match=rf"^{re.escape(str(path))}: environment variable\(s\) not set: PYRAMID_TEST_DATA$"):
        LOADERS[kind](path)
    monkeypatch.setenv("PYRAMID_TEST_DATA", "data")
    assert _root(kind, LOADERS[kind](path)) == tmp_path / "data" / "episodes"  # relative to the file


@pytest.mark.parametrize("kind", list(LOADERS), ids=lambda k: k.__name__)
def test_unknown_keys_are_named_on_one_line(kind, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**_minimal(kind, "x"), "colour": 1}))
    with pytest.raises(kind) as caught:
        LOADERS[kind](path)
    assert str(caught.value) == f"{path}: colour: unknown key"


def test_source_options_are_checked_against_the_reader(tmp_path):
    path = tmp_path / "recipe.yaml"
    recipe = {"sources": [{"kind": "robomind", "root": "x", "options": {"fps": 15, "include_failed": True}}], "output": "o"}
    path.write_text(yaml.safe_dump(recipe))
    assert load_build_recipe(path).sources[0].options == {"fps": 15, "include_failed": True}
    recipe["sources"] = [{"kind": "robomind", "root": "x", "options": {"fsp": 15}},
                         {"kind": "robotwin", "root": "x", "options": {"fps": "fast"}},
                         {"kind": "videos", "root": "x", "options": {"fps": 30}}]
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(BuildRecipeError) as caught:
        load_build_recipe(path)
    message = str(caught.value)
    assert "sources.0: options: robomind takes no option 'fsp' (it takes: follow_symlinks, fps, include_failed)" in message
    assert "sources.1: options: option 'fps': " in message
    assert "sources.2: options: videos takes no option 'fps' (it takes: follow_symlinks)" in message


def test_source_weight_is_gone_and_builds_keep_their_fingerprint(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"kind": "videos", "root": "x", "weight": 2.0}], "output": "o"}))
    with pytest.raises(BuildRecipeError, match="sources.0.weight: unknown key"):
        load_build_recipe(path)
    path.write_text(yaml.safe_dump({"sources": [{"kind": "videos", "root": "/data/x"}], "output": "o"}))
    # The fingerprint of this recipe on main before `weight` was removed (its default, 1.0, was hashed).
    assert load_build_recipe(path).content_fingerprint() == FINGERPRINT_BEFORE_REMOVAL
