"""HDR to SDR against the standards' own anchors: BT.2408 places HDR reference white (203 cd/m²) at HLG 75% and at
PQ 58%, and SDR white there."""

from __future__ import annotations

import numpy as np
import pytest

from pyramid.hdr import HLG, PQ, to_sdr


def grey(level: float) -> np.ndarray:
    return np.full((4, 4, 3), round(level * 65535), np.uint16)


@pytest.mark.parametrize("transfer, reference_white", [(HLG, 0.75), (PQ, 0.5806)])
def test_reference_white_is_sdr_white_and_black_is_black(transfer, reference_white):
    white = to_sdr(grey(reference_white), transfer)
    # just below 255: the highlight roll-off starts under SDR white
    assert (white >= 245).all() and (white == white[0, 0, 0]).all(), white[0, 0]
    assert (to_sdr(grey(0.0), transfer) == 0).all()
    assert (to_sdr(grey(1.0), transfer) >= 254).all()  # the brightest light the signal holds, rolled off into range


@pytest.mark.parametrize("transfer", [HLG, PQ])
def test_a_ramp_stays_a_ramp(transfer):
    ramp = np.repeat(np.linspace(0, 65535, 4096).astype(np.uint16)[None, :, None], 3, axis=2)
    shown = to_sdr(ramp, transfer)[0, :, 0].astype(int)
    assert (np.diff(shown) >= 0).all() and shown[0] == 0 and shown[-1] == 255
    assert np.diff(shown).max() <= 3  # no step a viewer would see as a band


def test_a_colour_outside_bt709_keeps_its_hue():
    """BT.2020's own green lies outside BT.709: clipped to the nearest BT.709 green, not turned yellow or cyan."""
    signal = np.zeros((2, 2, 3), np.uint16)
    signal[..., 1] = round(0.75 * 65535)
    red, green, blue = to_sdr(signal, HLG)[0, 0].astype(int)
    assert green >= 245 and red == 0 and blue == 0, (red, green, blue)
