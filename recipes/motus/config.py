"""Training recipes: YAML validated into typed settings, strictly, with every bad key reported at once.

`model:` names a preset (`paper` or `tiny`, defined here, the one place defaults live) and may
override any of its keys; `data:` says which build to read and how to sample it; `train:` holds
the optimisation settings of one stage.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pyramid.episode import PYRAMID_LEVELS
from pyramid.yaml_config import ConfigError, Strict, load_yaml, resolve_path


class TrainRecipeError(ConfigError):
    """A training recipe that cannot be used; the message names the file and lists every bad key."""

    kind = "recipe"


class VideoConfig(Strict):
    # A diffusers-format Wan2.2-TI2V-5B directory (transformer/, vae/, text_encoder/, tokenizer/);
    # None builds the architectures below with random weights.
    pretrained_path: str | None = None
    transformer: dict[str, Any] = Field(description="diffusers.WanTransformer3DModel arguments")
    vae: dict[str, Any] = Field(description="diffusers.AutoencoderKLWan arguments")


class TextConfig(Strict):
    # umt5: the Wan text encoder from `pretrained_path` (or the video directory's text_encoder/);
    # hashing: a fixed random vector per word, for tests and the CPU demo (no language understanding).
    encoder: Literal["umt5", "hashing"]
    pretrained_path: str | None = None
    max_tokens: int = Field(512, ge=1)


class VlmConfig(Strict):
    # A local Qwen3-VL checkpoint directory (weights + processor); None builds `architecture` randomly.
    pretrained_path: str | None = None
    architecture: dict[str, Any] | None = Field(None, description="transformers.Qwen3VLConfig arguments")
    # processor: the checkpoint's own tokenizer and chat template; hashing: words hashed to token ids (tiny only).
    tokenizer: Literal["processor", "hashing"] = "processor"
    image_max_pixels: int = Field(384 * 320, ge=1)

    @model_validator(mode="after")
    def _weights_or_architecture(self) -> "VlmConfig":
        if self.pretrained_path is None and self.architecture is None:
            raise ValueError("give pretrained_path or architecture")
        return self


class ActionSettings(Strict):
    dim: int = Field(ge=1)
    ffn_multiplier: int = Field(4, ge=1)
    state_dim: int = Field(14, ge=1, description="States are zero-padded to this width.")
    action_dim: int = Field(14, ge=1, description="Actions and latent actions are zero-padded to this width.")
    num_registers: int = Field(4, ge=0)


class UnderstandingSettings(Strict):
    dim: int = Field(ge=1)
    ffn_multiplier: int = Field(4, ge=1)


class FramesConfig(Strict):
    height: int = Field(384, ge=16)
    width: int = Field(320, ge=16)
    future_frames: int = Field(8, ge=4, multiple_of=4, description="Predicted frames after the condition frame.")
    video_fps: float = Field(5.0, gt=0)
    action_fps: float = Field(30.0, gt=0)

    @property
    def action_chunk(self) -> int:
        """Action steps over the same span as the future frames: 8 frames at 5 Hz = 1.6 s = 48 steps at 30 Hz."""
        return round(self.future_frames * self.action_fps / self.video_fps)


class ModelConfig(Strict):
    video: VideoConfig
    text: TextConfig
    vlm: VlmConfig
    action: ActionSettings
    understanding: UnderstandingSettings
    frames: FramesConfig = FramesConfig()
    eps: float = 1e-6
    inference_steps: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _frames_fit_the_video_model(self) -> "ModelConfig":
        """Frame sides the video model can cut into whole tokens: its VAE shrinks them `scale_factor_spatial` times, its
        transformer patches the latents; other sides fail in the middle of the first step (tensor sizes that differ)."""
        factor = self.video.vae.get("scale_factor_spatial")
        patch = self.video.transformer.get("patch_size")
        if not isinstance(factor, int) or not (isinstance(patch, (list, tuple)) and len(patch) == 3):
            return self
        for side, name, patch_side in ((self.frames.height, "height", patch[1]), (self.frames.width, "width", patch[2])):
            if side % (factor * patch_side):
                raise ValueError(f"frames.{name} {side} must be a multiple of {factor * patch_side}: the video VAE "
                                 f"shrinks frames {factor}x and the transformer cuts its latents into patches of "
                                 f"{patch[1]}x{patch[2]}")
        return self


class DataConfig(Strict):
    format: Literal["webdataset", "lance"]
    root: str = Field(description="A build's output directory (holds webdataset/, clips.lance, manifest.json).")
    levels: list[int] | None = Field(None, min_length=1, description="Pyramid levels to train on; all when omitted.")
    embodiments: list[str] | None = None
    # stage 1 trains video only (none); stage 2 latent actions; stage 3 the robot's real actions.
    targets: Literal["none", "latent_actions", "actions"]
    # Embodiments whose action k is a move (frame k to k + 1, as the sample data's and MetaWorld's), not a target pose:
    # off the model's action rate they are resampled as moves, where targets are interpolated.
    displacement_actions: list[str] = Field([], description="Embodiments whose actions are per-step moves.")
    num_workers: int = Field(0, ge=0)

    @field_validator("levels")
    @classmethod
    def _pyramid_levels(cls, levels: list[int] | None) -> list[int] | None:
        if levels is not None and (unknown := [level for level in levels if level not in PYRAMID_LEVELS]):
            raise ValueError(f"pyramid levels are {min(PYRAMID_LEVELS)}-{max(PYRAMID_LEVELS)}, got {unknown}")
        return levels


class TrainConfig(Strict):
    stage: Literal[1, 2, 3]
    trainable: list[Literal["video", "action", "understanding"]] = Field(min_length=1)
    output_dir: str
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1, description="Per process, per micro-step.")
    grad_accum_steps: int = Field(1, ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="The cosine decays to lr * min_lr_ratio.")
    grad_clip: float = Field(1.0, gt=0)
    video_loss_weight: float = Field(1.0, ge=0)
    action_loss_weight: float = Field(1.0, ge=0)
    timesteps: Literal["logit_normal", "uniform"] = "logit_normal"
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU.")
    distributed: Literal["ddp", "fsdp"] = "ddp"
    seed: int = 0
    log_every: int = Field(10, ge=1)
    save_every: int = Field(1000, ge=1)
    init_from: str | None = Field(None, description="A checkpoint of an earlier stage to start the weights from.")


class Recipe(Strict):
    model: ModelConfig
    data: DataConfig
    train: TrainConfig

    @model_validator(mode="after")
    def _stage_is_consistent(self) -> "Recipe":
        wants_actions = self.train.stage > 1
        if wants_actions != (self.data.targets != "none"):
            raise ValueError(f"stage {self.train.stage} needs data.targets "
                             f"{'latent_actions or actions' if wants_actions else 'none'}, got {self.data.targets!r}")
        if self.train.stage == 1 and set(self.train.trainable) != {"video"}:
            raise ValueError("stage 1 trains the video expert only: trainable: [video]")
        return self


def wan_ti2v_5b() -> dict[str, Any]:
    """Wan2.2-TI2V-5B: 30 layers at width 3072, 48-channel latents, 16x spatial / 4x temporal VAE."""
    transformer = dict(patch_size=[1, 2, 2], num_attention_heads=24, attention_head_dim=128, in_channels=48,
                       out_channels=48, text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30,
                       cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    vae = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
               temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
               patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
               latents_mean=[0.0] * 48, latents_std=[1.0] * 48)  # the checkpoint's config supplies the real ones
    return {"transformer": transformer, "vae": vae}


def qwen3_vl_2b() -> dict[str, Any]:
    """Qwen3-VL-2B-Instruct's architecture (2.13B parameters), for building it without the checkpoint."""
    return dict(
        text_config=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                         num_key_value_heads=8, head_dim=128, vocab_size=151936, rms_norm_eps=1e-6,
                         max_position_embeddings=262144, tie_word_embeddings=True),
        vision_config=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                           deepstack_visual_indexes=[5, 11, 17]),
        tie_word_embeddings=True)


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's sizes: action expert 1024 wide (641.5M), understanding expert 512 wide (253.5M).
    "paper": {
        "video": {"pretrained_path": None, **wan_ti2v_5b()},
        "text": {"encoder": "umt5", "max_tokens": 512},
        "vlm": {"pretrained_path": None, "architecture": qwen3_vl_2b(), "tokenizer": "processor"},
        "action": {"dim": 1024, "ffn_multiplier": 4},
        "understanding": {"dim": 512, "ffn_multiplier": 4},
        "frames": {"height": 384, "width": 320},
    },
    # The same classes at toy sizes: 2 layers, 32x32 frames, 4x spatial VAE; a step takes well under a second on CPU.
    "tiny": {
        "video": {
            "transformer": dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
                                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64),
            "vae": dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True],
                        scale_factor_spatial=4, scale_factor_temporal=4, latents_mean=[0.0] * 4, latents_std=[1.0] * 4),
        },
        "text": {"encoder": "hashing", "max_tokens": 16},
        "vlm": {
            "architecture": dict(
                text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, head_dim=16, vocab_size=512,
                                 rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3],
                                               "mrope_interleaved": True}),
                vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                                   patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                                   num_position_embeddings=16, deepstack_visual_indexes=[0]),
                image_token_id=500, vision_start_token_id=501, vision_end_token_id=502, video_token_id=503),
            "tokenizer": "hashing",
            "image_max_pixels": 32 * 32,
        },
        "action": {"dim": 32, "ffn_multiplier": 2, "num_registers": 2},
        "understanding": {"dim": 16, "ffn_multiplier": 2},
        "frames": {"height": 32, "width": 32},
    },
}


def model_config(spec: str | dict[str, Any]) -> ModelConfig:
    """A preset name, or a mapping with `preset:` plus overrides of any of its keys."""
    if isinstance(spec, str):
        spec = {"preset": spec}
    return ModelConfig.model_validate(_resolve_preset(spec))


def load_recipe(path: str | Path) -> Recipe:
    """Relative paths in the recipe (data root, output, checkpoints, weights) are relative to the recipe file."""
    recipe = load_yaml(path, Recipe, TrainRecipeError, prepare=_with_preset)
    return _resolve_paths(recipe, Path(path).resolve().parent)


def _with_preset(raw: dict) -> dict:
    return {**raw, "model": _resolve_preset(raw["model"])} if "model" in raw else raw


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    def resolved(part: Strict, key: str) -> Strict:
        return part.model_copy(update={key: resolve_path(getattr(part, key), base)})

    model = recipe.model.model_copy(update={name: resolved(getattr(recipe.model, name), "pretrained_path")
                                            for name in ("video", "text", "vlm")})
    train = resolved(resolved(recipe.train, "output_dir"), "init_from")
    return recipe.model_copy(update={"model": model, "data": resolved(recipe.data, "root"), "train": train})


def _resolve_preset(spec: Any) -> Any:
    if isinstance(spec, str):
        spec = {"preset": spec}
    if not isinstance(spec, dict) or "preset" not in spec:
        return spec
    overrides = {k: v for k, v in spec.items() if k != "preset"}
    if spec["preset"] not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {spec['preset']!r} (known: {', '.join(PRESETS)})")
    return _merge(copy.deepcopy(PRESETS[spec["preset"]]), overrides)


def _merge(base: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in ("architecture",):
            base[key] = _merge(base[key], value)
        else:
            base[key] = value
    return base

