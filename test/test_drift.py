"""Drift bookkeeping for online pose refinement and ATE (nerf_mapping.pose.drift): pure numpy, no ROS."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nerf_mapping.evaluation.trajectory import ate, interpolate_positions
from nerf_mapping.geometry.rigid import inv_pose
from nerf_mapping.pose import drift


def rigid(yaw: float = 0.0, t=(0.0, 0.0, 0.0), roll: float = 0.0) -> np.ndarray:
    cy, sy, cr, sr = math.cos(yaw), math.sin(yaw), math.cos(roll), math.sin(roll)
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1.0]])
    Rx = np.array([[1.0, 0, 0], [0, cr, -sr], [0, sr, cr]])
    T = np.eye(4)
    T[:3, :3] = Rz @ Rx
    T[:3, 3] = t
    return T


def test_inv_pose():
    T = rigid(0.7, (1.0, -2.0, 0.3), roll=0.2)
    np.testing.assert_allclose(inv_pose(T) @ T, np.eye(4), atol=1e-12)
    batch = np.stack([T, rigid(-0.3, (0.1, 0.2, 0.3))])
    np.testing.assert_allclose(inv_pose(batch) @ batch, np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-12)
    np.testing.assert_allclose(inv_pose(T[:3]), np.linalg.inv(T), atol=1e-12)  # [3,4] accepted


def test_known_drift_is_recovered_and_applied():
    D = rigid(0.05, (0.3, -0.2, 0.01))  # true T_map_odom
    rng = np.random.default_rng(0)
    for _ in range(5):
        T_map_cam = rigid(rng.uniform(-3, 3), rng.normal(size=3), roll=rng.uniform(-1, 1))  # true (refined) pose
        T_odom_cam = inv_pose(D) @ T_map_cam  # what the drifting odometry reports
        np.testing.assert_allclose(drift.implied_map_odom(T_map_cam, T_odom_cam), D, atol=1e-12)
        # a new keyframe inserted with the estimate lands at its true map pose
        np.testing.assert_allclose(drift.apply_drift(D, T_odom_cam), T_map_cam, atol=1e-12)


def test_drift_estimate_takes_the_latest_known_keyframe():
    c = {0: np.eye(4), 3: rigid(0.1), 5: rigid(0.2)}
    np.testing.assert_allclose(drift.drift_estimate(c, [0, 3, 5]), rigid(0.2))
    np.testing.assert_allclose(drift.drift_estimate(c, [0, 5, 3, 7]), rigid(0.1))  # 7 unknown: last known is 3
    np.testing.assert_allclose(drift.drift_estimate({}, [1, 2]), np.eye(4))
    np.testing.assert_allclose(drift.drift_estimate(c, []), np.eye(4))
    out = drift.drift_estimate(c, [5])
    out[0, 3] = 99.0
    assert c[5][0, 3] == 0.0  # a copy, never the caller's array


def test_refined_path_uses_each_keyframes_correction():
    D1, D2, fb = rigid(0.1, (1, 0, 0)), rigid(-0.1, (0, 1, 0)), rigid(0.0, (0, 0, 5))
    T = [rigid(0.3, (i, 0, 0)) for i in range(3)]
    path = drift.refined_path([(1, 10, T[0]), (2, 20, T[1]), (9, 30, T[2])], {1: D1, 2: D2}, fb)
    assert [s for s, _ in path] == [10, 20, 30]
    np.testing.assert_allclose(path[0][1], D1 @ T[0])
    np.testing.assert_allclose(path[1][1], D2 @ T[1])
    np.testing.assert_allclose(path[2][1], fb @ T[2])  # evicted / unknown: the current estimate


def test_interpolate_positions():
    t = np.array([1_700_000_000_000_000_000, 1_700_000_000_020_000_000, 1_700_000_000_040_000_000])
    p = np.array([[0.0, 0, 0], [1.0, 2, 3], [3.0, 2, 1]])
    q = interpolate_positions([t[1], t[0] + 10_000_000, t[0] + 30_000_000, t[0] - 5, t[2] + 5], t, p)
    np.testing.assert_allclose(q, [[1, 2, 3], [0.5, 1, 1.5], [2, 2, 2], [0, 0, 0], [3, 2, 1]], atol=1e-12)
    with pytest.raises(ValueError):
        interpolate_positions([0], [], np.zeros((0, 3)))


def test_ate_identical_shifted_and_rotated_paths():
    rng = np.random.default_rng(1)
    gt = np.cumsum(rng.normal(scale=0.1, size=(50, 3)), axis=0)
    r = ate(gt, gt)
    assert r["n"] == 50 and r["rmse"] == 0.0 and r["rmse_aligned"] < 1e-12 and r["final"] == 0.0
    shift = np.array([0.3, -0.4, 0.0])  # 0.5 m
    r = ate(gt + shift, gt)
    assert r["rmse"] == pytest.approx(0.5) and r["final"] == pytest.approx(0.5) and r["max"] == pytest.approx(0.5)
    assert r["rmse_aligned"] < 1e-9
    R = rigid(0.4)[:3, :3]  # a rigidly rotated + shifted estimate aligns to zero error, unaligned it does not
    r = ate(gt @ R.T + shift, gt)
    assert r["rmse"] > 0.05 and r["rmse_aligned"] < 1e-9
    # alignment is rigid (no scale): a scaled path keeps an error
    r = ate(gt * 1.2, gt)
    assert r["rmse_aligned"] > 1e-3
    assert ate(np.zeros((0, 3)), np.zeros((0, 3)))["rmse"] is None
    r = ate(gt[:2] + shift, gt[:2])  # too few for a rotation: translation-only alignment
    assert r["rmse"] == pytest.approx(0.5) and r["rmse_aligned"] < 1e-12
    with pytest.raises(ValueError):
        ate(gt[:3], gt[:4])


def test_ate_drift_corrected_path_is_better():
    """A path with random-walk drift, and the same path with the drift removed up to small noise."""
    rng = np.random.default_rng(2)
    n = 100
    gt = np.stack([np.cos(np.linspace(0, 3, n)), np.sin(np.linspace(0, 3, n)), np.zeros(n)], -1) * 2.0
    walk = np.cumsum(rng.normal(scale=0.02, size=(n, 3)), axis=0)
    walk -= walk[0]
    odom = gt + walk
    refined = gt + rng.normal(scale=0.005, size=(n, 3))
    a, b = ate(odom, gt), ate(refined, gt)
    assert b["rmse"] < a["rmse"] and b["rmse_aligned"] < a["rmse_aligned"]
