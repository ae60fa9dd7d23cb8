"""SO(3) / SE(3) in torch: exp/log maps, composition, inversion and (w, x, y, z) quaternions.

Batched over leading dims and differentiable; the exp/log maps switch to Taylor expansions near zero angle so
gradients stay finite at the identity (pose refinement starts there). Poses are [..., 3, 4] (4x4 accepted where the
last row is ignored). The numpy 4x4 helpers for bookkeeping (ROS, odometry, trajectories) are in
:mod:`nerf_mapping.geometry.rigid`.
"""

from __future__ import annotations

import torch
from torch import Tensor

_SMALL = 1e-4  # squared-angle threshold below which the Taylor branches are used (float32-safe)


# ====================================================================== SO(3) / SE(3)
def skew(w: Tensor) -> Tensor:
    """[..., 3] -> [..., 3, 3] cross-product matrix [w]_x."""
    x, y, z = w.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*w.shape[:-1], 3, 3)


def _rodrigues_coeffs(theta2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A = sin t / t, B = (1 - cos t) / t^2, C = (t - sin t) / t^3 with Taylor fallbacks (gradient-safe at 0)."""
    small = theta2 < _SMALL
    t2s = torch.where(small, torch.ones_like(theta2), theta2)  # keep the unused branch finite (no NaN grads)
    t = torch.sqrt(t2s)
    a = torch.where(small, 1.0 - theta2 / 6.0 + theta2 * theta2 / 120.0, torch.sin(t) / t)
    b = torch.where(small, 0.5 - theta2 / 24.0 + theta2 * theta2 / 720.0, (1.0 - torch.cos(t)) / t2s)
    c = torch.where(small, 1.0 / 6.0 - theta2 / 120.0 + theta2 * theta2 / 5040.0, (t - torch.sin(t)) / (t2s * t))
    return a, b, c


def so3_exp(w: Tensor) -> Tensor:
    """Axis-angle [..., 3] -> rotation matrices [..., 3, 3] (Rodrigues)."""
    theta2 = (w * w).sum(-1)
    a, b, _ = _rodrigues_coeffs(theta2)
    k = skew(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(k.shape)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def so3_log(R: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> axis-angle [..., 3] with angle in [0, pi].

    Uses the antisymmetric part away from pi and the symmetric part near pi (where sin(theta) -> 0 loses the axis).
    """
    R = R[..., :3, :3]
    tr = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2]
    cos = ((tr - 1.0) * 0.5).clamp(-1.0, 1.0)
    vee = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    # theta = atan2(sin, cos) with sin = |vee| / 2: accurate over [0, pi] (acos loses digits near 0 and pi and has
    # infinite gradients there). Near 0 use the series theta / sin(theta) = 1 + theta^2 / 6, theta^2 ~ 2 (1 - cos).
    small = cos > 1.0 - 1e-4
    sin2 = 0.25 * (vee * vee).sum(-1)
    sin = torch.sqrt(torch.where(small, torch.ones_like(sin2), sin2).clamp_min(1e-30))
    theta = torch.atan2(sin, cos)
    th2 = 2.0 * (1.0 - cos)
    f = torch.where(small, 0.5 + th2 / 12.0, theta / (2.0 * sin))
    w = f[..., None] * vee
    # Near-pi branch: (R + R^T)/2 = cos I + (1 - cos) a a^T -> a a^T from the symmetric part, sign from vee.
    near_pi = cos < -0.99
    if bool(near_pi.any()):
        eye = torch.eye(3, dtype=R.dtype, device=R.device)
        denom = torch.where(near_pi, 1.0 - cos, torch.ones_like(cos))[..., None, None]
        aat = (0.5 * (R + R.transpose(-1, -2)) - cos[..., None, None] * eye) / denom
        diag = torch.diagonal(aat, dim1=-2, dim2=-1)
        col = diag.argmax(-1)
        a = torch.gather(aat, -1, col[..., None, None].expand(*aat.shape[:-1], 1)).squeeze(-1)
        a = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp_min(1e-12)
        sign = torch.where((a * vee).sum(-1) < 0, -1.0, 1.0).to(R.dtype)
        w = torch.where(near_pi[..., None], (sign * theta)[..., None] * a, w)
    return w


def se3_exp(xi: Tensor) -> Tensor:
    """Twist [..., 6] = (rho, omega) (translation part first, like nerfstudio's exp_map_SE3) -> [..., 3, 4] [R | V rho]."""
    rho, w = xi[..., :3], xi[..., 3:]
    theta2 = (w * w).sum(-1)
    a, b, c = _rodrigues_coeffs(theta2)
    k = skew(w)
    kk = k @ k
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand(k.shape)
    R = eye + a[..., None, None] * k + b[..., None, None] * kk
    V = eye + b[..., None, None] * k + c[..., None, None] * kk
    t = (V @ rho[..., None])
    return torch.cat([R, t], -1)


def se3_log(T: Tensor) -> Tensor:
    """[..., 3, 4] (or 4x4) rigid transforms -> twists [..., 6] = (rho, omega); inverse of :func:`se3_exp`."""
    R, t = T[..., :3, :3], T[..., :3, 3]
    w = so3_log(R)
    theta2 = (w * w).sum(-1)
    k = skew(w)
    kk = k @ k
    # V^-1 = I - K/2 + D K^2, D = (1 - A / (2B)) / theta^2, series 1/12 + theta^2/720 near 0.
    a, b, _ = _rodrigues_coeffs(theta2)
    small = theta2 < _SMALL
    t2s = torch.where(small, torch.ones_like(theta2), theta2)
    d = torch.where(small, 1.0 / 12.0 + theta2 / 720.0, (1.0 - a / (2.0 * b)) / t2s)
    eye = torch.eye(3, dtype=T.dtype, device=T.device).expand(k.shape)
    v_inv = eye - 0.5 * k + d[..., None, None] * kk
    rho = (v_inv @ t[..., None])[..., 0]
    return torch.cat([rho, w], -1)


def compose(T_ab: Tensor, T_bc: Tensor) -> Tensor:
    """[...,3,4] @ [...,3,4] -> [...,3,4] (rigid transform composition T_ab * T_bc)."""
    R = T_ab[..., :3, :3] @ T_bc[..., :3, :3]
    t = (T_ab[..., :3, :3] @ T_bc[..., :3, 3:4]) + T_ab[..., :3, 3:4]
    return torch.cat([R, t], -1)


def invert_rigid(T: Tensor) -> Tensor:
    """[...,3,4] rigid transform -> its inverse [...,3,4]."""
    Rt = T[..., :3, :3].transpose(-1, -2)
    return torch.cat([Rt, -(Rt @ T[..., :3, 3:4])], -1)


# ====================================================================== quaternions (w, x, y, z)
def quat_to_rotmat(q: Tensor) -> Tensor:
    """[..., 4] quaternions (wxyz, any norm) -> [..., 3, 3]."""
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(*q.shape[:-1], 3, 3)


def rotmat_to_quat(R: Tensor) -> Tensor:
    """[..., 3, 3] -> [..., 4] unit quaternions (wxyz) with w >= 0.

    Computes the four candidate solutions (each divided by its own largest-component estimate) and keeps the
    best-conditioned one per matrix (Shepperd's method, branch-free).
    """
    R = R[..., :3, :3]
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 4 * q_i^2 for each component
    q2 = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    )
    qabs = torch.sqrt(q2.clamp_min(1e-12))  # 2 |q_i|
    cands = torch.stack(
        [
            torch.stack([q2[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, q2[..., 1], m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, q2[..., 2], m12 + m21], -1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q2[..., 3]], -1),
        ],
        -2,
    ) / (2.0 * qabs[..., None])
    best = q2.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)
