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
