"""flow.motion_stats on flows whose statistics are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

import flow


def test_stats_of_a_clip_with_a_moving_region():
    field = np.zeros((2, 10, 10, 2), np.float32)
    field[:, :4] = (3.0, 4.0)  # 40% of the pixels move by 5 px
    stats = flow.motion_stats(field)
    assert stats.mean == pytest.approx(2.0)
    assert stats.median == 0.0
    assert stats.p95 == pytest.approx(5.0)
    assert stats.moving_fraction == pytest.approx(0.4)
    assert flow.motion_stats(field, moving_threshold=6.0).moving_fraction == 0.0
    assert set(stats.as_dict()) == {"mean", "median", "p95", "moving_fraction"}


def test_a_static_clip_has_no_moving_pixels():
    stats = flow.motion_stats(np.full((3, 8, 8, 2), 0.05, np.float32))
    assert stats.moving_fraction == 0.0 and stats.p95 == pytest.approx(np.hypot(0.05, 0.05))


def test_stats_refuse_what_is_not_flow():
    with pytest.raises(ValueError, match=r"\[..., H, W, 2\]"):
        flow.motion_stats(np.zeros((4, 4, 3)))


@pytest.mark.parametrize("seed", range(40))
def test_percentiles_are_numpys_to_the_last_bit(seed):
    from flow.stats import percentiles

    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 5000))
    values = np.abs(rng.standard_normal(size).astype(np.float32)) ** 3
    values[: int(rng.integers(0, size + 1))] = 0  # still pixels: long runs of equal values
    percents = [50, 95, float(rng.uniform(0, 100))]
    expected = np.percentile(values, percents)
    got = percentiles(values, percents)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
