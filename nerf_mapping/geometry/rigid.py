"""Rigid transforms as numpy 4x4 matrices (float64): inversion, quaternions, SO(3) exp/log and interpolation.

The bookkeeping side of the project (odometry, drift, trajectories, ROS messages, the demo scene) works in numpy
4x4 ``T_parent_child`` matrices; the differentiable torch versions used by training are in
:mod:`nerf_mapping.geometry.lie`. Quaternion conversions come from ``transforms3d``; ROS
quaternions are (x, y, z, w), transforms3d's (w, x, y, z).
"""

from __future__ import annotations

import math

import numpy as np
from transforms3d.quaternions import mat2quat, quat2mat


def as4(T) -> np.ndarray:
    """[..., 3, 4] or [..., 4, 4] -> [..., 4, 4] float64 (a bottom row [0, 0, 0, 1] added where missing)."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] == (4, 4):
        return T
    if T.shape[-2:] != (3, 4):
        raise ValueError(f"expected [..., 3, 4] or [..., 4, 4] poses, got {T.shape}")
    out = np.zeros(T.shape[:-2] + (4, 4))
    out[..., :3, :] = T
    out[..., 3, 3] = 1.0
    return out


def make_pose(r, t) -> np.ndarray:
    """Rotations [..., 3, 3] and translations [..., 3] -> 4x4 poses [..., 4, 4]."""
    r, t = np.asarray(r, float), np.asarray(t, float)
    out = np.zeros(r.shape[:-2] + (4, 4))
    out[..., :3, :3] = r
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def inv_pose(T) -> np.ndarray:
    """Inverse of rigid transforms [..., 3|4, 4] -> [..., 4, 4]."""
    T = as4(T)
    rt = np.swapaxes(T[..., :3, :3], -1, -2)
    return make_pose(rt, -(rt @ T[..., :3, 3:4])[..., 0])


def so3_exp(w) -> np.ndarray:
    """Rotation vectors [..., 3] -> rotation matrices [..., 3, 3] (Rodrigues, vectorised)."""
    w = np.asarray(w, float)
    theta = np.linalg.norm(w, axis=-1, keepdims=True)[..., None]  # [...,1,1]
    k = w / np.maximum(theta[..., 0], 1e-12)
    kx = np.zeros(w.shape[:-1] + (3, 3))
    kx[..., 0, 1], kx[..., 0, 2] = -k[..., 2], k[..., 1]
    kx[..., 1, 0], kx[..., 1, 2] = k[..., 2], -k[..., 0]
    kx[..., 2, 0], kx[..., 2, 1] = -k[..., 1], k[..., 0]
    eye = np.broadcast_to(np.eye(3), kx.shape)
    return eye + np.sin(theta) * kx + (1.0 - np.cos(theta)) * (kx @ kx)


def so3_log(r) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> rotation vectors [..., 3] (angles < pi)."""
    r = np.asarray(r, float)
    cos = np.clip((np.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    theta = np.arccos(cos)
    v = np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    scale = np.where(theta < 1e-8, 0.5, theta / (2.0 * np.sin(np.maximum(theta, 1e-8))))
    return v * scale[..., None]


def quat_xyzw_from_matrix(r) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] in ROS order (x, y, z, w), w >= 0.

    Batched through :func:`nerf_mapping.geometry.lie.rotmat_to_quat` (Shepperd's method, float64):
    transforms3d's ``mat2quat`` converts one matrix per Python call, and the node converts every keyframe pose of
    its two paths once a second (a looping demo bag: thousands of poses, 5 % of the node's CPU)."""
    import torch

    from nerf_mapping.geometry.lie import rotmat_to_quat

    r = np.asarray(r, float)
    m = r.reshape(-1, 3, 3)
    q = rotmat_to_quat(torch.from_numpy(np.ascontiguousarray(m))).numpy() if len(m) else np.zeros((0, 4))
    return q[:, [1, 2, 3, 0]].reshape(r.shape[:-2] + (4,))


def matrix_from_quat_xyzw(q) -> np.ndarray:
    """Quaternions [..., 4] in ROS order (x, y, z, w; normalised here) -> rotation matrices [..., 3, 3]."""
    q = np.asarray(q, float)
    flat = q.reshape(-1, 4)
    m = np.stack([quat2mat(v[[3, 0, 1, 2]]) for v in flat]) if len(flat) else np.zeros((0, 3, 3))
    return m.reshape(q.shape[:-1] + (3, 3))


def slerp(q0, q1, alpha: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (numpy [4], either order convention) along the shortest
    arc."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation: take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: lerp is accurate and avoids dividing by sin(~0)
        q = q0 + alpha * (q1 - q0)
        return q / np.linalg.norm(q)
    omega = math.acos(min(dot, 1.0))
    so = math.sin(omega)
    return (math.sin((1.0 - alpha) * omega) * q0 + math.sin(alpha * omega) * q1) / so


def interpolate_se3(T0, T1, alpha: float) -> np.ndarray:
    """Interpolate two rigid poses (numpy [3,4] or [4,4]): slerp on rotation, lerp on translation.

    alpha = 0 -> T0, 1 -> T1 (values outside [0, 1] extrapolate). Returns float64 with T0's shape.
    """
    T0 = np.asarray(T0, dtype=np.float64)
    T1 = np.asarray(T1, dtype=np.float64)
    q = slerp(mat2quat(T0[:3, :3]), mat2quat(T1[:3, :3]), float(alpha))
    out = np.array(T0, copy=True)
    out[:3, :3] = quat2mat(q)
    out[:3, 3] = (1.0 - alpha) * T0[:3, 3] + alpha * T1[:3, 3]
    return out


def interpolate_poses(key_stamps_ns, key_poses, stamps_ns) -> np.ndarray:
    """Piecewise SE(3) interpolation of ``key_poses`` [N,4,4] at ``key_stamps_ns`` (increasing) to ``stamps_ns``;
    held constant outside the key range."""
    key_stamps_ns = np.asarray(key_stamps_ns, np.int64)
    out = np.empty((len(stamps_ns), 4, 4))
    for j, t in enumerate(np.asarray(stamps_ns, np.int64)):
        if t <= key_stamps_ns[0]:
            out[j] = key_poses[0]
        elif t >= key_stamps_ns[-1]:
            out[j] = key_poses[-1]
        else:
            k = int(np.searchsorted(key_stamps_ns, t, side="right")) - 1
            alpha = float(t - key_stamps_ns[k]) / float(key_stamps_ns[k + 1] - key_stamps_ns[k])
            out[j] = interpolate_se3(key_poses[k], key_poses[k + 1], alpha)
    return out
