"""Recipes: strict validation with every error named by key, and path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pyramid.recipe import DEFAULT_VIDEO_SIZE, BuildRecipeError, load_recipe


def write(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_minimal_recipe_gets_documented_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, {"sources": [{"kind": "videos", "root": "clips"}], "output": "out"}))
    assert recipe.video_size == DEFAULT_VIDEO_SIZE == (384, 320)
    assert recipe.sources[0].root == str((tmp_path / "clips").resolve())
    assert recipe.output == str((tmp_path / "out").resolve())
    assert recipe.formats == ["webdataset", "lance"]


def test_a_source_kind_can_be_your_own_reader_by_import_path(tmp_path):
    from pyramid.sources import get_source
    from tests.fixtures.crashing_source import KIND, CrashingVideos

    recipe = load_recipe(write(tmp_path, {"sources": [{"kind": KIND, "root": "clips"}], "output": "out"}))
    assert get_source(recipe.sources[0].kind) is CrashingVideos
    cases = {"tests.fixtures.nowhere:Reader": "cannot import it (ModuleNotFoundError",
             "tests.fixtures.crashing_source:Missing": "cannot import it (AttributeError",
             "tests.fixtures.crashing_source:KIND": "KIND is not a pyramid.sources.Source subclass"}
    for kind, problem in cases.items():
        with pytest.raises(BuildRecipeError, match=problem.replace("(", r"\(")):
            load_recipe(write(tmp_path, {"sources": [{"kind": kind, "root": "clips"}], "output": "out"}))


def test_every_bad_key_is_reported_at_once(tmp_path):
    path = write(tmp_path, {
        "sources": [{"kind": "egodx", "root": "x", "level": 9}],
        "output": "out", "video_size": [385, 320], "shard_size": 3, "formats": ["tfrecord"], "flow": {"backend": "raft"},
    })
    with pytest.raises(BuildRecipeError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    for fragment in ("sources.0.kind: unknown source kind 'egodx'", "sources.0.level", "video_size",
                     "shard_size: unknown key", "formats.0", "flow.backend: unknown flow backend 'raft'"):
        assert fragment in message, fragment
    assert "\n" not in message


@pytest.mark.parametrize("changes, words", [
    ({"flow": {"backend": "dis", "options": {"preset": "balnced"}}}, "unknown DIS preset 'balnced'"),
    ({"flow": {"backend": "ptlflow:nonexistent"}}, "ptlflow has no model 'nonexistent'"),
    ({"flow": {"backend": "ptlflow:dpflow", "options": {"precision": "fp8"}}}, "precision must be one of"),
    ({"fps": float("inf")}, "fps: Input should be a finite number"),
    ({"shard_size_mb": float("nan")}, "shard_size_mb: Input should be a finite number"),
    ({"sources": [{"kind": "videos", "root": "clips", "cameras": "t:head,left,right"}]},
     "sources.0.cameras: 't:head,left,right' is not a camera name: give 'primary', one camera's name, or {layout: t"),
])
def test_bad_option_values_are_refused_before_any_work(tmp_path, changes, words):
    # found while reading the recipe: after Ray started, every worker failed on them at once
    path = write(tmp_path, {"sources": [{"kind": "videos", "root": "clips"}], "output": "out", **changes})
    with pytest.raises(BuildRecipeError) as caught:
        load_recipe(path)
    assert str(caught.value).startswith(str(path)) and words in str(caught.value)


def test_a_recipe_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("output: caf\xe9\n".encode("latin-1"))
    with pytest.raises(BuildRecipeError, match=r"latin1\.yaml: cannot read recipe \(not UTF-8 text"):
        load_recipe(path)


def test_missing_required_keys_are_named(tmp_path):
    with pytest.raises(BuildRecipeError, match="sources: Field required.*output: Field required"):
        load_recipe(write(tmp_path, {}))


def test_unreadable_recipe_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sources: [unclosed")
    with pytest.raises(BuildRecipeError, match="bad.yaml: cannot read recipe"):
        load_recipe(path)


def test_unset_environment_variables_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv("PYRAMID_TEST_ROOT", raising=False)
    path = write(tmp_path, {"sources": [{"kind": "videos", "root": "${PYRAMID_TEST_ROOT}"}], "output": "out"})
    with pytest.raises(BuildRecipeError, match="not set: PYRAMID_TEST_ROOT"):
        load_recipe(path)
    monkeypatch.setenv("PYRAMID_TEST_ROOT", str(tmp_path / "clips"))
    assert load_recipe(path).sources[0].root == str(tmp_path / "clips")


def test_settings_that_would_drop_every_clip_are_refused(tmp_path):
    path = write(tmp_path, {"sources": [{"kind": "videos", "root": "clips"}], "output": "out",
                            "clip_frames": 4, "flow": {"stride": 8}})
    with pytest.raises(BuildRecipeError) as caught:
        load_recipe(path)
    assert "filters.min_frames (8) exceeds clip_frames (4)" in str(caught.value)
    assert "flow.stride (8) must be below filters.min_frames (8)" in str(caught.value)


def test_fingerprint_ignores_output_and_failure_limit(tmp_path):
    base = {"sources": [{"kind": "videos", "root": "clips"}], "output": "out"}
    first = load_recipe(write(tmp_path, base)).content_fingerprint()
    assert load_recipe(write(tmp_path, {**base, "output": "elsewhere", "max_failed_fraction": 0.5})).content_fingerprint() == first
    assert load_recipe(write(tmp_path, {**base, "fps": 5})).content_fingerprint() != first
