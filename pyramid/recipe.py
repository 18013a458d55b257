"""The build recipe: a YAML file validated into typed settings, strictly (unknown keys are errors).

Every problem in a recipe is reported at once, each naming its key, e.g.
`recipe.yaml: sources.0.kind: unknown source kind 'egodx'; video_size: expected [height, width]`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pyramid.cameras import Cameras
from pyramid.episode import PYRAMID_LEVELS
from pyramid.yaml_config import ConfigError, Strict, load_yaml, resolve_path

# Motus trains at 384x320 (height x width); flow and latent actions are defined at this size.
DEFAULT_VIDEO_SIZE = (384, 320)


class BuildRecipeError(ConfigError):
    """A build recipe that cannot be used; the message lists every bad key."""

    kind = "recipe"


class SourceSpec(Strict):
    kind: str
    root: str
    cameras: Cameras = Field("primary", description="'primary' (the reader's first camera), a camera name, "
                                            "or {layout: t, names: [head, left_wrist, right_wrist]}.")
    level: int | None = Field(None, description="Pyramid level override (1-6); the reader's default otherwise.")
    embodiment: str | None = None
    options: dict = Field(default_factory=dict, description="Reader options, e.g. {fps: 30} for RoboMIND.")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        from pyramid.errors import SourceError
        from pyramid.sources import get_source

        try:
            get_source(kind)
        except SourceError as exc:
            raise ValueError(str(exc)) from None
        return kind

    @model_validator(mode="after")
    def _options_fit_reader(self) -> "SourceSpec":
        from pyramid.sources import get_source
        from pyramid.sources.options import option_problems

        if problems := option_problems(get_source(self.kind), self.options):
            raise ValueError("options: " + "; ".join(problems))
        return self

    @field_validator("level")
    @classmethod
    def _valid_level(cls, level: int | None) -> int | None:
        if level is not None and level not in PYRAMID_LEVELS:
            raise ValueError(f"pyramid level must be 1-6, got {level}")
        return level

    def open_reader(self):
        """The reader of this source, with its level, embodiment and options."""
        from pyramid.sources import get_source

        return get_source(self.kind)(self.root, level=self.level, embodiment=self.embodiment, **self.options)

    def camera_view(self, fit: str):
        from pyramid.cameras import CameraView

        return CameraView.of_recipe(self.cameras, fit)


# Flow options added after builds existed, at their defaults: left out of the fingerprint.
LATER_FLOW_DEFAULTS = {"store": True, "still_threshold": 0.0, "still_radius": 6}


class FlowSpec(Strict):
    backend: str = Field("dis", description="'dis', 'farneback' or 'ptlflow:<model>' (e.g. ptlflow:dpflow, the paper's).")
    stride: int = Field(1, ge=1)
    options: dict = Field(default_factory=dict, description="The backend's constructor options (its defaults when omitted).")
    store: bool = Field(True, description="Write flow.lance (flow-RGB of every pair, what a VAE trains on); false when "
                                          "only the clips and their latent actions are wanted.")
    still_threshold: float = Field(0.0, ge=0, le=255, description="Zero the flow where neither frame changed by more than "
                                   "this (0-255, any channel) within still_radius px: a fixed camera's flat walls and tables "
                                   "(flow/still.py). 0 = off.")
    still_radius: int = Field(6, ge=0, description="With still_threshold: px around a changed pixel whose flow is kept.")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, backend: str) -> str:
        from flow import backend_names

        if backend.partition(":")[0] not in backend_names():
            raise ValueError(f"unknown flow backend '{backend}' (known: {', '.join(backend_names())})")
        return backend

    @model_validator(mode="after")
    def _options_fit_backend(self) -> "FlowSpec":
        from flow import resolved_options

        resolved_options(self.backend, self.options)  # names an option the backend does not take
        return self


class FilterSpec(Strict):
    min_frames: int = Field(8, ge=2, description="Episodes shorter than this (after resampling) are skipped.")
    # A clip is static when fewer than this share of its pixels move more than 1 px per stored-frame
    # pair. A share of moving pixels, not a mean or median: in manipulation video most pixels are
    # background, so those stay near 0 while the arm moves. 0.2% is ~250 px at 384x320, a small gripper.
    static_motion_threshold: float = Field(0.002, ge=0, le=1)


def is_video_size(size: tuple[int, ...]) -> bool:
    """Positive even sides, as yuv420p video (the clips, a LeRobot export) needs them."""
    return all(side > 0 and side % 2 == 0 for side in size)


class Recipe(Strict):
    sources: list[SourceSpec] = Field(min_length=1)
    output: str
    video_size: tuple[int, int] = DEFAULT_VIDEO_SIZE
    resize: Literal["pad", "crop"] = Field("pad", description="Fit frames to video_size keeping their aspect ratio: "
                                           "pad with black (as Motus does) or centre-crop.")
    fps: float = Field(10.0, gt=0, description="Frame rate the clips are stored at (resampled by nearest frame).")
    clip_frames: int = Field(32, ge=2, description="Frames per clip at the stored rate.")
    flow: FlowSpec = FlowSpec()
    vae: str | None = Field(None, description="Latent-action VAE checkpoint directory; labels clips when set.")
    shard_size_mb: float = Field(256.0, gt=0)
    formats: list[Literal["webdataset", "lance"]] = ["webdataset", "lance"]
    filters: FilterSpec = FilterSpec()
    max_failed_fraction: float = Field(0.2, ge=0, le=1, description="The build fails when more episodes than this are quarantined.")
    max_episodes: int | None = Field(None, ge=1, description="Read at most this many episodes per source (for trials).")

    @field_validator("video_size")
    @classmethod
    def _even_size(cls, size: tuple[int, int]) -> tuple[int, int]:
        if not is_video_size(size):
            raise ValueError(f"expected [height, width] with positive even sides, got {list(size)}")
        return size

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        problems = []
        if not self.formats:
            problems.append("formats: name at least one of webdataset, lance")
        if self.filters.min_frames > self.clip_frames:
            problems.append(f"filters.min_frames ({self.filters.min_frames}) exceeds clip_frames ({self.clip_frames}): every clip would be dropped")
        if self.flow.stride >= self.filters.min_frames:
            problems.append(f"flow.stride ({self.flow.stride}) must be below filters.min_frames ({self.filters.min_frames})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def content_fingerprint(self) -> str:
        """What decides a build's content: everything but where it goes and how many failures it tolerates."""
        import hashlib

        content = self.model_dump(mode="json", exclude={"output", "max_failed_fraction"})
        for key, default in LATER_FLOW_DEFAULTS.items():
            if content["flow"][key] == default:
                del content["flow"][key]  # builds from before the option keep their fingerprint
        for source in content["sources"]:
            source["weight"] = 1.0  # removed (no build nor trainer read it); earlier builds keep their fingerprint
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def resolved(self, base: Path) -> "Recipe":
        """Paths in a recipe are relative to the recipe file."""
        sources = [s.model_copy(update={"root": resolve_path(s.root, base)}) for s in self.sources]
        return self.model_copy(update={"sources": sources, "output": resolve_path(self.output, base),
                                       "vae": resolve_path(self.vae, base)})


def load_recipe(path: str | os.PathLike, **overrides) -> Recipe:
    """The build recipe at `path`; `overrides` (None values ignored) replace its top-level keys."""
    recipe = load_yaml(path, Recipe, BuildRecipeError, overrides=overrides)
    return recipe.resolved(Path(path).parent.resolve())
