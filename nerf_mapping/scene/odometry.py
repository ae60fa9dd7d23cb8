"""Realistic odometry noise: a slowly drifting bias (random walk) composed with per-message white jitter.

Pure numpy, independent of rendering, so statistics can be checked on long synthetic runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nerf_mapping.geometry.rigid import inv_pose, make_pose, so3_exp, so3_log

from .trajectory import rot_z


@dataclass
class OdometryNoiseParams:
    trans_rw_sigma: float = 0.02  # m/sqrt(s): random-walk density of the x/y bias
    z_rw_sigma: float = 0.002  # m/sqrt(s): random-walk density of the z bias (small: wheels/VIO drift little in z)
    yaw_rw_sigma: float = 0.005  # rad/sqrt(s): random-walk density of the yaw bias
    jitter_trans: float = 0.003  # m: white noise std per axis, per message
    jitter_rot: float = 0.002  # rad: white noise std per axis (rotation vector), per message


@dataclass
class OdometryNoiseResult:
    noisy: np.ndarray  # [N,4,4] T_odom_base as reported by the odometry
    bias: np.ndarray  # [N,4,4] B_k: drift of the reported odom frame w.r.t. the true one
    jitter: np.ndarray  # [N,4,4] J_k: white per-message perturbation in base_link
    bias_xyz: np.ndarray  # [N,3] random-walk translation state (= bias[:, :3, 3])
    bias_yaw: np.ndarray  # [N] random-walk yaw state (rad)


def simulate_odometry_noise(
    gt: np.ndarray, stamps: np.ndarray, params: OdometryNoiseParams, rng: np.random.Generator
) -> OdometryNoiseResult:
    """Corrupt ground-truth poses ``gt`` = T_odom_base [N,4,4] sampled at ``stamps`` [N] (seconds, increasing).

    Model (left-multiplied drift, right-multiplied jitter)::

        noisy_k = B_k @ gt_k @ J_k
        B_k     = [[Rz(yaw_k), (bx_k, by_k, bz_k)], [0, 1]]         (B_0 = identity)
        bx_k    = bx_{k-1} + trans_rw_sigma * sqrt(dt_k) * n,  n ~ N(0,1)   (same for by; bz uses z_rw_sigma)
        yaw_k   = yaw_{k-1} + yaw_rw_sigma * sqrt(dt_k) * n
        J_k     = [[exp(w_k), v_k], [0, 1]],  w_k ~ N(0, jitter_rot^2 I3),  v_k ~ N(0, jitter_trans^2 I3)

    B_k acts on the odom frame (the reported frame slowly drifts away from the true one: yaw about the odom origin,
    then translation), J_k acts in base_link (measurement jitter of each message, independent across messages).
    Noise increments depend only on ``dt``, so the statistics do not depend on the message rate.
    """
    stamps = np.asarray(stamps, float)
    n = len(stamps)
    dt = np.diff(stamps, prepend=stamps[:1])  # first increment is 0 -> B_0 = identity
    sd = np.sqrt(np.maximum(dt, 0.0))
    inc = rng.standard_normal((n, 4)) * sd[:, None]
    inc *= np.array([params.trans_rw_sigma, params.trans_rw_sigma, params.z_rw_sigma, params.yaw_rw_sigma])
    walk = np.cumsum(inc, axis=0)
    bias = make_pose(rot_z(walk[:, 3]), walk[:, :3])
    w = rng.standard_normal((n, 3)) * params.jitter_rot
    v = rng.standard_normal((n, 3)) * params.jitter_trans
    jitter = make_pose(so3_exp(w), v)
    noisy = bias @ gt @ jitter
    return OdometryNoiseResult(noisy=noisy, bias=bias, jitter=jitter, bias_xyz=walk[:, :3], bias_yaw=walk[:, 3])


def body_twist(poses: np.ndarray, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear and angular velocity in the child (body) frame by central finite differences, as nav_msgs/Odometry
    reports them (twist in child_frame_id). Returns (linear [N,3], angular [N,3])."""

    n = len(poses)
    i0 = np.clip(np.arange(n) - 1, 0, n - 1)
    i1 = np.clip(np.arange(n) + 1, 0, n - 1)
    dt = np.maximum(stamps[i1] - stamps[i0], 1e-9)
    rel = inv_pose(poses[i0]) @ poses[i1]  # motion expressed in the earlier body frame
    lin = rel[:, :3, 3] / dt[:, None]
    ang = so3_log(rel[:, :3, :3]) / dt[:, None]
    return lin, ang
