"""flow.to_rgb / flow.from_rgb: the Middlebury colour wheel with a fixed scale, and its inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.utils import flow_to_image

import flow


def one_vector(u: float, v: float) -> np.ndarray:
    return np.array([[[u, v]]], np.float32)


# Colours derived by hand from the Middlebury wheel (55 colours: 15 red->yellow, 6 yellow->green,
# 4 green->cyan, 11 cyan->blue, 13 blue->magenta, 6 magenta->red; angle atan2(-v, -u) spread
# over positions 0..54). Right: position 0, pure red. Left: position 27, cyan->blue step 2, green
# 255 - floor(255 * 2/11) = 209. Up: position 40.5, halfway between blue->magenta steps 4 and 5
# (red 78 and 98). Down: position 13.5, halfway between red->yellow steps 13 and 14 (green 221, 238).
@pytest.mark.parametrize(
    "u, v, colour",
    [(5, 0, (255, 0, 0)), (-5, 0, (0, 209, 255)), (0, -5, (88, 0, 255)), (0, 5, (255, 229, 0))],
    ids=["right", "left", "up", "down"],
)
def test_pure_directions_have_the_wheel_colours(u, v, colour):
    assert tuple(flow.to_rgb(one_vector(u, v), max_magnitude=5)[0, 0]) == colour
    # Half the scale: the colour moves halfway to white.
    half = flow.to_rgb(one_vector(u / 2, v / 2), max_magnitude=5)[0, 0]
    assert tuple(half) == tuple(np.floor(255 - (255 - np.array(colour)) / 2).astype(int))


def test_matches_torchvision_flow_to_image_when_normalised_the_same_way():
    field = np.random.default_rng(0).uniform(-9, 9, (48, 64, 2)).astype(np.float32)
    reference = flow_to_image(torch.from_numpy(field).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    largest = np.hypot(field[..., 0], field[..., 1]).max()
    ours = flow.to_rgb(field, max_magnitude=largest * (1 + np.finfo(np.float32).eps))
    assert np.abs(ours.astype(int) - reference).max() <= 1


def random_flows_inside(max_magnitude: float, count: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(1)
    angle = rng.uniform(-np.pi, np.pi, count)
    radius = np.sqrt(rng.uniform(0, 1, count)) * max_magnitude * 0.999
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], -1).reshape(4, 100, 250, 2).astype(np.float32)


def round_trip_error(field: np.ndarray, max_magnitude: float) -> np.ndarray:
    back = flow.from_rgb(flow.to_rgb(field, max_magnitude), max_magnitude)
    assert back.shape == field.shape and back.dtype == np.float32
    return np.hypot(back[..., 0] - field[..., 0], back[..., 1] - field[..., 1])


def test_round_trip_is_within_a_tenth_of_a_pixel_below_saturation():
    # 14 px is the largest scale whose 8-bit worst case stays under 0.1 px (see flow.colorwheel).
    assert round_trip_error(random_flows_inside(14.0), 14.0).max() < 0.1


def test_round_trip_at_the_default_scale_has_the_documented_precision():
    error = round_trip_error(random_flows_inside(flow.DEFAULT_MAX_MAGNITUDE), flow.DEFAULT_MAX_MAGNITUDE)
    assert error.mean() < 0.05
    assert error.max() < flow.DEFAULT_MAX_MAGNITUDE / 140


def test_saturated_vectors_are_darkened_and_decode_at_the_scale_in_their_direction():
    field = np.array([[[30.0, 0.0], [0.0, -50.0], [-21.0, 21.0]]], np.float32)
    rgb = flow.to_rgb(field, max_magnitude=20)
    assert rgb.max() <= 191  # 0.75 brightness, as in the Middlebury code
    back = flow.from_rgb(rgb, max_magnitude=20)
    np.testing.assert_allclose(np.hypot(back[..., 0], back[..., 1]), 20, atol=1e-4)
    expected = field / np.hypot(field[..., :1], field[..., 1:]) * 20
    np.testing.assert_allclose(back, expected, atol=0.2)


def test_the_same_motion_has_the_same_colour_in_every_clip():
    calm = np.zeros((1, 4, 4, 2), np.float32)
    busy = np.random.default_rng(2).uniform(-15, 15, (1, 4, 4, 2)).astype(np.float32)
    calm[0, 0, 0] = busy[0, 0, 0] = (3.0, -1.0)
    assert (flow.to_rgb(calm)[0, 0, 0] == flow.to_rgb(busy)[0, 0, 0]).all()


def test_per_clip_normalisation_puts_the_largest_vector_on_the_rim():
    field = np.random.default_rng(3).uniform(-4, 4, (2, 8, 8, 2)).astype(np.float32)
    rgb = flow.to_rgb(field, max_magnitude=None)
    largest = np.hypot(field[..., 0], field[..., 1]).max()
    assert rgb.min() == 0  # the darkest channel reaches 0 only at the rim
    assert round_trip_error(field, largest).max() < largest / 140


def test_zero_flow_is_white_and_shapes_carry_through():
    rgb = flow.to_rgb(np.zeros((3, 5, 7, 2), np.float32))
    assert rgb.shape == (3, 5, 7, 3) and rgb.dtype == np.uint8 and (rgb == 255).all()
    assert (flow.from_rgb(rgb) == 0).all()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: flow.to_rgb(np.zeros((4, 4, 3))), r"\[..., H, W, 2\]"),
        (lambda: flow.to_rgb(np.full((4, 4, 2), np.nan)), "NaN"),
        (lambda: flow.to_rgb(np.zeros((4, 4, 2)), max_magnitude=0), "positive"),
        (lambda: flow.from_rgb(np.zeros((4, 4, 3), np.float32)), "uint8"),
    ],
)
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
