"""flow.estimate / estimate_pairs on frames with known motion, through the classical OpenCV backends."""

from __future__ import annotations

import numpy as np
import pytest

import flow
from flow.known_motion import end_point_error, moving_sequence, rotation, textured_image, translation, warp, zoom

SIZE = (160, 192)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return textured_image(*SIZE, seed=3)


def pair_with_motion(image: np.ndarray, matrix: np.ndarray):
    moved, true_flow, valid = warp(image, matrix)
    return np.stack([image, moved]), true_flow, valid


@pytest.mark.parametrize("dx, dy", [(0.4, 0.3), (3.3, -2.2), (-7.5, 6.0), (9.2, 3.1), (-3.0, -9.4)])
def test_dis_recovers_sub_10_px_translations(image, dx, dy):
    frames, true_flow, valid = pair_with_motion(image, translation(dx, dy))
    estimated = flow.estimate(frames)
    assert estimated.shape == (1, *SIZE, 2) and estimated.dtype == np.float32
    assert end_point_error(estimated[0], true_flow, valid) < 0.5


@pytest.mark.parametrize("backend", ["dis", "farneback"])
@pytest.mark.parametrize("motion", ["rotate", "zoom"])
def test_classical_backends_recover_rotation_and_zoom(image, backend, motion):
    matrix = rotation(2.0, SIZE) if motion == "rotate" else zoom(1.04, SIZE)
    frames, true_flow, valid = pair_with_motion(image, matrix)
    assert end_point_error(flow.estimate(frames, backend)[0], true_flow, valid) < 0.5


def test_lower_resolution_flow_comes_back_in_full_resolution_pixels(image):
    frames, true_flow, valid = pair_with_motion(image, translation(7.0, -4.0))
    estimated = flow.estimate(frames, scale=0.5)
    assert estimated.shape == (1, *SIZE, 2)
    # Unscaled vectors would be (3.5, -2.0): an error of ~4 px.
    assert end_point_error(estimated[0], true_flow, valid) < 0.5


def test_stride_gives_flow_between_frame_t_and_t_plus_stride():
    frames = moving_sequence(5, SIZE, step=(1.5, -1.0))
    one, two = flow.estimate(frames), flow.estimate(frames, stride=2)
    assert one.shape == (4, *SIZE, 2) and two.shape == (3, *SIZE, 2)
    inner = (slice(None), slice(20, -20), slice(20, -20))
    np.testing.assert_allclose(np.median(one[inner], axis=(1, 2)), [[1.5, -1.0]] * 4, atol=0.1)
    np.testing.assert_allclose(np.median(two[inner], axis=(1, 2)), [[3.0, -2.0]] * 3, atol=0.1)


def test_pairs_and_sequence_agree():
    frames = moving_sequence(4, SIZE)
    sequence = flow.estimate(frames)
    as_array = flow.estimate_pairs(np.stack([frames[:-1], frames[1:]], axis=1))
    as_list = flow.estimate_pairs(list(zip(frames[:-1], frames[1:])))
    np.testing.assert_array_equal(sequence, as_array)
    np.testing.assert_array_equal(sequence, as_list)


def test_threads_do_not_change_the_result():
    frames = moving_sequence(5, SIZE)
    single = flow.get_backend("dis", threads=1).sequence(frames)
    np.testing.assert_array_equal(single, flow.get_backend("dis", threads=2).sequence(frames))


def test_a_built_backend_is_reused_and_takes_no_options():
    frames = moving_sequence(3, SIZE)
    backend = flow.get_backend("dis:fast")
    assert backend.preset == "fast"
    assert flow.estimate(frames, backend).shape == (2, *SIZE, 2)
    with pytest.raises(ValueError, match="get_backend"):
        flow.estimate(frames, backend, preset="medium")


def test_a_recorded_spec_option_equal_to_the_suffix_is_one_setting():
    """A VAE records its flow's resolved options, the suffix's option among them: rebuilding its backend from the
    spec and those options must work (a second, different value is still refused, below)."""
    recorded = flow.resolved_options("dis:fast")
    assert recorded["preset"] == "fast"
    assert flow.get_backend("dis:fast", **recorded).preset == "fast"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f: flow.estimate(f.astype(np.float32)), "uint8 RGB"),
        (lambda f: flow.estimate(f[..., 0]), "uint8 RGB"),
        (lambda f: flow.estimate(f, stride=3), "more than 3 frames"),
        (lambda f: flow.estimate(f, "nope"), "choose from dis, farneback, ptlflow"),
        (lambda f: flow.estimate(f, "dis:slow"), "unknown DIS preset 'slow'"),
        (lambda f: flow.estimate(f, "farneback:x"), "takes no ':x' suffix"),
        (lambda f: flow.estimate(f, "dis:fast", preset="medium"), "sets preset twice"),
        (lambda f: flow.estimate(f, scale=0), "scale must be in"),
        (lambda f: flow.estimate_pairs(f), r"\[P, 2, H, W, 3\]"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(moving_sequence(3, (32, 32)))


@pytest.mark.parametrize("motion", ["translate", "rotate", "zoom"])
def test_default_dis_preset_is_within_a_tenth_of_a_pixel_of_opencv_medium(image, motion):
    # The default trades OpenCV medium's extra refinement for speed (bench/flow.py); not its accuracy.
    matrix = {"translate": translation(4.3, -2.7), "rotate": rotation(2.0, SIZE), "zoom": zoom(1.03, SIZE)}[motion]
    frames, true_flow, valid = pair_with_motion(image, matrix)
    default = end_point_error(flow.estimate(frames)[0], true_flow, valid)
    medium = end_point_error(flow.estimate(frames, "dis:medium")[0], true_flow, valid)
    assert flow.get_backend("dis").preset == "balanced"
    assert default <= medium + 0.1


@pytest.mark.parametrize("backend, scale", [("dis", 1.0), ("dis", 0.5), ("farneback", 1.0)])
def test_sequence_into_a_reused_array_is_the_same_flow(backend, scale):
    frames = np.random.default_rng(3).integers(0, 255, (5, 48, 64, 3), dtype=np.uint8)
    engine = flow.get_backend(backend, threads=2, scale=scale)
    expected = engine.sequence(frames, 2)
    out = np.full((6, 48, 64, 2), np.nan, np.float32)
    got = engine.sequence(frames, 2, out=out)
    assert np.shares_memory(got, out) and got.shape == (3, 48, 64, 2) and np.array_equal(got, expected)
    with pytest.raises(ValueError, match=r"out must be C-contiguous float32 \[>= 3, 48, 64, 2\]"):
        engine.sequence(frames, 2, out=np.zeros((2, 48, 64, 2), np.float32))
