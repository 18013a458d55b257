"""The one resize (pyramid/resize.py): the build, the VAE's input and the trainer's frames share its aspect policy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from latent_action.images import resize_images
from pyramid.resize import resize_frames
from recipes.motus.data import model_frames


def wide_frame() -> np.ndarray:
    """A 64x128 frame, white with a red square in its middle."""
    frame = np.full((1, 64, 128, 3), 255, np.uint8)
    frame[0, 16:48, 48:80] = (255, 0, 0)
    return frame


def test_the_trainer_pads_frames_as_the_build_does():
    frames = model_frames(wide_frame(), 32, 32).numpy()
    np.testing.assert_array_equal(frames, resize_frames(wide_frame(), (32, 32), "pad"))
    assert (frames[0, :8] == 0).all() and (frames[0, 24:] == 0).all()  # black bars above and below
    square = frames[0, 8:24]
    red = np.argwhere((square == (255, 0, 0)).all(axis=-1))
    assert np.ptp(red[:, 0]) == np.ptp(red[:, 1]) > 0  # the square stays square


def test_the_vae_input_is_stretched_with_an_area_filter():
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 30, 3), dtype=np.uint8)
    expected = np.stack([cv2.resize(image, (16, 16), interpolation=cv2.INTER_AREA) for image in images])
    np.testing.assert_array_equal(resize_images(images, 16, 16), expected)
    grown = np.stack([cv2.resize(image, (64, 64), interpolation=cv2.INTER_LINEAR) for image in images])
    np.testing.assert_array_equal(resize_images(images, 64, 64), grown)


def test_an_unknown_fit_is_named():
    with pytest.raises(ValueError, match="unknown fit 'squash'"):
        resize_frames(wide_frame(), (32, 32), "squash")
