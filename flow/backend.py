"""The one interface every optical-flow backend implements, and the registry that builds them by name."""

from __future__ import annotations

import importlib

import numpy as np

from flow.resize import downscale_frames, upscale_flow

# Backends are imported only when asked for: `ptlflow` pulls in torch and ~50 models (seconds of
# import time) that a DIS-only worker never needs.
BACKENDS = {
    "dis": "flow.dis:DisBackend",
    "farneback": "flow.farneback:FarnebackBackend",
    "ptlflow": "flow.ptlflow_backend:PtlflowBackend",
}


class FlowBackend:
    """Dense flow between RGB frames: u, v in pixels, OpenCV convention (a(x, y) ~ b(x + u, y + v)).

    Construct once and call on many batches (a Ray actor does exactly this). Subclasses implement
    `compute_pairs` and may override `compute_sequence` to share work between overlapping pairs.
    `scale` < 1 computes flow on downscaled frames; vectors come back at full resolution, in
    full-resolution pixels.
    """

    name = ""
    spec_option: str | None = None  # the option "name:value" sets, e.g. "model" for "ptlflow:dpflow"

    def __init__(self, scale: float = 1.0):
        if not 0 < scale <= 1:
            raise ValueError(f"flow scale must be in (0, 1], got {scale}")
        self.scale = scale

    @classmethod
    def check_options(cls, options: dict) -> None:
        """A ValueError for an option value the backend refuses, found without building it: a recipe is checked
        before any worker starts, where a misspelt value would otherwise stop every worker at once."""

    def __call__(self, frames_a: np.ndarray, frames_b: np.ndarray) -> np.ndarray:
        """Flow from each frames_a[i] to frames_b[i]: [P, H, W, 3] uint8 twice -> [P, H, W, 2] float32."""
        check_frames(frames_a, "frames_a")
        check_frames(frames_b, "frames_b")
        if frames_a.shape != frames_b.shape:
            raise ValueError(f"frames_a {frames_a.shape} and frames_b {frames_b.shape} differ in shape")
        size = frames_a.shape[1:3]
        if len(frames_a) == 0:
            return np.zeros((0, *size, 2), np.float32)
        flow = self.compute_pairs(downscale_frames(frames_a, self.scale), downscale_frames(frames_b, self.scale))
        return upscale_flow(flow, size)

    def sequence(self, frames: np.ndarray, stride: int = 1, out: np.ndarray | None = None) -> np.ndarray:
        """Flow from frame t to t + stride for every t: [N, H, W, 3] -> [N - stride, H, W, 2].

        `out`: a float32 [>= N - stride, H, W, 2] array to write into, reused by a caller that computes
        many episodes (the fresh pages of an episode-sized result cost about a tenth of DIS itself); the
        result is then its first N - stride pairs.
        """
        check_frames(frames, "frames")
        if stride < 1 or len(frames) <= stride:
            raise ValueError(f"need stride >= 1 and more than {stride} frames, got stride {stride}, {len(frames)} frames")
        size, pairs = frames.shape[1:3], len(frames) - stride
        if out is not None:
            if out.dtype != np.float32 or out.shape[1:] != (*size, 2) or len(out) < pairs or not out.flags.c_contiguous:
                raise ValueError(f"out must be C-contiguous float32 [>= {pairs}, {size[0]}, {size[1]}, 2], got {out.dtype} {out.shape}")
            out = out[:pairs]
        flow = self.compute_sequence(downscale_frames(frames, self.scale), stride, out if self.scale == 1 else None)
        flow = upscale_flow(flow, size)
        if out is None or np.shares_memory(flow, out):
            return flow
        out[...] = flow
        return out

    def compute_pairs(self, frames_a: np.ndarray, frames_b: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def compute_sequence(self, frames: np.ndarray, stride: int, out: np.ndarray | None = None) -> np.ndarray:
        """The sequence's flow at the frames' size; may write into `out` (exactly that many pairs) and return it."""
        return self.compute_pairs(frames[:-stride], frames[stride:])


def check_frames(frames: np.ndarray, what: str) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"{what} must be uint8 RGB [N, H, W, 3], got {got}")


def backend_names() -> list[str]:
    return sorted(BACKENDS)


# Options that change how fast flow is computed, not what it is.
SPEED_OPTIONS = ("threads", "device", "batch_size")


def resolved_options(spec: str, options: dict | None = None) -> dict:
    """What decides the flow a backend computes: its constructor's defaults, overridden by `options` and
    the spec's ':value' suffix, without the options that only change speed. Two settings give the same
    flow exactly when these agree; an option the backend does not take is an error, named here."""
    import inspect

    name, _, value = spec.partition(":")
    backend_class = _backend_class(spec)
    parameters = inspect.signature(backend_class.__init__).parameters
    options = dict(options or {})
    if value:
        options[backend_class.spec_option] = value
    unknown = sorted(set(options) - set(parameters) - {"self"})
    if unknown:
        known = ", ".join(p for p in parameters if p != "self")
        raise ValueError(f"flow backend '{name}' has no option {', '.join(unknown)} (it takes: {known})")
    defaults = {key: p.default for key, p in parameters.items() if key != "self" and p.default is not inspect.Parameter.empty}
    backend_class.check_options({**defaults, **options})
    return {key: v for key, v in sorted({**defaults, **options}.items()) if key not in SPEED_OPTIONS}


def _backend_class(spec: str) -> type:
    name = spec.partition(":")[0]
    if name not in BACKENDS:
        raise ValueError(f"unknown flow backend {spec!r}; choose from {', '.join(backend_names())}")
    module_name, class_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_backend(spec: str, **options) -> FlowBackend:
    """Build a backend from `name` or `name:value` ("dis", "dis:fast", "ptlflow:dpflow") and its options."""
    name, _, value = spec.partition(":")
    backend_class = _backend_class(spec)
    if value:
        option = backend_class.spec_option
        if option is None:
            raise ValueError(f"flow backend {name!r} takes no ':{value}' suffix")
        if option in options and options[option] != value:  # the same value twice: recorded options carry it too
            raise ValueError(f"flow backend {spec!r} sets {option} twice (also {option}={options[option]!r})")
        options[option] = value
    return backend_class(**options)
