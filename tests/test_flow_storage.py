"""Flow as builds store it (flow/storage.py): int16 in 1/16 px, zstd-compressed .npy per pair."""

from __future__ import annotations

import io

import numpy as np
import pytest
import zstandard

from flow.storage import STEPS_PER_PX, as_stored, dequantise, pack, quantise, unpack


def test_quantise_rounds_to_the_nearest_sixteenth_and_clips_at_the_int16_range():
    flow = np.array([[[0.03, -0.03], [0.0313, -1.97], [5000.0, -5000.0]]], np.float32)
    stored = quantise(flow)
    assert stored.dtype == np.int16
    assert stored.tolist() == [[[0, 0], [1, -32], [32767, -32767]]]
    assert dequantise(stored)[0, 1].tolist() == [1 / 16, -2.0]


def test_stored_flow_is_within_a_thirty_second_of_a_px_and_idempotent():
    flow = np.random.default_rng(0).normal(scale=6, size=(3, 40, 56, 2)).astype(np.float32)
    stored = as_stored(flow)
    assert np.abs(stored - flow).max() <= 1 / (2 * STEPS_PER_PX) + 1e-6
    assert np.array_equal(as_stored(stored), stored)


def test_pack_and_unpack_give_back_the_stored_flow_and_plain_tools_read_it():
    flow = np.random.default_rng(1).normal(scale=4, size=(48, 64, 2)).astype(np.float32)
    blob = pack(quantise(flow))
    assert np.array_equal(unpack(blob), as_stored(flow))
    # what SHARDS.md tells a user without this package: zstd, then numpy
    plain = np.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(blob))) / STEPS_PER_PX
    assert np.array_equal(plain, as_stored(flow))


def test_a_still_pair_packs_small():
    assert len(pack(quantise(np.zeros((320, 384, 2), np.float32)))) < 1024


def test_non_finite_flow_is_refused():
    flow = np.zeros((2, 8, 8, 2), np.float32)
    flow[1, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantise(flow)


@pytest.mark.parametrize("blob, message", [
    (b"", "not a stored flow pair"),
    (b"\x89PNG\r\n\x1a\n", "not a stored flow pair"),
    (zstandard.ZstdCompressor().compress(b"not npy"), "not a stored flow pair"),
])
def test_unreadable_blobs_are_named(blob, message):
    with pytest.raises(ValueError, match=message):
        unpack(blob)


def test_wrong_array_kind_is_named():
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"int16 \[H, W, 2\], found float32 \[4, 4, 3\]"):
        unpack(zstandard.ZstdCompressor().compress(buffer.getvalue()))
    with pytest.raises(ValueError, match="int16"):
        pack(np.zeros((4, 4, 2), np.float32))
