"""HDR video (HLG or PQ, BT.2020: what phones record by default) as the SDR BT.709 frames the rest of the data is.

Converted as if it were SDR, an iPhone's HLG video comes out dim and washed out (a red recorded as 235,16,16 reads
172,62,31). A player tone-maps it instead, and so does this: the signal's display light (BT.2100: HLG on a 1000 cd/m²
display with its system gamma of 1.2, PQ as absolute light), HDR reference white (203 cd/m², BT.2408) at SDR white,
BT.2020 primaries to BT.709 (colours outside it clipped), light above SDR white rolled off towards it keeping its hue,
and BT.1886's 2.4 display gamma, as every SDR frame here is encoded.
"""

from __future__ import annotations

import functools

import numpy as np

HLG, PQ = 18, 16  # FFmpeg's transfer characteristics ARIB STD-B67 and SMPTE ST 2084 (`frame.color_trc`)
HDR_TRANSFERS = frozenset({HLG, PQ})

HLG_PEAK = 1000.0  # cd/m²: the nominal display BT.2100 specifies HLG's system gamma for
REFERENCE_WHITE = 203.0  # cd/m²: HDR reference white (BT.2408), where SDR white maps
KNEE = 0.9  # of SDR white: below it light passes unchanged, above it it is rolled off towards white
BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], np.float32)
BT2020_TO_BT709 = np.array([[1.660491, -0.587641, -0.072850],  # linear light, BT.2087
                            [-0.124551, 1.132900, -0.008349],
                            [-0.018151, -0.100579, 1.118730]], np.float32)
SDR_GAMMA = 2.4  # BT.1886
SQRT_STEPS = 65535  # the gamma table's steps over the square root of linear light, fine near black where the gamma is steep
STRIP_ROWS = 64


def is_hdr(transfer: int | None) -> bool:
    return transfer in HDR_TRANSFERS


def to_sdr(signal: np.ndarray, transfer: int) -> np.ndarray:
    """uint16 R'G'B' [H, W, 3] of an HDR frame (BT.2020, full scale) -> uint8 SDR BT.709 RGB.

    In strips of rows: the float intermediates of a whole 4K frame would take hundreds of MB per worker, and strips
    that stay in the CPU's cache are faster as well."""
    sdr = np.empty(signal.shape, np.uint8)
    for top in range(0, len(signal), STRIP_ROWS):
        sdr[top : top + STRIP_ROWS] = _strip_to_sdr(signal[top : top + STRIP_ROWS], transfer)
    return sdr


def _strip_to_sdr(signal: np.ndarray, transfer: int) -> np.ndarray:
    import cv2

    light = _display_light(signal, transfer)  # cd/m²
    linear = cv2.transform(light, BT2020_TO_BT709 / REFERENCE_WHITE)  # 1 = SDR white
    np.maximum(linear, 0, out=linear)
    _roll_off_highlights(linear)  # now at most 1
    np.sqrt(linear, out=linear)
    linear *= SQRT_STEPS
    linear += 0.5
    return np.take(_sdr_codes(), linear.astype(np.uint16))  # the gamma as a table: np.power took a third of the time


def _display_light(signal: np.ndarray, transfer: int) -> np.ndarray:
    if transfer == PQ:
        return np.take(_pq_light(), signal)
    import cv2

    scene = np.take(_hlg_scene_light(), signal)  # 0-1; np.take is faster than indexing with an array
    # HLG's OOTF: display light = peak * Ys^(gamma - 1) * E, gamma 1.2 at a 1000 cd/m² peak
    gain = np.power(cv2.transform(scene, BT2020_LUMA[None]), 0.2)
    gain *= HLG_PEAK
    scene *= gain[..., None]
    return scene


def _roll_off_highlights(linear: np.ndarray) -> None:
    """Scale each pixel whose brightest channel is above KNEE so that it approaches 1 smoothly (slope 1 at KNEE),
    in place."""
    peak = np.maximum(np.maximum(linear[..., 0], linear[..., 1]), linear[..., 2])
    if peak.max() <= KNEE:  # a strip without highlights: nothing to roll off
        return
    over = np.maximum(peak, KNEE)
    rolled = KNEE + (1 - KNEE) * -np.expm1((KNEE - over) / (1 - KNEE))
    linear *= (rolled / over)[..., None]


@functools.cache
def _sdr_codes() -> np.ndarray:
    """The 8-bit SDR code of each step of the square root of linear light (0-1): BT.1886's gamma, rounded."""
    root = np.arange(SQRT_STEPS + 1, dtype=np.float64) / SQRT_STEPS
    return np.round(255 * root ** (2 / SDR_GAMMA)).astype(np.uint8)


@functools.cache
def _hlg_scene_light() -> np.ndarray:
    """Scene light 0-1 of each 16-bit HLG code: BT.2100's inverse OETF."""
    a = 0.17883277
    b, c = 1 - 4 * a, 0.5 - a * np.log(4 * a)
    code = np.arange(65536, dtype=np.float64) / 65535
    low = code <= 0.5
    light = np.empty_like(code)
    light[low] = code[low] ** 2 / 3
    light[~low] = (np.exp((code[~low] - c) / a) + b) / 12
    return light.astype(np.float32)


@functools.cache
def _pq_light() -> np.ndarray:
    """cd/m² of each 16-bit PQ code: SMPTE ST 2084's EOTF."""
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    power = (np.arange(65536, dtype=np.float64) / 65535) ** (1 / m2)
    return (10000 * (np.maximum(power - c1, 0) / (c2 - c3 * power)) ** (1 / m1)).astype(np.float32)
