"""Trajectory errors: absolute trajectory error (ATE) of estimated camera or body positions against ground truth."""
from __future__ import annotations

import numpy as np


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
    from nerf_mapping.evaluation.poses import umeyama

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
