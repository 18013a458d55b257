"""Learned flow through ptlflow: DPFlow (the paper's model) by default, or any ptlflow model, in batches.

Weights come from a local file or from ptlflow's checkpoint name when that file is already in
torch's hub cache; nothing is downloaded. Random weights exist for tests only and must be asked for.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import ptlflow
import torch
from safetensors.torch import load_file

from flow.backend import FlowBackend

DEFAULT_MODEL = "dpflow"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# ptlflow models whose flow for a pair is not the pair's own: a build hands the backend independent pairs.
NOT_PAIRWISE = {
    "memfof": "reads three frames per sample",
    "memflow": "carries a memory of earlier calls into each pair",
    "memflow_t": "carries a memory of earlier calls into each pair",
    "videoflow_bof": "is a multi-frame model (it repeats a frame when given two)",
    "videoflow_mof": "is a multi-frame model (it repeats a frame when given two)",
}


class CheckpointError(Exception):
    """A checkpoint is missing or unreadable; renders as one line, `path: problem`."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable, so that one raised in a Ray worker reaches the driver as itself
        return self.__class__, (self.path, self.problem)


class PtlflowBackend(FlowBackend):
    """`get_backend("ptlflow:dpflow", checkpoint="things" or "/path/x.ckpt", device=None, batch_size=8, precision="fp32")`.

    Runs on the GPU when there is one. `batch_size` pairs go through the model at once. `precision` "bf16" or
    "fp16" runs the model under autocast (fp16 on a GPU only); the flow it gives differs slightly from fp32's, so
    it is part of what a VAE trained on that flow expects.
    """

    name = "ptlflow"
    spec_option = "model"

    @classmethod
    def check_options(cls, options: dict) -> None:
        if options["precision"] not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {options['precision']!r}")
        if options["random_weights"] and options["checkpoint"] is not None:
            raise ValueError("pass either checkpoint or random_weights=True, not both")
        if not isinstance(options["batch_size"], int) or options["batch_size"] < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {options['batch_size']!r}")
        if options["model"] not in ptlflow.get_model_names():
            raise ValueError(f"ptlflow has no model {options['model']!r} (it has e.g. dpflow, sea_raft_s, raft)")
        if options["model"] in NOT_PAIRWISE:
            raise ValueError(f"ptlflow model {options['model']!r} {NOT_PAIRWISE[options['model']]}, but flow is made pair by "
                             "pair: use a two-frame model (e.g. dpflow, sea_raft_s, raft)")

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        checkpoint: str | Path | None = None,
        random_weights: bool = False,
        device: str | None = None,
        batch_size: int = 8,
        scale: float = 1.0,
        precision: str = "fp32",
    ):
        super().__init__(scale)
        self.check_options({"model": model, "checkpoint": checkpoint, "random_weights": random_weights,
                            "batch_size": batch_size, "precision": precision})
        model_class = ptlflow.get_model_reference(model)
        weights = None if random_weights else resolve_checkpoint(model, model_class, checkpoint)
        self.model_name = model
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"precision fp16 needs a GPU (device is {self.device}); use bf16 or fp32")
        self.precision = precision
        self.model = ptlflow.get_model(model)
        if weights is not None:
            load_weights(self.model, weights)
        self.model.to(self.device).eval()

    def compute_pairs(self, frames_a: np.ndarray, frames_b: np.ndarray) -> np.ndarray:
        step = self.batch_size
        return np.concatenate([self._batch(frames_a[i : i + step], frames_b[i : i + step]) for i in range(0, len(frames_a), step)])

    @torch.inference_mode()
    def _batch(self, frames_a: np.ndarray, frames_b: np.ndarray) -> np.ndarray:
        pairs = torch.from_numpy(np.stack([frames_a, frames_b], axis=1)).to(self.device)  # uint8 crosses the bus, not float
        # ptlflow models take [B, 2, 3, H, W] BGR in [0, 1], the channel order cv2.imread gives.
        images = pairs.flip(-1).permute(0, 1, 4, 2, 3).float().div(255).contiguous()
        flows = self._forward(images)["flows"][:, 0]
        if flows.shape[-2:] != images.shape[-2:]:
            raise RuntimeError(f"ptlflow:{self.model_name} returned flow of size {tuple(flows.shape[-2:])} for input {tuple(images.shape[-2:])}")
        return flows.permute(0, 2, 3, 1).float().cpu().numpy()

    def _forward(self, images: torch.Tensor) -> dict:
        """The model's outputs, or one error naming the model, the batch and what went wrong.

        DPFlow meets an out-of-memory error by switching itself for good to a correlation that needs the optional
        alt_cuda_corr extension (absent from ptlflow's wheel), which then fails on every later batch, or returns
        None: the mode is put back after each call, and running out of memory is said as such.
        """
        corr_mode = getattr(self.model, "corr_mode", None)
        dtype = PRECISIONS[self.precision]
        batch = f"{images.shape[0]} pairs of {images.shape[-2]}x{images.shape[-1]}"
        try:
            with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                outputs = self.model({"images": images})
        except Exception as error:
            if isinstance(error, torch.OutOfMemoryError) or getattr(self.model, "corr_mode", None) != corr_mode:
                raise self._out_of_memory(batch) from error
            raise RuntimeError(f"ptlflow:{self.model_name} failed on {batch}: {type(error).__name__}: "
                               f"{' '.join(str(error).split())[:300]}") from error
        finally:
            if corr_mode is not None:
                self.model.corr_mode = corr_mode
        if outputs is None:  # DPFlow's answer to running out of memory twice
            raise self._out_of_memory(batch)
        return outputs

    def _out_of_memory(self, batch: str) -> RuntimeError:
        return RuntimeError(f"ptlflow:{self.model_name} ran out of {self.device.type.upper()} memory on {batch}: lower "
                            f"flow.options.batch_size (now {self.batch_size}) or flow.options.scale")


def resolve_checkpoint(model: str, model_class: type, checkpoint: str | Path | None) -> Path:
    """The local file holding the weights, or a one-line error saying where to put them."""
    names = getattr(model_class, "pretrained_checkpoints", None) or {}
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    if checkpoint is None:
        hint = f" or one of {', '.join(names)} with its file in {cache}" if names else ""
        raise CheckpointError(f"ptlflow:{model}", f"no checkpoint given; pass checkpoint=<path to .ckpt or .safetensors>{hint} (weights are never downloaded)")
    if str(checkpoint) in names:
        url = names[str(checkpoint)]
        cached = cache / Path(urlparse(url).path).name
        if not cached.is_file():
            raise CheckpointError(cached, f"checkpoint {checkpoint!r} of ptlflow:{model} is not in the local cache; download {url} elsewhere and copy it here, or pass checkpoint=<local path>")
        return cached
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        known = f" (ptlflow:{model} checkpoint names: {', '.join(names)})" if names else ""
        raise CheckpointError(path, f"no such checkpoint file{known}")
    return path


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a ptlflow/Lightning `.ckpt` (state_dict + hyper_parameters), a bare state dict, or safetensors.

    A safetensors file holds weights only: models that size their input from `train_size` (the FlowFormer family's
    tiling) run as without it. DPFlow and SEA-RAFT do not read it."""
    try:
        if path.suffix == ".safetensors":
            state, hyper = load_file(path), {}
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            state = checkpoint.get("state_dict", checkpoint)
            hyper = checkpoint.get("hyper_parameters", {})
        model.load_state_dict(state)
    except Exception as error:  # add the path: torch's messages rarely name the file
        raise CheckpointError(path, f"cannot load weights: {str(error).splitlines()[0][:300]}") from error
    # What ptlflow.restore_model copies besides the weights: some models use them to size inputs.
    for key in ("train_size", "train_avg_length"):
        if key in hyper:
            setattr(model, key, hyper[key])
    for name, value in hyper.get("extra_params", {}).items():
        model.add_extra_param(name, value)
