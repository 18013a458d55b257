"""The contract every registered flow backend must meet, parametrised over the registry.

A new backend is tested the moment it is added to `flow.backend.BACKENDS`. Learned backends run
here with random weights (asked for explicitly) on small CPU inputs: shape, dtype and batching only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flow
from flow.backend import FlowBackend, backend_names
from flow.known_motion import moving_sequence

# What a backend needs to be built in a test; a backend missing here is built with no options.
TEST_OPTIONS = {"ptlflow": {"random_weights": True, "device": "cpu", "batch_size": 2}}
SIZE = (64, 64)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Two torch threads spin-waiting on a 2-core machine shared with other jobs run 50x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=backend_names())
def backend(request, one_torch_thread) -> FlowBackend:
    torch.manual_seed(0)
    return flow.get_backend(request.param, **TEST_OPTIONS.get(request.param, {}))


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return moving_sequence(4, SIZE)


def test_pairs_give_float32_flow_of_the_frame_size(backend, frames):
    result = backend(frames[:2], frames[1:3])
    assert isinstance(result, np.ndarray)
    assert result.shape == (2, *SIZE, 2) and result.dtype == np.float32
    assert np.isfinite(result).all()


def test_sequence_matches_its_pairs_across_batches(backend, frames):
    # Three pairs with a batch size of two: the second batch is a partial one.
    sequence = backend.sequence(frames)
    assert sequence.shape == (3, *SIZE, 2)
    np.testing.assert_allclose(sequence, backend(frames[:-1], frames[1:]), atol=1e-4)
    np.testing.assert_allclose(sequence[1:2], backend(frames[1:2], frames[2:3]), atol=1e-4)


def test_stride_and_scale_keep_the_frame_size(backend, frames):
    assert backend.sequence(frames, stride=2).shape == (2, *SIZE, 2)
    backend.scale = 0.5  # built once per module (a model load), so switch the option in place
    try:
        assert backend.sequence(frames[:2]).shape == (1, *SIZE, 2)
    finally:
        backend.scale = 1.0


def test_no_pairs_give_an_empty_result(backend, frames):
    assert backend(frames[:0], frames[:0]).shape == (0, *SIZE, 2)


def test_mismatched_batches_are_refused(backend, frames):
    with pytest.raises(ValueError, match="differ in shape"):
        backend(frames[:2], frames[:1])
