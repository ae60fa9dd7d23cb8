"""OdometryBuffer: SE(3) interpolation at image stamps, drop reasons, stamps going backwards (no ROS needed)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nerf_mapping.mapping.sync import (AFTER_BUFFER, BEFORE_BUFFER, EMPTY, GAP_TOO_LARGE, STAMP_BACKWARDS,
                                   OdometryBuffer)

S = 1_000_000_000


def pose(yaw: float, x: float) -> np.ndarray:
    T = np.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[0, 3] = x
    return T


def test_interpolates_between_bracketing_samples():
    buf = OdometryBuffer(max_age_s=10, max_gap_s=0.5)
    assert buf.add(0, pose(0.0, 0.0)) and buf.add(S // 10, pose(0.2, 1.0))
    T, reason = buf.pose_at(S // 40)  # alpha = 0.25
    assert reason == "ok"
    assert T[0, 3] == pytest.approx(0.25)
    assert math.atan2(T[1, 0], T[0, 0]) == pytest.approx(0.05, abs=1e-9)
    assert np.allclose(T[:3, :3].T @ T[:3, :3], np.eye(3), atol=1e-9)
    # exact hit on a sample
    T, reason = buf.pose_at(S // 10)
    assert reason == "ok" and np.allclose(T, pose(0.2, 1.0))


def test_reasons_are_counted():
    buf = OdometryBuffer(max_age_s=10, max_gap_s=0.05)
    assert buf.pose_at(5) == (None, EMPTY)
    buf.add(S, pose(0, 0))
    buf.add(S + S // 50, pose(0, 0.1))
    buf.add(2 * S, pose(0, 1))  # 0.98 s gap
    assert buf.pose_at(S - 1)[1] == BEFORE_BUFFER
    assert buf.pose_at(3 * S)[1] == AFTER_BUFFER
    assert buf.pose_at(S + S // 2)[1] == GAP_TOO_LARGE
    assert buf.pose_at(3 * S, count=False)[1] == AFTER_BUFFER  # tentative lookups are not counted
    assert buf.counts[BEFORE_BUFFER] == 1 and buf.counts[AFTER_BUFFER] == 1 and buf.counts[GAP_TOO_LARGE] == 1
    assert buf.counts[EMPTY] == 1


def test_stamp_backwards_rejected_and_old_samples_pruned():
    buf = OdometryBuffer(max_age_s=1.0, max_gap_s=0.5)
    assert buf.add(10 * S, pose(0, 0))
    assert not buf.add(10 * S, pose(0, 1))  # equal stamp
    assert not buf.add(9 * S, pose(0, 1))
    assert buf.counts[STAMP_BACKWARDS] == 2 and len(buf) == 1
    for k in range(1, 30):
        buf.add(10 * S + k * S // 10, pose(0, k))
    lo, hi = buf.span_ns
    assert hi - lo <= S and hi == 10 * S + 29 * S // 10


def test_tolerance_snaps_to_ends():
    buf = OdometryBuffer(max_age_s=10, max_gap_s=0.5, tolerance_s=0.01)
    buf.add(S, pose(0, 1))
    buf.add(S + S // 10, pose(0, 2))
    T, reason = buf.pose_at(S + S // 10 + S // 200)
    assert reason == "ok" and T[0, 3] == pytest.approx(2.0)
    assert buf.pose_at(S - S // 50)[1] == BEFORE_BUFFER


def test_rejects_bad_config_and_shapes():
    with pytest.raises(ValueError):
        OdometryBuffer(max_age_s=0)
    with pytest.raises(ValueError):
        OdometryBuffer().add(0, np.eye(3))
