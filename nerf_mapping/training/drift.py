"""Odometry drift bookkeeping for online pose refinement, and trajectory error (ATE) metrics. Pure numpy (no ROS).

Frames: ``odom`` is the odometry's (drifting) frame, ``map`` the model's world frame. Keyframe poses are 4x4
camera (or body) poses; the ROS layer converts them to model c2w (and back) with ``conversions``, never here.

The drift is the map->odom transform ``T_map_odom``. A keyframe whose raw odometry camera pose is ``T_odom_cam`` is
inserted into the map at ``T_map_odom_est @ T_odom_cam`` (the current best estimate applied); pose refinement then
learns a correction and the keyframe's refined pose ``T_map_cam`` implies ``T_map_odom = T_map_cam @ inv(T_odom_cam)``.
The current best estimate is the one implied by the most recent keyframe whose refined pose is known.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np


def _as4(T) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] == (4, 4):
        return T
    if T.shape[-2:] != (3, 4):
        raise ValueError(f"expected [..., 3, 4] or [..., 4, 4] poses, got {T.shape}")
    out = np.zeros(T.shape[:-2] + (4, 4))
    out[..., :3, :] = T
    out[..., 3, 3] = 1.0
    return out


def inv_se3(T) -> np.ndarray:
    """Inverse of rigid 4x4 transforms [..., 4, 4]."""
    T = _as4(T)
    R, t = T[..., :3, :3], T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ t[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def implied_map_odom(T_map_cam_refined, T_odom_cam_raw) -> np.ndarray:
    """map->odom transform implied by one keyframe (or a batch [..., 4, 4]): refined @ inv(raw odometry)."""
    return _as4(T_map_cam_refined) @ inv_se3(T_odom_cam_raw)


def apply_drift(T_map_odom, T_odom_x) -> np.ndarray:
    """Pose(s) in the odometry frame -> the map frame under the drift estimate ``T_map_odom``."""
    return _as4(T_map_odom) @ _as4(T_odom_x)


def drift_estimate(corrections: Mapping[int, np.ndarray], order: Iterable[int]) -> np.ndarray:
    """Current best T_map_odom: the correction implied by the last keyframe id in ``order`` (time order) that has one
    in ``corrections``; identity when none has (no keyframe yet, or refinement off)."""
    last = None
    for fid in order:
        if fid in corrections:
            last = fid
    return np.eye(4) if last is None else _as4(corrections[last]).copy()


def refined_path(history: Sequence[tuple[int, int, np.ndarray]], corrections: Mapping[int, np.ndarray],
                 fallback: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Keyframe path in the map frame: [(stamp, T_map_base)] for ``history`` [(frame id, stamp, T_odom_base)], each
    pose moved by its own keyframe's implied map->odom (``fallback``, the current estimate, when unknown)."""
    fb = _as4(fallback)
    return [(s, _as4(corrections.get(fid, fb)) @ _as4(T)) for fid, s, T in history]


# ---------------------------------------------------------------------------------------------------- trajectory error
def interpolate_positions(stamps_ns, ref_stamps_ns, ref_positions) -> np.ndarray:
    """Linear interpolation of reference positions [M,3] (strictly increasing ``ref_stamps_ns``) at ``stamps_ns``
    [N]; clamped at the ends. Exact at reference stamps."""
    ref_t = np.asarray(ref_stamps_ns, dtype=np.int64)
    ref_p = np.asarray(ref_positions, dtype=np.float64)
    t = np.asarray(stamps_ns, dtype=np.int64)
    if ref_t.ndim != 1 or len(ref_t) != len(ref_p) or len(ref_t) == 0:
        raise ValueError("reference stamps and positions must be non-empty and of equal length")
    # relative to the first stamp so that float64 keeps nanosecond resolution
    x, xp = (t - ref_t[0]).astype(np.float64), (ref_t - ref_t[0]).astype(np.float64)
    return np.stack([np.interp(x, xp, ref_p[:, k]) for k in range(3)], axis=-1)


def ate(est_positions, gt_positions) -> dict:
    """Absolute trajectory error of positions [N,3] against ground truth [N,3] (same order, same stamps).

    ``rmse`` unaligned (meaningful when both share a frame, e.g. the map frame anchored at the first odometry pose),
    ``rmse_aligned`` after a rigid SE(3) Umeyama fit of the estimate onto ground truth, ``final`` the unaligned
    position error of the last pose, ``max`` the largest unaligned error, ``n`` the number of poses."""
    from nerf_mapping.training.pose_eval import umeyama

    est = np.asarray(est_positions, dtype=np.float64).reshape(-1, 3)
    gt = np.asarray(gt_positions, dtype=np.float64).reshape(-1, 3)
    if est.shape != gt.shape:
        raise ValueError(f"estimate and ground truth differ in length: {est.shape} vs {gt.shape}")
    n = len(est)
    if n == 0:
        return {"n": 0, "rmse": None, "rmse_aligned": None, "final": None, "max": None}
    err = np.linalg.norm(est - gt, axis=-1)
    if n >= 3:
        _, R, t = umeyama(est, gt, with_scale=False)
        err_al = np.linalg.norm(est @ R.T + t - gt, axis=-1)
    else:  # too few points to fix a rotation: translation only
        err_al = np.linalg.norm(est - est.mean(0) + gt.mean(0) - gt, axis=-1)
    return {"n": n, "rmse": float(np.sqrt(np.mean(err ** 2))),
            "rmse_aligned": float(np.sqrt(np.mean(err_al ** 2))),
            "final": float(err[-1]), "max": float(err.max())}
