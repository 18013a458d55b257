"""Layers point one way: the core (episodes, sources, video I/O, flow) < the latent-action package and what both
trainers share < the pipeline, exports and trainer < the CLI. Each module is imported in a fresh interpreter and
no module of a higher layer may have been loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The core of pyramid/ (the rest of pyramid/ is the pipeline, its sinks and exports, and the CLI), with flow/.
CORE_PYRAMID = {"pyramid", "pyramid.errors", "pyramid.episode", "pyramid.validate", "pyramid.video_io", "pyramid.paths",
                "pyramid.atomic", "pyramid.resize", "pyramid.clips", "pyramid.cameras", "pyramid.stats", "pyramid.schema",
                "pyramid.yaml_config", "pyramid.lerobot_writer", "pyramid.hdr", "pyramid.locks"}
CLI = {"pyramid.cli", "pyramid.__main__", "pyramid.cli_errors", "latent_action.commands", "recipes.commands"}


def modules(package: str) -> list[str]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


CORE = sorted(CORE_PYRAMID | set(modules("flow")) | set(modules("pyramid/sources")))
MIDDLE = sorted(m for m in modules("latent_action") + modules("pyramid/training") if m not in CLI)
UPPER = sorted(m for m in modules("pyramid") + modules("recipes")
               if m not in CORE and m not in MIDDLE and m not in CLI and not m.startswith("pyramid.training"))


def loaded_by(module: str) -> set[str]:
    code = f"import importlib, json, sys; importlib.import_module({module!r}); print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return {name for name in json.loads(result.stdout.splitlines()[-1])
            if name.split(".")[0] in ("pyramid", "flow", "latent_action", "recipes")}


@pytest.mark.parametrize("module", CORE)
def test_the_core_loads_nothing_above_it(module):
    assert loaded_by(module) - set(CORE) == set()


@pytest.mark.parametrize("module", MIDDLE)
def test_the_latent_action_package_loads_no_pipeline_trainer_or_cli(module):
    assert loaded_by(module) - set(CORE) - set(MIDDLE) == set()


@pytest.mark.parametrize("module", UPPER)
def test_the_pipeline_and_trainer_load_no_cli(module):
    assert loaded_by(module) & CLI == set()


def test_every_module_has_a_layer():
    everything = set(modules("pyramid") + modules("flow") + modules("latent_action") + modules("recipes"))
    assert everything == set(CORE) | set(MIDDLE) | set(UPPER) | CLI
