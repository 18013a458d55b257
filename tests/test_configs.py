"""Every config the project ships loads with the loader of its kind, and lies in that kind's folder under
recipes/configs/; all three kinds share one loader: strict keys, one ${VAR} rule, paths relative to the file,
and an error class of their own, so a config of the wrong kind is refused on one line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from latent_action.config import VaeConfigError, load_config
from pyramid.recipe import BuildRecipeError, load_recipe as load_build_recipe
from pyramid.yaml_config import ConfigError
from recipes.motus.config import TrainRecipeError, load_recipe as load_train_recipe

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "recipes" / "configs"
FINGERPRINT_BEFORE_REMOVAL = "2a0d95f3e0be5e08"  # measured on main at cad1880
# Each kind folder: the loader of its configs, its error class and the CLI command that takes them.
KINDS = {"build": (load_build_recipe, BuildRecipeError, "build"),
         "train": (load_train_recipe, TrainRecipeError, "train"),
         "vae": (load_config, VaeConfigError, "train-vae")}
SHIPPED = sorted((kind, path) for kind in KINDS for path in (CONFIGS / kind).glob("*.yaml"))
DEMO = {"build": CONFIGS / "build" / "sample.yaml", "train": CONFIGS / "train" / "tiny.yaml", "vae": CONFIGS / "vae" / "tiny.yaml"}


def _with_environment(path: Path, tmp_path: Path, monkeypatch) -> Path:
    for name in set(re.findall(r"\$\{(\w+)\}", path.read_text())):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    return path


def _is_usable(kind: str, loaded) -> bool:
    if kind == "build":
        return bool(loaded.sources and loaded.output)
    if kind == "train":
        return loaded.model.frames.action_chunk == 48 and loaded.model.frames.future_frames == 8
    return loaded.run.out_dir.is_relative_to(REPO / "out")


@pytest.mark.parametrize(("kind", "path"), SHIPPED, ids=lambda value: getattr(value, "name", value))
def test_every_shipped_yaml_loads_with_its_kinds_loader(kind, path, tmp_path, monkeypatch):
    load, _, _ = KINDS[kind]
    assert _is_usable(kind, load(_with_environment(path, tmp_path, monkeypatch)))


def test_every_kind_ships_its_configs():
    names = {kind: {path.stem for shipped_kind, path in SHIPPED if shipped_kind == kind} for kind in KINDS}
    assert names["build"] >= {"sample", "stage1", "stage2", "stage3"}
    assert names["train"] >= {"stage1", "stage2", "stage3", "tiny"}
    assert names["vae"] >= {"tiny", "paper", "metaworld"}


def test_the_three_kinds_are_shipped():
    kinds = {KINDS[kind][1] for kind, _ in SHIPPED}
    assert kinds == {VaeConfigError, BuildRecipeError, TrainRecipeError}
    assert len({error.__name__ for error in kinds}) == 3 and all(issubclass(error, ConfigError) for error in kinds)


def test_every_yaml_lies_in_exactly_one_kind_folder():
    """A YAML anywhere else in the packages (a stray, or one left at an old path) is neither loaded here nor shipped."""
    packages = [REPO / name for name in ("recipes", "latent_action", "pyramid", "flow")]
    found = {path for package in packages for pattern in ("*.yaml", "*.yml") for path in package.rglob(pattern)}
    strays = sorted(str(path.relative_to(REPO)) for path in found
                    if path.suffix != ".yaml" or path.parent.parent != CONFIGS or path.parent.name not in KINDS)
    assert strays == []
    assert len(found) == len(SHIPPED)


def test_the_demos_configs_hand_on_to_each_other_under_out():
    """make demo runs from the repository root: train-vae writes what the build reads, the build what train reads."""
    vae, build, train = (KINDS[kind][0](DEMO[kind]) for kind in ("vae", "build", "train"))
    out = REPO / "out"
    assert [Path(source.root) for source in vae.data.sources] == [out / "sample_data" / "lerobot", out / "sample_data" / "videos"]
    assert [Path(source.root) for source in build.sources] == [out / "sample_data" / "lerobot", out / "sample_data" / "videos"]
    assert vae.run.out_dir == Path(build.vae) == out / "vae-tiny"
    assert Path(build.output) == Path(train.data.root) == out / "sample_pyramid"
    assert Path(train.train.output_dir) == out / "tiny_run"
    metaworld = load_config(CONFIGS / "vae" / "metaworld.yaml")  # the README's `sample-data --sim metaworld out/metaworld_data`
    assert Path(metaworld.data.sources[0].root) == out / "metaworld_data" / "metaworld"


WRONG_KIND = [(kind, path) for kind in KINDS for path in DEMO.values() if path.parent.name != kind]


@pytest.mark.parametrize(("kind", "path"), WRONG_KIND, ids=lambda value: getattr(value, "name", value))
def test_a_config_of_another_kind_is_refused_naming_its_keys(kind, path):
    load, error, _ = KINDS[kind]
    with pytest.raises(error) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    foreign = yaml.safe_load(path.read_text()).keys() - type(load(DEMO[kind])).model_fields.keys()
    assert foreign and all(f"{key}: unknown key" in message for key in foreign)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_cli_refuses_a_config_of_another_kind_on_one_line(kind):
    path = DEMO["train" if kind == "build" else "build"]
    result = subprocess.run([sys.executable, "-m", "pyramid", KINDS[kind][2], str(path.relative_to(REPO))],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and errors[0].startswith(f"error: {path.relative_to(REPO)}: ") and "unknown key" in errors[0]


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


LOADERS = {error: load for load, error, _ in KINDS.values()}


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
