"""The `pyramid train-vae` YAML, validated into typed objects; unknown keys are errors, all reported at once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from latent_action.losses import DEFAULT_BETA, DEFAULT_LAMBDA_A, DEFAULT_MOTION_WEIGHT
from latent_action.sampler import DEFAULT_LABELLED_FRACTION
from pyramid.cameras import Cameras
from pyramid.training.settings import setting_changes
from pyramid.yaml_config import ConfigError, Strict, load_yaml, resolve_path, validate


class VaeConfigError(ConfigError, ValueError):
    """A `train-vae` config that cannot be used; the message lists every problem by key.
    (Also a ValueError, as it was before the configs shared one loader.)"""

    kind = "VAE config"


class ModelConfig(Strict):
    preset: Literal["tiny", "paper"] = "tiny"
    dcae_path: Optional[Path] = None  # a local diffusers AutoencoderDC directory (e.g. dc-ae-f128c512-mix-1.0-diffusers)
    freeze_dcae: bool = False  # train only the light encoder/decoder on top of a pretrained DC-AE
    head_hidden_dim: Optional[int] = Field(None, gt=0)  # the preset's value when omitted


class SourceConfig(Strict):
    root: Path
    kind: Optional[str] = None  # auto-detected when omitted
    weight: float = Field(1.0, gt=0)  # relative sampling weight within its (labelled or unlabelled) pool
    embodiment: Optional[str] = None
    max_episodes: Optional[int] = Field(None, gt=0)
    # As a build recipe's source `cameras`: 'primary', a camera name, or {layout: t, names: [head, left, right]}.
    cameras: Cameras = "primary"


class FlowConfig(Strict):
    """How flow pairs are made, exactly as a build makes them (see `pyramid/clips.py`, `FlowStage`):
    frames resampled to `fps` (nearest frame; never upsampled), resized to frame_height x frame_width,
    flow from stored frame t to t + `stride`. The VAE records these; a build with other settings refuses it."""

    backend: str = "dis"
    options: dict = Field(default_factory=dict)  # the backend's constructor options, as a recipe's flow.options
    fps: float = Field(10.0, gt=0)  # the build recipe's `fps` (its default is 10)
    stride: int = Field(1, ge=1)  # the build recipe's flow.stride, in stored frames
    # Zero the flow where neither frame changed (a fixed camera's flat background), as a recipe's flow.still_*.
    still_threshold: float = Field(0.0, ge=0, le=255)
    still_radius: int = Field(6, ge=0)
    # None: flow.to_rgb's default, which the pipeline's flow.lance dataset also uses.
    max_magnitude: Optional[float] = Field(None, gt=0)
    # The stored video size the flow is computed at: Motus stores H x W = 384 x 320.
    frame_height: int = Field(384, gt=0)
    frame_width: int = Field(320, gt=0)
    resize: Literal["pad", "crop"] = "pad"  # the build recipe's `resize`: how frames are fitted to that size

    @model_validator(mode="after")
    def _options_fit_backend(self) -> "FlowConfig":
        from flow import resolved_options

        resolved_options(self.backend, self.options)
        return self


class LabelsConfig(Strict):
    """Which real actions training may use: all but a `share` of them are hidden, chosen by hash of
    (seed, episode id[, pair index]) so the choice is deterministic and a smaller share is a subset of a
    larger one. The paper trains with about 10% labelled data; 0 trains on flow alone."""

    share: float = Field(1.0, ge=0, le=1)
    by: Literal["pairs", "episodes"] = "pairs"
    seed: int = 0


class DataConfig(Strict):
    sources: list[SourceConfig] = Field(default_factory=list)  # read straight from episodes (small runs)
    lance: Optional[Path] = None  # or the pipeline's <build_out>/flow.lance
    source_weights: dict[str, float] = Field(default_factory=dict)  # per source name, for the Lance dataset
    flow: FlowConfig = FlowConfig()
    labels: LabelsConfig = LabelsConfig()
    # The share of each batch drawn from labelled pairs (when both kinds exist); see sampler.py.
    labelled_fraction: float = Field(DEFAULT_LABELLED_FRACTION, ge=0, le=1)
    # Labelled episodes kept out of training, for the probe in `eval-latents` and the periodic preview.
    holdout_fraction: float = Field(0.25, ge=0, lt=1)
    # What holdout_fraction is a fraction of: labelled episodes, or tasks (every episode of a held-out task stays
    # out of training, so that eval-latents scores tasks the VAE never saw; needs episodes that name their task).
    holdout_by: Literal["episodes", "tasks"] = "episodes"
    # With holdout_by: tasks, the tasks kept out by name (each episode's task string) in place of a share drawn by
    # hash: the same unseen tasks for runs on different training data.
    holdout_tasks: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_input(self) -> "DataConfig":
        if bool(self.sources) == (self.lance is not None):
            raise ValueError("give exactly one of 'sources' (episodes) or 'lance' (a flow.lance dataset)")
        if self.holdout_tasks and self.holdout_by != "tasks":
            raise ValueError("holdout_tasks names tasks to keep out: set holdout_by: tasks as well")
        return self


class AugmentConfig(Strict):
    # Random shift of each training flow image, as a fraction of the model input size (0 = off).
    # Shifting a flow image keeps the motion, so the latent must not depend on where motion happens.
    max_shift: float = Field(0.25, ge=0, lt=1)


class LossConfig(Strict):
    lambda_a: float = Field(DEFAULT_LAMBDA_A, ge=0)
    beta: float = Field(DEFAULT_BETA, ge=0)
    motion_weight: float = Field(DEFAULT_MOTION_WEIGHT, ge=0)


class OptimConfig(Strict):
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = Field(32, gt=0)
    max_steps: int = Field(1000, gt=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = Field(1.0, gt=0)


class RunConfig(Strict):
    out_dir: Path
    seed: int = 0
    device: str = "auto"  # "auto" = cuda when available, else cpu
    bf16: bool = True  # autocast on GPU only
    log_every: int = Field(10, gt=0)
    eval_every: int = Field(200, gt=0)
    checkpoint_every: int = Field(500, gt=0)
    keep_checkpoints: int = Field(3, gt=0)


class TrainConfig(Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig
    augment: AugmentConfig = AugmentConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig


# What a resumed run may change: how long it trains, where it runs and writes, how often it logs, evaluates and
# saves. Paths to the data name where it is, not what it is, so a moved data set resumes; everything else
# (model, flow, labels, losses, optimiser, batch, seed) decides the trajectory, and the checkpoint was made with it.
RESUMABLE = frozenset({
    "optim.max_steps", "run.out_dir", "run.device", "run.bf16", "run.log_every", "run.eval_every",
    "run.checkpoint_every", "run.keep_checkpoints", "data.sources[*].root", "data.lance",
})


def config_changes(saved: dict, current: dict, only_shared: bool = False) -> list[str]:
    """'key: saved -> current' for each setting (JSON of a TrainConfig) that differs, except RESUMABLE ones."""
    return setting_changes(saved, current, RESUMABLE, only_shared)


def parse_config(raw: object, origin: str = "config") -> TrainConfig:
    return validate(raw, TrainConfig, VaeConfigError, origin)


def load_config(path: str | Path) -> TrainConfig:
    """Relative paths in the file (source roots, flow.lance, DC-AE weights, out_dir) are relative to the file,
    as in build and trainer recipes; ${VAR} and ~ are expanded (pyramid/yaml_config.py)."""
    return relative_to(load_yaml(path, TrainConfig, VaeConfigError), Path(path).resolve().parent)


def relative_to(config: TrainConfig, base: Path) -> TrainConfig:
    def fix(value: Path | None) -> Path | None:
        return None if value is None else Path(resolve_path(value, base))

    data = config.data.model_copy(update={
        "sources": [source.model_copy(update={"root": fix(source.root)}) for source in config.data.sources],
        "lance": fix(config.data.lance),
    })
    return config.model_copy(update={
        "data": data,
        "model": config.model.model_copy(update={"dcae_path": fix(config.model.dcae_path)}),
        "run": config.run.model_copy(update={"out_dir": fix(config.run.out_dir)}),
    })
